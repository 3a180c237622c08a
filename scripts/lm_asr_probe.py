"""Does the LM fail to *hear* spoken questions, or to *answer* what it heard?

For held-out spoken questions of a corpus (its ``heldout`` split: held-out phrasings and held-out voices), one LM
is run four ways, all greedy, all through the inference prompt builder:

- ``spoken``: the spoken question → the answer (what `eval spoken_qa --text-only` measures, here exact answer text);
- ``asr``: the LM's own transcript of the question, with the pre-training ASR prompt (``Transcribe the speech:``),
  scored against the question's text (word error for English, character error for Mandarin);
- ``cascade``: that transcript typed back as the question → the answer (what a transcribe-then-answer LM could do);
- ``typed``: the reference question text typed → the answer (the LM's ceiling on these phrasings).

    python3 scripts/lm_asr_probe.py --corpus data/corpus_v6 --lm glm4voice/assets/embedded/lm --n 200

Prints a table per group (who speaks: training voices with held-out phrasings, held-out espeak voices, held-out
natural voices) and writes the per-question rows as JSON lines with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import torch


def group_of(voice: str, train_voices: set[str]) -> str:
    if voice in train_voices:
        return "training voices"
    return "held-out espeak" if voice.startswith("espeak:") else "held-out natural"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--lm", default="glm4voice/assets/embedded/lm")
    p.add_argument("--tokens", default="tokens", help="the corpus's token subfolder")
    p.add_argument("--n", type=int, default=200, help="held-out dialogues (a seeded sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16, help="questions decoded side by side")
    p.add_argument("--out", help="per-question rows (jsonl)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from glm4voice.eval.metrics import error_rate
    from glm4voice.train import lm_samples as ls
    from glm4voice.train import lm_trainer as lt
    from glm4voice.train.corpus import MANIFEST

    tok, sp, model = lt.load_frozen_lm(args.lm)
    held = ls.load_lm_data(args.corpus, split="heldout", tokens=args.tokens)
    if not held.dialogues:
        raise SystemExit(f"{args.corpus}: no held-out dialogues with {args.tokens}/ codes")
    dialogues = random.Random(args.seed).sample(held.dialogues, min(args.n, len(held.dialogues)))
    rows, _ = ls._read_jsonl(str(Path(args.corpus) / MANIFEST))  # torn lines are left out, as the loader does
    voice = {r.get("id"): r.get("voice", "?") for r in rows}
    train_voices = {r.get("voice") for r in rows if r.get("split") == "train" and r.get("role") == "question"}

    def answers(prompts: list[list[int]], refs: list[list[int]]) -> list[bool]:
        """Whether each greedy answer's text is exactly the reference's."""
        ok = []
        for i in range(0, len(prompts), args.batch):
            rs = refs[i:i + args.batch]
            outs = lt.checked_answers(model, sp, prompts[i:i + args.batch], rs)
            ok += [[t for t in o if not sp.is_audio(t)] == r for o, r in zip(outs, rs, strict=True)]
        return ok

    def transcripts(codes_list) -> list[str]:
        out = []
        for i in range(0, len(codes_list), args.batch):
            prompts = [[sp.gmask, sp.sop, *tok.encode(ls.ASR_PROMPT), sp.boa, *sp.audio_ids(c), sp.eoa]
                       for c in codes_list[i:i + args.batch]]
            outs, _ = lt.greedy_answers(model, prompts, {sp.eot, sp.user}, 80)
            out += [tok.decode([t for t in o if not sp.is_audio(t)]).strip() for o in outs]
        return out

    refs = [tok.encode(d.answer.text) for d in dialogues]
    print(f"{len(dialogues)} held-out dialogues; spoken ...", file=sys.stderr)
    spoken = answers([ls.dialogue_prompt(tok, sp, d.question.codes) for d in dialogues], refs)
    print("asr ...", file=sys.stderr)
    heard = transcripts([d.question.codes for d in dialogues])
    print("cascade ...", file=sys.stderr)
    cascade = answers([ls.dialogue_prompt(tok, sp, h or "?") for h in heard], refs)
    print("typed ...", file=sys.stderr)
    typed = answers([ls.dialogue_prompt(tok, sp, d.question.text) for d in dialogues], refs)

    per = []
    groups: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(dialogues):
        er = error_rate(d.question.text, heard[i], d.question.language)
        v = voice.get(d.question.id, "?")
        g = group_of(v, train_voices)
        per.append({"id": d.question.id, "voice": v, "group": g, "kind": d.kind,
                    "language": d.question.language, "question": d.question.text, "heard": heard[i],
                    "asr_error": er, "spoken": spoken[i], "cascade": cascade[i], "typed": typed[i]})
        groups[g].append(i)
        groups[f"language {d.question.language}"].append(i)
        groups["all"].append(i)

    print("| group | n | LM ASR error (mean) | spoken → answer | transcript typed → answer | "
          "reference typed → answer |")
    print("|---|---|---|---|---|---|")
    order = ["training voices", "held-out espeak", "held-out natural", "language en", "language zh", "all"]
    for g in [g for g in order if g in groups] + sorted(set(groups) - set(order)):
        ix = groups[g]
        mean_er = sum(per[i]["asr_error"] for i in ix) / len(ix)
        print(f"| {g} | {len(ix)} | {mean_er:.3f} | {sum(spoken[i] for i in ix)} | {sum(cascade[i] for i in ix)} | "
              f"{sum(typed[i] for i in ix)} |")
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in per), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
