"""Does an LM's speech say its text? The training run's ``--eval-speech`` check on exported LMs, side by side.

    python3 scripts/speech_consistency.py LM_DIR [LM_DIR ...] --corpus data/corpus_v6 [--n 64] [--tokenizer embedded]

Greedy full answers to ``--n`` held-out spoken questions of the corpus (the same questions for every LM); the
speech codes of each answer are transcribed by the tokenizer's ASR branch and compared with the answer's own text
(``lm_trainer.speech_consistency``). No audio is synthesised and no judge is needed, so it runs anywhere the LM
does; ``glm4voice eval spoken_qa`` (decoder + independent ASR judge) remains the measurement of record.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time


def main() -> None:
    import torch

    from glm4voice.checkpoints import resolve
    from glm4voice.lm.load import load_lm
    from glm4voice.train import lm_samples as ls
    from glm4voice.train.lm_trainer import load_text_tokenizer, speech_consistency
    from glm4voice.train.tokenizer_asr import CodesASR
    from glm4voice.train.tokenizer_trainer import load_for_asr

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("lms", nargs="+", help="official-format LM folders ('embedded' for the shipped one)")
    p.add_argument("--corpus", required=True, help="corpus with cached speech tokens (its held-out split is used)")
    p.add_argument("--tokenizer", default="embedded", help="tokenizer (with asr_branch.*) that made the tokens")
    p.add_argument("--n", type=int, default=64, help="held-out questions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=400)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # two example answers per LM
    if args.threads:
        torch.set_num_threads(args.threads)
    asr = CodesASR(load_for_asr(resolve(args.tokenizer, "tokenizer", allow_download=False))).eval()
    held = ls.load_lm_data(args.corpus, split="heldout")
    dialogues = random.Random(args.seed).sample(held.dialogues, min(args.n, len(held.dialogues)))
    for spec in args.lms:
        folder = resolve(spec, "lm", allow_download=False)
        tok = load_text_tokenizer(folder)
        t = time.perf_counter()
        out = speech_consistency(load_lm(folder, dtype=torch.float32), tok, ls.Specials.from_tokenizer(tok),
                                 dialogues, asr, max_new_tokens=args.max_new_tokens)
        print(json.dumps({"lm": spec, "questions": len(dialogues), **{k: round(v, 4) for k, v in out.items()},
                          "seconds": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
    main()
