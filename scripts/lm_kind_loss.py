"""Text and speech loss of LMs per sample kind, on training and held-out batches of a corpus: where an LM memorises.

    python3 scripts/lm_kind_loss.py --corpus data/corpus_v6 --lm glm4voice/assets/embedded/lm runs/lm_c12/export

For each LM, kind (``--kinds``) and split, ``--batches`` packed batches of that kind alone (the trainer's packing, a
fixed seed, so every LM sees the same batches) are scored teacher-forced by ``lm_trainer.evaluate_batches``. A
large gap between the splits of a kind is memorisation: e.g. the shipped LM's ``asr`` text loss is 0.22 on training
utterances and 2.99 on held-out ones (docs/training.md, "New sentences read aloud"). Prints a Markdown table;
``--out FILE.json`` keeps the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True, help="corpus folder with cached codes")
    p.add_argument("--lm", nargs="+", required=True, help="official-format LM folders")
    p.add_argument("--tokens", default="tokens", help="the corpus's token subfolder")
    p.add_argument("--kinds", default="sft,sft_text,asr,tts", help="comma-separated sample kinds")
    p.add_argument("--batches", type=int, default=4, help="packed batches per kind and split")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--seed", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from glm4voice.train import lm_samples as ls
    from glm4voice.train.lm_trainer import evaluate_batches, load_frozen_lm

    kinds = [k for k in args.kinds.split(",") if k]
    tok, sp, model = load_frozen_lm(args.lm[0])
    batches = {}  # the same batches for every LM (they share the first LM's text tokenizer)
    for split in ("train", "heldout"):
        data = ls.load_lm_data(args.corpus, split=split, tokens=args.tokens)
        for kind in kinds:
            if not data.pool(kind):
                continue
            m = ls.Mixture(tok, sp, data, {kind: 1.0}, sft_loss="joint")
            batches[split, kind] = [ls.pack_batch(m.draw, seed=args.seed, step=i, rank=0, batch_size=args.batch_size,
                                                  seq_len=args.seq_len, pad_id=sp.eot) for i in range(args.batches)]
    results = []
    for i, lm in enumerate(args.lm):
        if i:
            model = load_frozen_lm(lm)[2]
        for (split, kind), bs in batches.items():
            r = evaluate_batches(model, bs, sp)
            results.append({"lm": lm, "split": split, "kind": kind, **r})
            print(f"{lm} {split} {kind}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), file=sys.stderr)
    print("| LM | kind | text loss train / held-out | speech loss train / held-out |")
    print("|---|---|---|---|")
    get = {(r["lm"], r["split"], r["kind"]): r for r in results}

    def pair(lm, kind, key):
        a, b = get.get((lm, "train", kind), {}).get(key), get.get((lm, "heldout", kind), {}).get(key)
        return " / ".join("–" if x is None else f"{x:.3f}" for x in (a, b))

    for lm in args.lm:
        for kind in kinds:
            print(f"| {lm} | {kind} | {pair(lm, kind, 'eval_text_loss')} | {pair(lm, kind, 'eval_speech_loss')} |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
