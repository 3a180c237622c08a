"""Interleaved speech-text documents from text-only corpora (paper §2.2, companion paper arXiv:2411.17607).

A text is cut into words (CJK characters count as words); spans whose lengths follow a Poisson law are drawn until
about ``speech_ratio`` of the words are chosen, and each chosen span is replaced by its speech tokens, made by the
text-to-token model (``text2token.py``). Documents are stored as JSON lines::

    {"source": "...", "segments": [{"text": "The capital of France"}, {"audio": [12, 873, ...]}, {"text": "..."}]}

which ``lm_samples.load_lm_data(interleaved_files=...)`` reads. A span that was really spoken needs no model: for a
spoken question/answer pair ``pair_segments`` uses the cached tokens of whole utterances (the corpus has no word
alignments, so real speech only replaces whole utterances).

Our defaults (speech share 0.3, mean span 8 words) are choices for short single-sentence texts, not the paper's
values.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("glm4voice.train.interleave")

# a CJK character is a word; other words keep their trailing whitespace so that "".join(words) == text
_WORDS = re.compile(r"[\u3400-\u9fff\uf900-\ufaff][\s]*|[^\s\u3400-\u9fff\uf900-\ufaff]+\s*|\s+")

Segment = tuple[str, "str | np.ndarray"]
Speaker = Callable[[list[str]], list[np.ndarray]]  # texts -> speech codes, one array per text


@dataclass(frozen=True)
class InterleaveConfig:
    speech_ratio: float = 0.3  # share of words replaced by speech
    mean_span: float = 8.0  # words per replaced span (Poisson mean, at least 1)
    min_words: int = 3  # shorter texts are left as text (a whole-text span would be TTS, not interleaving)

    def __post_init__(self):
        if not 0.0 < self.speech_ratio < 1.0:
            raise ValueError(f"speech_ratio must be in (0, 1), got {self.speech_ratio}")
        if self.mean_span <= 0:
            raise ValueError(f"mean_span must be positive, got {self.mean_span}")


def split_words(text: str) -> list[str]:
    words = _WORDS.findall(text)
    assert "".join(words) == text, "word split must cover the text"
    return words


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method; fine for the small means used here."""
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def choose_spans(n_words: int, rng: random.Random, cfg: InterleaveConfig) -> list[tuple[int, int]]:
    """Disjoint, non-adjacent [start, end) word spans covering about ``speech_ratio`` of ``n_words``, sorted.

    Never the whole text: at least one word stays text, so every document mixes the two modalities.
    """
    if n_words < cfg.min_words:
        return []
    target = max(1, round(cfg.speech_ratio * n_words))
    chosen = [False] * n_words
    spans: list[tuple[int, int]] = []
    covered = 0
    for _ in range(8 * n_words):  # bounded: gives up rather than looping on a crowded text
        if covered >= target:
            break
        length = min(max(1, _poisson(rng, cfg.mean_span)), target - covered, n_words - 1)
        start = rng.randrange(0, n_words - length + 1)
        lo, hi = max(0, start - 1), min(n_words, start + length + 1)  # keep a text gap between speech spans
        if any(chosen[lo:hi]):
            continue
        for i in range(start, start + length):
            chosen[i] = True
        spans.append((start, start + length))
        covered += length
    return sorted(spans)


def plan_segments(text: str, rng: random.Random, cfg: InterleaveConfig) -> list[tuple[str, str]]:
    """[("text", str) | ("speak", str)] in order; ``speak`` pieces are stripped of surrounding whitespace, which
    stays with the neighbouring text so the text segments still read naturally."""
    words = split_words(text)
    spans = choose_spans(len(words), rng, cfg)
    out: list[tuple[str, str]] = []
    pos = 0
    for start, end in spans:
        piece = "".join(words[start:end])
        if start > pos:
            out.append(("text", "".join(words[pos:start])))
        spoken = piece.rstrip()
        out.append(("speak", spoken))
        tail = piece[len(spoken):]
        if tail:
            out.append(("text", tail))
        pos = end
    if pos < len(words):
        out.append(("text", "".join(words[pos:])))
    merged: list[tuple[str, str]] = []  # adjacent text pieces (a span's trailing space + the next words) join
    for kind, value in out:
        if merged and kind == "text" and merged[-1][0] == "text":
            merged[-1] = ("text", merged[-1][1] + value)
        else:
            merged.append((kind, value))
    return merged


def interleave_texts(texts: Iterable[str], speak: Speaker, *, cfg: InterleaveConfig = InterleaveConfig(),
                     seed: int = 0, batch_size: int = 32) -> Iterator[dict]:
    """Documents (JSON-ready dicts) for the texts that got at least one speech span; ``speak`` is called in
    batches of span texts. Each text's spans come from ``random.Random(f"{seed}:{text}")``: same text, same spans."""
    pending: list[tuple[str, list[tuple[str, str]]]] = []

    def flush() -> Iterator[dict]:
        spoken = [v for _, plan in pending for k, v in plan if k == "speak"]
        codes = iter(speak(spoken)) if spoken else iter(())
        for source, plan in pending:
            segs = [{"text": v} if k == "text" else {"audio": np.asarray(next(codes)).astype(int).tolist()}
                    for k, v in plan]
            if all("text" in s or s["audio"] for s in segs):  # a span the model could not speak drops the document
                yield {"source": source, "segments": segs}
        pending.clear()

    for text in texts:
        plan = plan_segments(text, random.Random(f"{seed}:{text}"), cfg)
        if any(k == "speak" for k, _ in plan):
            pending.append((text, plan))
        if len(pending) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()


def pair_segments(question, answer, rng: random.Random) -> list[Segment]:
    """A spoken Q/A pair as an interleaved document from real tokens: question then answer, each side text or speech
    (never both text: that is text-only data). ``question`` / ``answer``: objects with ``text`` and ``codes``."""
    q_speech, a_speech = rng.choice(((True, False), (False, True), (True, True)))
    gap = "" if getattr(question, "language", "") == "zh" else " "  # Chinese text runs on without spaces
    return [("audio", question.codes) if q_speech else ("text", question.text + gap),
            ("audio", answer.codes) if a_speech else ("text", answer.text)]


# ---- entry point (`glm4voice train interleave`) ----------------------------------------------------------------

def read_texts(corpus_dir: str | None, text_files: Sequence[str], *, split: str = "train") -> list[str]:
    texts: list[str] = []
    if corpus_dir:
        from glm4voice.train.corpus import ITEMS

        with open(os.path.join(corpus_dir, ITEMS), encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    it = json.loads(line)
                    if it.get("split") == split:
                        texts += [it["question"], it["answer"]]
    for path in text_files:
        with open(path, encoding="utf-8") as f:
            texts += [line.rstrip("\n") for line in f if line.strip()]
    return list(dict.fromkeys(texts))  # unique, first-seen order


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="text-to-token model folder (glm4voice train text2token)")
    parser.add_argument("--corpus", default=None, help="corpus folder: use the questions and answers of items.jsonl")
    parser.add_argument("--texts", nargs="*", default=[], help="text files, one document per line")
    parser.add_argument("--out", required=True, help="jsonl file to write")
    parser.add_argument("--speech-ratio", type=float, default=InterleaveConfig.speech_ratio)
    parser.add_argument("--mean-span", type=float, default=InterleaveConfig.mean_span)
    parser.add_argument("--limit", type=int, default=None, help="at most this many texts")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from glm4voice.errors import ConfigError
    from glm4voice.train import text2token

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    texts = read_texts(args.corpus, args.texts)
    if args.limit is not None:
        texts = texts[:args.limit]
    if not texts:
        raise ConfigError("no texts: give --corpus and/or --texts")
    t2t = text2token.TextToToken.from_dir(args.model, device=args.device)

    def speak(batch: list[str]) -> list[np.ndarray]:
        return t2t.generate(batch, temperature=args.temperature, top_k=args.top_k, seed=args.seed)

    cfg = InterleaveConfig(speech_ratio=args.speech_ratio, mean_span=args.mean_span)
    n = 0
    tmp = args.out + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        for doc in tqdm(interleave_texts(texts, speak, cfg=cfg, seed=args.seed), desc="interleave", unit="doc"):
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, args.out)
    log.info("wrote %d interleaved documents from %d texts to %s", n, len(texts), args.out)
    return 0
