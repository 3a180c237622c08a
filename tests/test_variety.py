"""The speaker-variety corpus (other languages' natural festival voices) and its use by the tokenizer trainer."""

import json
import random

import numpy as np
import pytest
import torch

from glm4voice.errors import ConfigError
from glm4voice.train import tokenizer_trainer as tt
from glm4voice.train import variety
from glm4voice.train.corpus import corpus_stats
from glm4voice.train.tts import UnspeakableText, prepare_text, synthesize
from glm4voice.train.voices import VARIETY_VOICES, get_voice

WORDS = ["casa", "città", "perché", "bello", "żółw"] + [f"parola{chr(97 + i)}" for i in range(20)]


def test_sentences_are_seeded_bounded_and_fit_the_encoding():
    a = variety.sentences(WORDS, 30, random.Random(1), encoding="latin-1", lengths=(3, 6))
    assert a == variety.sentences(WORDS, 30, random.Random(1), encoding="latin-1", lengths=(3, 6))
    assert a != variety.sentences(WORDS, 30, random.Random(2), encoding="latin-1", lengths=(3, 6))
    for s in a:
        assert 3 <= len(s.split()) <= 6 and s.endswith(".") and s[0].isupper()
        s.encode("latin-1")  # raises if a word does not fit
    assert "żółw" not in " ".join(a) and any("città" in s for s in a)
    with pytest.raises(ConfigError, match="usable words"):
        variety.sentences(WORDS[:5], 3, random.Random(0))


def test_variety_voices_read_their_encoding_only():
    lp = get_voice("festival:lp_diphone")
    assert lp in VARIETY_VOICES and lp.language == "it"
    assert prepare_text("La città è bella.", lp) == "La città è bella."  # accents kept (English voices fold them)
    with pytest.raises(UnspeakableText, match="latin-1"):
        prepare_text("Přijď zítra.", lp)  # ř and ď are not Latin-1
    assert prepare_text("Přijď zítra.", get_voice("festival:czech_dita")) == "Přijď zítra."


def _fake_synth(calls):
    def synth(texts, voice, sample_rate):
        calls.append((voice.name, list(texts)))
        out = []
        for t in texts:
            if "bad" in t:
                out.append(RuntimeError("engine failed"))
            else:
                out.append(np.full(int(0.01 * len(t) * sample_rate), 0.25, np.float32))
        return out
    return synth


def test_build_writes_a_corpus_the_trainer_reads_and_resumes(tmp_path):
    voices = VARIETY_VOICES[:2] + VARIETY_VOICES[4:5]  # two Italian voices, one Czech
    calls = []
    installed = {voices[0].name, voices[2].name}
    report = variety.build(tmp_path, per_voice=4, seed=3, voices=voices, words=lambda lang: WORDS,
                           synth=_fake_synth(calls), available=lambda v: v.name in installed, progress=False)
    assert report.made == 8 and report.failed == 0 and report.skipped_voices == [voices[1].name]
    rows = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["voice"] for r in rows} == installed and {r["role"] for r in rows} == {"variety"}
    assert {r["language"] for r in rows} == {"it", "cs"} and {r["split"] for r in rows} == {"train"}
    stats = corpus_stats(str(tmp_path))
    assert stats["utterances"] == 8 and stats["counts"]["kind"] == {"variety": 8}
    texts = {r["voice"]: [] for r in rows}
    for r in rows:
        texts[r["voice"]].append(r["text"])
    assert texts[voices[0].name] != texts[voices[2].name]  # each voice reads its own sentences
    utts = tt.load_corpus(str(tmp_path), split="train", max_seconds=30)
    assert len(utts) == 8 and {u.language for u in utts} == {"it", "cs"}
    assert all(len(u.pcm) == int(0.01 * len(u.text) * 16000) for u in utts)  # each row its own audio
    again = variety.build(tmp_path, per_voice=4, seed=3, voices=voices, words=lambda lang: WORDS,
                          synth=_fake_synth(calls), available=lambda v: v.name in installed, progress=False)
    assert again.made == 0 and again.kept == 8 and len(calls) == 2  # nothing spoken twice
    more = variety.build(tmp_path, per_voice=6, seed=3, voices=voices, words=lambda lang: WORDS,
                         synth=_fake_synth(calls), available=lambda v: v.name in installed, progress=False)
    assert more.made == 4 and [len(t) for _, t in calls[2:]] == [2, 2]  # only the new rows
    with (tmp_path / "manifest.jsonl").open("a", encoding="utf-8") as f:  # a kill mid-write tears the last line
        f.write('{"id": "var-it-lp_dip')
    torn = variety.build(tmp_path, per_voice=7, seed=3, voices=voices, words=lambda lang: WORDS,
                         synth=_fake_synth(calls), available=lambda v: v.name in installed, progress=False)
    assert torn.kept == 12 and torn.made == 2
    rows = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 14 == len({r["id"] for r in rows})  # every line whole, none twice
    with pytest.raises(ConfigError, match="install_variety_voices"):
        variety.build(tmp_path / "none", per_voice=1, voices=voices, words=lambda lang: WORDS,
                      synth=_fake_synth([]), available=lambda v: False, progress=False)
    with pytest.raises(ConfigError, match="per-voice"):
        variety.build(tmp_path, per_voice=0, voices=voices, progress=False)


def test_failed_sentences_are_reported_not_written(tmp_path):
    words = ["bad"] * 30
    report = variety.build(tmp_path, per_voice=3, voices=VARIETY_VOICES[:1], words=lambda lang: words,
                           synth=_fake_synth([]), available=lambda v: True, progress=False)
    assert report.failed == 3 and report.made == 0
    assert (tmp_path / "manifest.jsonl").read_text() == ""


@pytest.mark.skipif(not variety.installed(get_voice("festival:czech_dita")),
                    reason="festvox-czech-dita not installed (scripts/install_data_deps.sh)")
def test_a_variety_voice_speaks_text_in_its_encoding(tmp_path):
    wav = synthesize("Přijď zítra, jak se dnes máte?", "festival:czech_dita")
    assert 1.0 < len(wav) / 16000 < 6.0 and np.abs(wav).max() > 0.05
    # the worker-process path, with the real engine
    report = variety.build(tmp_path, per_voice=3, voices=[get_voice("festival:czech_dita")],
                           words=lambda lang: ["den", "dobrý", "řeka", "žena", "město"] * 5, progress=False, jobs=2)
    assert report.made == 3 and report.failed == 0
    utts = tt.load_corpus(str(tmp_path), split="train", max_seconds=30)
    assert len(utts) == 3 and all(len(u.pcm) > 8000 and np.abs(u.pcm).max() > 1000 for u in utts)


def test_trainer_asr_targets_skip_other_languages():
    pcm = np.zeros(3200, np.int16)
    en = tt.Utterance("a", "Hi there", "en", "espeak:en-us", pcm, phones=[1, 2])
    it = tt.Utterance("b", "Ciao bella", "it", "festival:lp_diphone", pcm, phones=[3, 4])
    assert tt.asr_targets(en) == list(b"hi there") and tt.asr_targets(it) is None
    _, _, targets, phones = tt.Batches([en, it], 2, seed=0)(0, 0, 1)
    assert sorted(targets, key=str) == [None, list(b"hi there")] and sorted(map(tuple, phones)) == [(1, 2), (3, 4)]


def test_rows_without_asr_targets_leave_the_asr_loss_and_train_the_phoneme_head():
    from test_train_tokenizer import SPEC, _utts

    torch.manual_seed(0)
    spec = tt.TokenizerTrainSpec(**{**SPEC.__dict__, "phones": 6, "phone_weight": 1.0})
    model = tt.TokenizerTrainModel(spec).eval()
    utts = _utts(4)
    feats, mask = tt.featurize([u.pcm for u in utts])
    texts = [tt.text_ids(u.text) for u in utts]
    phones = [[1, 2, 3], [2, 3], [4, 5, 1], [3]]
    _, both = model(feats, mask, texts, phones)
    _, first_two = model(feats[:2], mask[:2], texts[:2], phones[:2])
    _, masked = model(feats, mask, texts[:2] + [None, None], phones)
    assert masked["asr_loss"] == pytest.approx(first_two["asr_loss"], rel=1e-5)  # the None rows are left out
    assert masked["phone_loss"] == pytest.approx(both["phone_loss"], rel=1e-5)  # but still train the phonemes
    model.train()
    loss, stats = model(feats, mask, [None] * 4, phones)
    assert stats["asr_loss"] == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert model.phone is not None and any(p.grad is not None and p.grad.abs().sum() > 0
                                           for p in model.phone.parameters())


def test_extra_corpus_in_other_languages_needs_the_phoneme_head(tmp_path):
    import argparse

    variety.build(tmp_path / "var", per_voice=2, voices=VARIETY_VOICES[:1], words=lambda lang: WORDS,
                  synth=_fake_synth([]), available=lambda v: True, progress=False)
    assert tt.manifest_languages(str(tmp_path / "var")) == {"it"}
    parser = argparse.ArgumentParser()
    tt.add_args(parser)
    args = parser.parse_args(["--corpus", str(tmp_path / "missing"), "--extra-corpus", str(tmp_path / "var"),
                              "--out", str(tmp_path / "run")])
    with pytest.raises(ConfigError, match="phoneme head"):  # before the (missing) main corpus is read
        tt.main(args)
