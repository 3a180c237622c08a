"""Do two speakers saying the same sentence get the same codes? (a diagnostic of tokenizers, not a test)

The LM learns what a spoken question means from its codes, so words should map to codes whatever the voice. For
sentences of a corpus spoken by two or more voices, each tokenizer encodes every rendition, and the normalised edit
distance between code sequences (Levenshtein / the longer length) is averaged over pairs:

- ``same text, two voices``: lower = codes that depend less on who speaks;
- ``two texts, one voice``: the same distance between different sentences of one voice (the floor of "unrelated");
- ``ratio``: the first over the second: below 1 the codes say more about the words than about the speaker. A
  tokenizer with very few codes could make both distances small; the ratio is what compares tokenizers.

Pairs are grouped by whether a held-out voice (``train/voices.py``) is in the pair, and by voice.

    python3 scripts/code_agreement.py --corpus data/corpus_v6 --tokenizer glm4voice/assets/embedded/tokenizer \
        runs/tok_w1/export --texts 150
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch


def normalised(a: list[int], b: list[int]) -> float:
    """Levenshtein distance between two code sequences over the longer length (0 same, 1 nothing shared)."""
    from glm4voice.train.tokenizer_trainer import edit_distance

    return edit_distance(a, b) / max(len(a), len(b), 1)


def pick_groups(rows: list[dict], texts: int, seed: int) -> list[list[dict]]:
    """Up to ``texts`` question sentences spoken by at least two voices (one rendition per voice, at most 4)."""
    by_text: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        if r.get("role") == "question":
            by_text[(r["language"], r["text"])].setdefault(r["voice"], r)
    groups = [list(v.values())[:4] for v in by_text.values() if len(v) >= 2]
    random.Random(seed).shuffle(groups)
    return groups[:texts]


def unrelated_pairs(rows: list[dict], n: int, seed: int) -> list[tuple[dict, dict]]:
    """``n`` pairs of different sentences spoken by one voice (the "unrelated" floor), drawn once (seeded) so that
    every tokenizer is scored on the same pairs."""
    by_voice: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_voice[r["voice"]].append(r)
    voices = [v for v, rs in by_voice.items() if len(rs) >= 2]
    rng = random.Random(seed)
    return [tuple(rng.sample(by_voice[rng.choice(voices)], 2)) for _ in range(n)] if voices else []


def main(argv: list[str] | None = None) -> int:
    from glm4voice.audio import load_audio
    from glm4voice.tokenizer.speech_tokenizer import SpeechTokenizer
    from glm4voice.train.corpus import read_jsonl
    from glm4voice.train.voices import HELDOUT_VOICE_NAMES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--tokenizer", nargs="+", required=True, help="tokenizer folders to compare")
    p.add_argument("--texts", type=int, default=150, help="sentences sampled (each spoken by 2-4 voices)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the per-tokenizer summary as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    corpus = Path(args.corpus)
    manifest = corpus / "manifest.jsonl"
    if not manifest.is_file():
        raise SystemExit(f"code_agreement: {manifest}: no such file")
    rows, _ = read_jsonl(str(manifest))
    groups = pick_groups(rows, args.texts, args.seed)
    flat = [r for g in groups for r in g]
    wavs = [load_audio(corpus / r["path"]) for r in flat]
    floor_pairs = unrelated_pairs(flat, len(groups), args.seed + 1)  # the same pairs for every tokenizer
    summary = {}
    for folder in args.tokenizer:
        tok = SpeechTokenizer.from_pretrained(folder)
        codes = dict(zip((r["id"] for r in flat), tok.encode(wavs, batched=False), strict=True))
        stats: dict[str, list[float]] = defaultdict(list)
        by_voice: dict[str, list[float]] = defaultdict(list)
        for g in groups:
            for i in range(len(g)):
                for j in range(i + 1, len(g)):
                    a, b = g[i], g[j]
                    d = normalised(codes[a["id"]], codes[b["id"]])
                    held = a["voice"] in HELDOUT_VOICE_NAMES or b["voice"] in HELDOUT_VOICE_NAMES
                    stats["same text, held-out voice in pair" if held else "same text, two training voices"].append(d)
                    stats["same text, two voices"].append(d)
                    for v in (a["voice"], b["voice"]):
                        by_voice[v].append(d)
        for a, b in floor_pairs:
            stats["two texts, one voice"].append(normalised(codes[a["id"]], codes[b["id"]]))
        means = {k: float(np.mean(v)) for k, v in stats.items()}
        means["ratio"] = means["same text, two voices"] / means["two texts, one voice"]
        means["pairs"] = len(stats["same text, two voices"])
        held = {v: float(np.mean(d)) for v, d in sorted(by_voice.items()) if v in HELDOUT_VOICE_NAMES}
        summary[folder] = {**means, "held-out voices": held}
        print(f"\n{folder}")
        print("| pairs | mean normalised code edit distance |\n|---|---|")
        for k in ("same text, two training voices", "same text, held-out voice in pair", "same text, two voices",
                  "two texts, one voice", "ratio"):
            if k in means:
                print(f"| {k} | {means[k]:.3f} |")
        print("held-out voices (same text, any partner): " + ", ".join(f"{v} {d:.3f}" for v, d in held.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
