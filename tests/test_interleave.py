"""Interleaved speech-text documents from text: word spans, their layout, determinism, real-token pairs."""

import random

import numpy as np
import pytest

from glm4voice.train import interleave as il
from glm4voice.train.lm_samples import Utt

TEXTS = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden gate.",
    "It is a truth universally acknowledged that a single man in possession of a good fortune must be in want.",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "Short one.",
]


def speaker(calls):
    def speak(texts):
        calls.append(list(texts))
        return [np.asarray([len(t) % 50, sum(map(ord, t)) % 50, 3], dtype=np.int32) for t in texts]
    return speak


@pytest.mark.parametrize("text", TEXTS + ["  spaces  around ", "混合 English 和中文 123。"])
def test_split_words_covers_the_text(text):
    words = il.split_words(text)
    assert "".join(words) == text
    if text.startswith("床"):
        assert words[0] == "床" and len(words) >= 20  # a CJK character is a word


def test_choose_spans_properties():
    cfg = il.InterleaveConfig(speech_ratio=0.3, mean_span=4)
    for seed in range(200):
        n = random.Random(seed).randint(3, 60)
        spans = il.choose_spans(n, random.Random(seed), cfg)
        covered = sum(e - s for s, e in spans)
        assert 1 <= covered < n  # something is spoken, never all of it
        for (_, e1), (s2, _) in zip(spans, spans[1:], strict=False):
            assert e1 < s2  # disjoint and not adjacent: text always separates two speech spans
        assert covered <= max(1, round(0.3 * n))
    assert il.choose_spans(2, random.Random(0), cfg) == []  # too short to interleave


def test_speech_share_is_close_to_the_ratio():
    cfg = il.InterleaveConfig(speech_ratio=0.3, mean_span=5)
    total = covered = 0
    for seed in range(300):
        spans = il.choose_spans(40, random.Random(seed), cfg)
        total += 40
        covered += sum(e - s for s, e in spans)
    assert 0.25 < covered / total <= 0.3


def test_documents_alternate_and_use_the_speaker():
    calls = []
    docs = list(il.interleave_texts(TEXTS, speaker(calls), seed=1, batch_size=2))
    assert [d["source"] for d in docs] == TEXTS[:3]  # "Short one." has too few words
    spoken = [t for batch in calls for t in batch]
    audio = [s["audio"] for d in docs for s in d["segments"] if "audio" in s]
    assert len(spoken) == len(audio) and spoken
    for t, a in zip(spoken, audio, strict=True):
        assert a == [len(t) % 50, sum(map(ord, t)) % 50, 3]  # each span's own speech, in order
        assert t == t.strip() and t
    for d in docs:
        kinds = ["text" if "text" in s else "audio" for s in d["segments"]]
        assert all(a != b for a, b in zip(kinds, kinds[1:], strict=False))  # never two segments of one kind in a row
        assert "text" in kinds and "audio" in kinds
        # the text segments plus the spoken spans give back the source (spans lose only their outer whitespace)
        it = iter(t for batch in calls for t in batch if t in d["source"])
        rebuilt = "".join(s["text"] if "text" in s else next(it) for s in d["segments"])
        assert rebuilt.replace(" ", "") == d["source"].replace(" ", "")


def test_documents_are_deterministic():
    a = list(il.interleave_texts(TEXTS, speaker([]), seed=3))
    b = list(il.interleave_texts(TEXTS, speaker([]), seed=3))
    c = list(il.interleave_texts(TEXTS, speaker([]), seed=4))
    assert a == b and a != c


def test_unspeakable_span_drops_the_document():
    docs = list(il.interleave_texts(TEXTS[:1], lambda ts: [np.zeros(0, np.int32) for _ in ts]))
    assert docs == []


def test_pair_segments_from_real_tokens():
    q = Utt("q", "What is two plus three?", "en", np.array([1, 2, 3], np.int32))
    a = Utt("a", "Five.", "en", np.array([4, 5], np.int32))
    seen = set()
    for seed in range(50):
        segs = il.pair_segments(q, a, random.Random(seed))
        kinds = tuple(k for k, _ in segs)
        seen.add(kinds)
        assert kinds != ("text", "text")
        for (k, v), u in zip(segs, (q, a), strict=True):
            assert (np.array_equal(v, u.codes) if k == "audio" else v.strip() == u.text)
    assert seen == {("audio", "text"), ("text", "audio"), ("audio", "audio")}
    zq = Utt("zq", "二加三等于几？", "zh", np.array([1], np.int32))
    texts = {v for seed in range(20) for k, v in il.pair_segments(zq, a, random.Random(seed)) if k == "text"}
    assert "二加三等于几？" in texts  # no space after a Chinese question


def test_config_validation():
    with pytest.raises(ValueError, match="speech_ratio"):
        il.InterleaveConfig(speech_ratio=1.0)
