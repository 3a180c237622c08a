"""How much does a trained tokenizer's ASR branch suffer when the formants move? (a diagnostic, not a test)

    python3 scripts/formant_probe.py TOKENIZER_EXPORT --corpus data/corpus_v2 [--n 64] [--alphas 1 0.9 1.1]

Reads English utterances of the corpus's held-out split (training voices, held-out texts), warps their features
with ``tokenizer_trainer.vtlp_warp`` (a vocal-tract-length change: formants move, pitch and tempo do not) and prints
the word error rate per warp factor. A large rise says unseen voices fail because of their formants, and that
``--vtlp`` training should help; a small one says the gap lies elsewhere.
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    from glm4voice.train import tokenizer_trainer as tt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokenizer", help="a tokenizer folder with its ASR branch (a trainer's export)")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--n", type=int, default=64, help="English held-out utterances")
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.9, 1.1, 0.85, 1.15])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = tt.load_for_asr(args.tokenizer).eval()
    utts = [u for u in tt.load_corpus(args.corpus, split="heldout", max_seconds=10, limit=6 * args.n, seed=1)
            if u.language == "en"][:args.n]
    print(f"{len(utts)} English held-out utterances of {args.corpus}\n\n| warp factor | WER |\n|---|---|")
    for alpha in args.alphas:
        def warped(pcms, a=alpha):
            feats, mask = tt.featurize(pcms)
            return torch.stack([tt.vtlp_warp(f, a) for f in feats]), mask

        with torch.no_grad():
            res = tt.make_eval(utts, features=warped)(model)
        print(f"| {alpha:g} | {res['wer_en']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
