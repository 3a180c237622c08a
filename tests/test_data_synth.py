"""Real synthesis with the offline engines (installed by scripts/install_data_deps.sh): a handful of utterances."""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from glm4voice.errors import ConfigError
from glm4voice.train import corpus
from glm4voice.train.corpus import CorpusConfig, cache_tokens, load_manifest, synthesize_corpus
from glm4voice.train.texts import Item
from glm4voice.train.tts import NORMAL, Style, TTSFailure, UnspeakableText, available_engines, synthesize
from glm4voice.train.voices import HELDOUT_VOICE_NAMES

ENGINES = available_engines()
needs_espeak_flite = pytest.mark.skipif(not (ENGINES["espeak"] and ENGINES["flite"]),
                                        reason="espeak-ng/flite not installed (scripts/install_data_deps.sh)")
needs_all = pytest.mark.skipif(not all(ENGINES.values()),
                               reason="a TTS engine or sox is not installed (scripts/install_data_deps.sh)")


@needs_espeak_flite
@pytest.mark.parametrize("voice", ["espeak:en-us+f3", "flite:kal16", "espeak:cmn-latn-pinyin"])
def test_engines_speak_at_the_requested_rate(voice):
    text = "三加四等于几？" if "cmn" in voice else "What is three plus four?"
    wav16 = synthesize(text, voice, sample_rate=16_000)
    wav22 = synthesize(text, voice, sample_rate=22_050)
    assert wav16.dtype == np.float32 and wav16.ndim == 1
    assert 0.5 < len(wav16) / 16_000 < 5.0
    assert abs(len(wav22) / 22_050 - len(wav16) / 16_000) < 0.01  # the same speech at two rates
    assert np.isfinite(wav16).all() and 0.05 < np.abs(wav16).max() <= 1.0


@needs_espeak_flite
def test_style_changes_duration():
    text = "The capital of France is Paris."
    normal = synthesize(text, "espeak:en-gb", NORMAL)
    fast = synthesize(text, "espeak:en-gb", Style(rate=1.4))
    slow = synthesize(text, "flite:kal16", Style(rate=0.7))
    assert len(fast) < 0.85 * len(normal)
    assert len(slow) > 1.2 * len(synthesize(text, "flite:kal16", NORMAL))


@needs_espeak_flite
def test_unspeakable_text_raises_before_the_engine():
    with pytest.raises(UnspeakableText):
        synthesize("你好", "flite:kal16")
    with pytest.raises((TTSFailure, UnspeakableText)):
        synthesize("hello", "espeak:no-such-voice")


def _items():
    mk = Item
    return [
        mk("a-en-1", "arithmetic", "en", "What is 2 plus 3?", "2 plus 3 is 5.", "train", "what_is"),
        mk("a-en-2", "arithmetic", "en", "Could you work out 4 minus 1 for me?", "4 minus 1 is 3.", "heldout", "x"),
        mk("r-en-1", "repeat", "en", "Repeat after me: good morning.", "Good morning.", "train", "repeat_after"),
        mk("s-en-1", "style", "en", "Say this faster: hello there.", "Hello there.", "train", "faster", "fast"),
        mk("a-zh-1", "arithmetic", "zh", "三加四等于几？", "三加四等于七。", "train", "dengyu_ji"),
        mk("c-zh-1", "chat", "zh", "什么是Python", "Python是一种语言。", "train"),  # unspeakable for Mandarin voices
    ]


def _manifest(out):
    with open(os.path.join(out, corpus.MANIFEST), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def full_corpus(tmp_path_factory):
    if not all(ENGINES.values()):
        pytest.skip("a TTS engine or sox is not installed (scripts/install_data_deps.sh)")
    out = str(tmp_path_factory.mktemp("corpus") / "full")
    report = synthesize_corpus(out, CorpusConfig(seed=5, heldout_voice_fraction=0.5), items=_items(), jobs=2,
                               progress=False)
    return out, report


@needs_all
def test_corpus_rows_files_and_counts(full_corpus):
    out, report = full_corpus
    rows = _manifest(out)
    # 6 items -> 6 questions + held-out-voice questions + 6 answers; the zh chat item can be spoken by nobody
    assert report.failed == {"unspeakable": report.planned - report.made} and report.made == len(rows)
    assert sum(1 for r in rows if r["item_id"] == "c-zh-1") == 0
    with open(os.path.join(out, corpus.FAILED), encoding="utf-8") as f:
        failed = [json.loads(line) for line in f]
    assert {r["id"].split(".")[0] for r in failed} == {"c-zh-1"} and all("Latin" in r["error"] for r in failed)
    for r in rows:
        for key in ("id", "text", "language", "voice", "style", "duration", "path", "role", "item_id", "split"):
            assert key in r
        info = sf.info(os.path.join(out, r["path"]))
        assert info.samplerate == 16_000 and info.format == "FLAC"
        assert abs(info.frames / 16_000 - r["duration"]) < 1e-3
        if r["role"] == "answer":
            assert sf.info(os.path.join(out, r["path_22k"])).samplerate == 22_050
        assert r["split"] == "heldout" or r["voice"] not in HELDOUT_VOICE_NAMES
    engines = {r["voice"].split(":")[0] for r in rows}
    assert {"espeak", "festival"} <= engines  # zh via espeak, English answers via festival's target voice
    fast = next(r for r in rows if r["item_id"] == "s-en-1" and r["role"] == "answer")
    assert Style.parse(fast["style"]).rate > 1.2


@needs_all
def test_corpus_is_deterministic_and_resumes(full_corpus, tmp_path):
    out, _ = full_corpus
    resumed = str(tmp_path / "resumed")
    cfg = CorpusConfig(seed=5, heldout_voice_fraction=0.5)
    first = synthesize_corpus(resumed, cfg, items=_items(), jobs=1, progress=False, limit=3)
    assert first.made == 3
    with open(os.path.join(resumed, corpus.MANIFEST), "a", encoding="utf-8") as f:
        f.write('{"id": "torn-by-a-kill", "te')  # a run killed in the middle of a line
    second = synthesize_corpus(resumed, cfg, items=_items(), jobs=2, progress=False)
    assert second.done_before == 3 and second.torn_lines == 1
    assert second.made + 3 == len(_manifest(out))
    third = synthesize_corpus(resumed, cfg, items=_items(), jobs=2, progress=False)
    assert third.made == 0 and third.failed == {"unspeakable": second.failed["unspeakable"]}  # not retried
    assert _manifest(resumed) == _manifest(out)  # same rows, same order, same durations
    for r in _manifest(out):
        a, _ = sf.read(os.path.join(out, r["path"]), dtype="int16")
        b, _ = sf.read(os.path.join(resumed, r["path"]), dtype="int16")
        assert np.array_equal(a, b), r["id"]
    with pytest.raises(ConfigError, match="options"):
        synthesize_corpus(resumed, CorpusConfig(seed=6), items=_items(), progress=False)


@needs_all
def test_bad_rows_are_reported_and_tokens_cached(full_corpus, tmp_path):
    src, _ = full_corpus
    out = str(tmp_path / "bad")
    shutil.copytree(src, out)
    rows = _manifest(out)
    os.remove(os.path.join(out, rows[0]["path"]))
    with open(os.path.join(out, rows[1]["path"]), "wb") as f:
        f.write(b"fLaC but not really a flac file")
    with open(os.path.join(out, corpus.MANIFEST), "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "no-fields", "path": "x.flac"}) + "\n" + "{not json\n")
    check = load_manifest(out, decode=True)
    reasons = dict(check.problems)
    assert reasons[rows[0]["id"]].startswith("missing file")
    assert reasons[rows[1]["id"]].startswith("corrupt file")
    assert reasons["no-fields"].startswith("missing fields")
    assert any(k.startswith("line") and v.startswith("unparsable") for k, v in check.problems)
    assert len(check.rows) == len(rows) - 2

    calls = []

    def encode(wavs):
        calls.append(len(wavs))
        return [list(range(len(w) // 1280)) for w in wavs]

    counts = cache_tokens(out, encode, batch_size=4, progress=False)
    assert counts["encoded"] == len(rows) - 2 and counts["bad_rows"] == 4
    assert sum(calls) == len(rows) - 2 and max(calls) <= 4
    r = check.rows[0]
    assert list(corpus.load_tokens(out, r["id"])) == list(range(int(r["duration"] * 16_000) // 1280))
    again = cache_tokens(out, encode, progress=False)
    assert again.get("encoded", 0) == 0 and again["cached_before"] == len(rows) - 2

    # batched longest first (less padding), the same codes as in manifest order
    seen = []

    def encode_logged(wavs):
        seen.append([len(w) for w in wavs])
        return encode(wavs)

    manifest_lengths = [len(corpus.load_wav(out, r)) for r in check.rows]
    assert manifest_lengths != sorted(manifest_lengths, reverse=True)  # so the order checks below can fail
    for name, by_length in (("tokens_len", True), ("tokens_man", False)):
        seen.clear()
        cache_tokens(out, encode_logged, batch_size=2, tokens_dir=str(tmp_path / name), by_length=by_length,
                     progress=False)
        flat = [n for b in seen for n in b]
        assert flat == (sorted(manifest_lengths, reverse=True) if by_length else manifest_lengths)
    for r in check.rows:
        a_, b_ = (np.load(os.path.join(tmp_path, n, r["id"] + ".npy")) for n in ("tokens_len", "tokens_man"))
        assert list(a_) == list(b_)

    # another folder, a seeded sample, stamped with its tokenizer; another tokenizer's codes are refused there
    other = str(tmp_path / "tokens_b")
    a, b = {"tokenizer": "a", "sha256": "1" * 64}, {"tokenizer": "b", "sha256": "2" * 64}
    sample = cache_tokens(out, encode, tokens_dir=other, limit=3, seed=1, source=a, progress=False)
    files = sorted(f for f in os.listdir(other) if f.endswith(".npy"))
    assert sample["encoded"] == 3 and len(files) == 3
    assert json.load(open(os.path.join(other, corpus.TOKENS_STAMP))) == a
    assert cache_tokens(out, encode, tokens_dir=other, limit=3, seed=1, source=a, progress=False)["cached_before"] == 3
    with pytest.raises(ValueError, match="another tokenizer"):
        cache_tokens(out, encode, tokens_dir=other, source=b, progress=False)
    assert sorted(f for f in os.listdir(other) if f.endswith(".npy")) == files  # nothing written
    cache_tokens(out, encode, tokens_dir=other, limit=2, seed=1, source=b, overwrite=True, progress=False)
    assert json.load(open(os.path.join(other, corpus.TOKENS_STAMP))) == b
    assert len([f for f in os.listdir(other) if f.endswith(".npy")]) == 2  # a's third file went with its stamp
    # the corpus's own folder predates stamps: its tokenizer cannot be checked, so no stamp is claimed
    cache_tokens(out, encode, source=a, progress=False)
    assert not os.path.exists(os.path.join(out, "tokens", corpus.TOKENS_STAMP))
    fp = corpus.tokenizer_fingerprint(corpus_embedded_tokenizer())
    assert len(fp["sha256"]) == 64 and fp == corpus.tokenizer_fingerprint(corpus_embedded_tokenizer())


def corpus_embedded_tokenizer():
    from glm4voice.checkpoints import embedded_dir

    return embedded_dir("tokenizer")


@needs_all
def test_stats(full_corpus):
    out, report = full_corpus
    stats = corpus.corpus_stats(out)
    assert stats["utterances"] == report.made
    assert stats["counts"]["role"]["answer"] == 5
    assert stats["heldout_voices_in_train"] == []
    assert stats["failed"] == {"unspeakable": report.failed["unspeakable"]}
    assert stats["audio_bytes"] > 0 and stats["hours"] > 0


@needs_all
def test_question_answer_pairs(full_corpus):
    out, _ = full_corpus
    pairs = corpus.question_answer_pairs(out, split="train")
    assert pairs and all(q["item_id"] == a["item_id"] and a["role"] == "answer" for q, a in pairs)
    assert all(q["split"] == "train" and q["voice"] not in HELDOUT_VOICE_NAMES for q, _ in pairs)
    held = corpus.question_answer_pairs(out, split="heldout")
    assert {q["item_id"] for q, _ in held} >= {"a-en-2"}


@needs_espeak_flite
def test_every_voice_of_set_2_speaks():
    """espeak-ng silently falls back to a default voice for an unknown variant; ours refuses (TTSFailure), so each
    voice of set 2 really speaking also proves it exists. Distinct voices give distinct audio."""
    from glm4voice.train.voices import EXTRA_VOICES_2

    seen = {}
    for v in EXTRA_VOICES_2:
        wav = synthesize("三加四等于几？" if v.language == "zh" else "What is three plus four?", v, sample_rate=16_000)
        assert wav.size > 8_000 and np.abs(wav).max() > 0.01, v.name
        seen[v.name] = wav
    en = [w for n, w in seen.items() if "cmn" not in n and "yue" not in n]
    assert len({(w.size, round(float(np.abs(w).mean()), 5)) for w in en}) > len(en) // 2  # not one voice reused


@needs_all
def test_set3_rephrasings_complete_a_corpus_in_place(full_corpus, tmp_path):
    """`data synth --rephrasings-set3 K` on a copy of an older corpus (without its corpus.json) speaks only the new
    `.p<k>` rows; the older rows' files are the same files."""
    src, _ = full_corpus
    out = str(tmp_path / "v7")
    shutil.copytree(src, out, copy_function=os.link)  # audio linked, as `cp -al`; the appended files copied
    os.remove(os.path.join(out, corpus.META))
    for name in (corpus.MANIFEST, corpus.ITEMS, corpus.FAILED):
        if os.path.exists(os.path.join(src, name)):
            os.remove(os.path.join(out, name))
            shutil.copy(os.path.join(src, name), os.path.join(out, name))
    before = {r["id"]: os.stat(os.path.join(out, r["path"])).st_ino for r in _manifest(out)}
    report = synthesize_corpus(out, CorpusConfig(seed=5, heldout_voice_fraction=0.5, rephrasings_set3=1),
                               items=_items(), jobs=1, progress=False)
    rows = {r["id"]: r for r in _manifest(out)}
    new = [r for i, r in rows.items() if i not in before]
    # the training items of templated kinds (not chat) each gain one phrasing
    assert sorted(r["id"] for r in new) == ["a-en-1.p0", "a-zh-1.p0", "r-en-1.p0", "s-en-1.p0"]
    assert report.made == len(new)
    assert all(os.stat(os.path.join(out, rows[i]["path"])).st_ino == ino for i, ino in before.items())
    by_item = {r["item_id"]: r["text"] for r in new}
    assert "2 plus 3" in by_item["a-en-1"] and by_item["a-en-1"] != "What is 2 plus 3?"
    assert "good morning." in by_item["r-en-1"]
    with open(os.path.join(out, corpus.META), encoding="utf-8") as f:
        assert json.load(f)["config"]["rephrasings_set3"] == 1


def test_synth_cli_refuses_a_negative_set3_count(tmp_path, capsys):
    from glm4voice.cli import main

    assert main(["data", "synth", "--out", str(tmp_path / "c"), "--rephrasings-set3", "-1", "--quiet"]) != 0
    assert "rephrasings_set3" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--rephrasings-set4", "-2", "--quiet"]) != 0
    assert "rephrasings_set4" in capsys.readouterr().err
