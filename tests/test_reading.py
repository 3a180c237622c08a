"""The reading corpus (`glm4voice data reading`): new sentences only, dealt over the corpus's training voices, written
in the corpus layout, resumable; and its use by the LM trainer (`train lm --extra-corpus`)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_lm_samples import fake_codes, make_corpus, make_tokenizer_dir
from test_variety import _fake_synth

from glm4voice.errors import ConfigError
from glm4voice.train import lm_samples as ls
from glm4voice.train import reading
from glm4voice.train.corpus import read_jsonl
from glm4voice.train.engine import read_metrics
from glm4voice.train.voices import get_voice

EN = [get_voice("espeak:en-us+f1"), get_voice("flite:slt")]
ZH = [get_voice("espeak:cmn-latn-pinyin+m1")]
SENTENCES = {
    "en": ["The cat sat on the mat.", "A dog ran home.", "Rain fell all night long.", "We sang a song together.",
           "Paris.", "It was a bad day indeed."],
    "zh": ["二加三等于几。", "天气很好。", "我们一起唱歌。"],
}


HELD = {"en": [get_voice("flite:awb")], "zh": [get_voice("espeak:cmn-latn-pinyin+m6")]}


def _voices(lang, split):
    return HELD[lang] if split == "heldout" else EN if lang == "en" else ZH


def _plan(corpus, counts, **kw):
    return reading.plan(corpus, counts, **{"sentences": lambda lang: SENTENCES[lang], **kw}, voices=_voices)


def test_wordnet_examples_are_clean_sentences(tmp_path):
    (tmp_path / "data.noun").write_text(
        "  1 This software and database is being provided\n"
        "00001740 03 n 01 entity 0 001 | that which is perceived; \"the entity was seen near the old mill\"; "
        "\"too short\"\n"
        "00002137 03 n 01 thing 0 001 | a thing; \"he put (the) thing away in a box\"; \"did you see it?\"\n"
        "00002138 03 n 01 thing 0 001 | another; \"did you see it near the house?\"; \"café au lait is served hot\"\n",
        encoding="utf-8")
    got = reading.wordnet_examples(str(tmp_path))
    # the licence line, short quotes, brackets and non-ASCII are left out; capitalised; a full stop unless ! or ?
    assert got == ["Did you see it near the house?", "The entity was seen near the old mill."]


def test_wordnet_glosses_are_the_definitions_as_sentences(tmp_path):
    (tmp_path / "data.verb").write_text(
        "  1 This software and database is being provided\n"
        "00001740 03 v 01 run 0 001 | move fast by using one's feet; go (quickly); \"he ran all the way home\"\n"
        "00002137 03 v 01 go 0 001 | change location, move, travel or proceed; café au lait; be gone\n",
        encoding="utf-8")
    # quoted examples, brackets, non-ASCII and short clauses are left out
    assert reading.wordnet_glosses(str(tmp_path)) == ["Change location, move, travel or proceed.",
                                                      "Move fast by using one's feet."]
    with pytest.raises(ConfigError, match="English sentences only"):
        reading.candidate_sentences("zh", "glosses")
    with pytest.raises(ConfigError, match="unknown reading source"):
        reading.candidate_sentences("en", "novels")


def test_plan_of_glosses_tags_its_ids_and_leaves_out_the_corpus_definitions(tmp_path):
    corpus = make_corpus(tmp_path / "c", broken=False)
    items = tmp_path / "c" / "items.jsonl"
    with items.open("a", encoding="utf-8") as f:  # a definition the corpus answers: its gloss is said
        f.write(json.dumps({"id": "definition-en-00000", "kind": "definition", "language": "en",
                            "question": "What does run mean?", "answer": "Run means move fast by using one's feet.",
                            "split": "train"}) + "\n")
    glosses = ["Move fast by using one's feet.", "Change location, move, travel or proceed.",
               "A small domesticated carnivore.", "Rain fell all night long."]
    rows = _plan(corpus, {"en": 3}, heldout={"en": 0}, source="glosses", sentences=lambda lang: glosses)
    assert {r[2] for r in rows} == set(glosses[1:]) and all(r[1].startswith("read-en-g0") for r in rows)
    held = _plan(corpus, {"en": 2}, heldout={"en": 1}, source="glosses", sentences=lambda lang: glosses)
    assert [r[1][:11] for r in held if r[3] == "heldout"] == ["read-en-gh0"]
    # the examples source keeps its plan: the gloss filter is not applied to it
    assert "Move fast by using one's feet." in {r[2] for r in _plan(corpus, {"en": 4}, sentences=lambda lang: glosses)}
    with pytest.raises(ConfigError, match="unknown reading source"):
        _plan(corpus, {"en": 1}, source="novels")


def test_plan_leaves_out_what_the_corpus_says_and_deals_over_the_voices(tmp_path):
    # the toy items say "the cat sat on the mat." (after a colon), "a dog ran home.", "Paris." and 二加三等于几？
    corpus = make_corpus(tmp_path / "c", broken=False)
    rows = _plan(corpus, {"en": 3, "zh": 2}, seed=1)
    texts = [t for _, _, t, _ in rows]
    assert len(rows) == 5 and len(set(texts)) == 5
    assert set(texts) == {"Rain fell all night long.", "We sang a song together.", "It was a bad day indeed.",
                          "天气很好。", "我们一起唱歌。"}
    en = [v.name for v, rid, t, _ in rows if rid.startswith("read-en")]
    assert en == [EN[0].name, EN[1].name, EN[0].name]  # round-robin over the language's voices
    assert all(v.language == "zh" for v, rid, *_ in rows if rid.startswith("read-zh"))
    assert {split for *_, split in rows} == {"train"}
    assert rows == _plan(corpus, {"en": 3, "zh": 2}, seed=1)  # deterministic
    assert [r[2] for r in _plan(corpus, {"en": 2}, seed=1)] == texts[:2]  # a smaller count takes a prefix
    # held-out rows: other new sentences, by the held-out voices; the training rows stay as they were
    both = _plan(corpus, {"en": 2, "zh": 1}, heldout={"en": 1, "zh": 1}, seed=1)
    train = [r for r in both if r[3] == "train"]
    held = [r for r in both if r[3] == "heldout"]
    assert train == _plan(corpus, {"en": 2, "zh": 1}, seed=1)
    assert [(v.name, rid[:10]) for v, rid, _, _ in held] == [("flite:awb", "read-en-h0"),
                                                              ("espeak:cmn-latn-pinyin+m6", "read-zh-h0")]
    assert not {r[2] for r in held} & {r[2] for r in train}
    with pytest.raises(ConfigError, match="only 3 new en sentences are available, 4 asked"):
        _plan(corpus, {"en": 2}, heldout={"en": 2})
    with pytest.raises(ConfigError, match="only 3 new en sentences are available, 4 asked"):
        _plan(corpus, {"en": 4})
    with pytest.raises(ConfigError, match=">= 0"):
        _plan(corpus, {"en": 1}, heldout={"en": -1})
    with pytest.raises(ConfigError, match=">= 0"):
        _plan(corpus, {"en": -1})
    with pytest.raises(ConfigError, match="corpus.json"):
        reading.plan(tmp_path / "nowhere", {"en": 1}, sentences=lambda lang: SENTENCES[lang])


def test_corpus_voices_come_from_corpus_json(tmp_path):
    (tmp_path / "corpus.json").write_text(json.dumps({"voices": {"train": [
        "espeak:en-us+f1", "flite:slt", "espeak:cmn-latn-pinyin+m1"], "heldout": ["flite:awb"]}}))
    assert [v.name for v in reading.corpus_voices(tmp_path, "en")] == ["espeak:en-us+f1", "flite:slt"]
    assert [v.name for v in reading.corpus_voices(tmp_path, "zh")] == ["espeak:cmn-latn-pinyin+m1"]
    assert [v.name for v in reading.corpus_voices(tmp_path, "en", "heldout")] == ["flite:awb"]
    with pytest.raises(ConfigError, match="no heldout voice of language 'zh'"):
        reading.plan(tmp_path, {"en": 1}, heldout={"zh": 1}, sentences=lambda lang: SENTENCES[lang])


def test_build_writes_the_corpus_layout_and_resumes(tmp_path):
    corpus = make_corpus(tmp_path / "c", broken=False)
    out = tmp_path / "r"
    calls = []
    report = reading.build(out, corpus, {"en": 3, "zh": 1}, heldout={"zh": 1}, synth=_fake_synth(calls),
                           progress=False,
                           sentences=lambda lang: SENTENCES[lang], voices=_voices)
    # "It was a bad day indeed." fails in the fake engine: counted, not written
    assert (report.made, report.failed) == (4, 1) and report.summary().startswith("reading corpus")
    rows, torn = read_jsonl(str(out / "manifest.jsonl"))
    assert not torn and len(rows) == 4
    assert sorted(r["split"] for r in rows) == ["heldout", "train", "train", "train"]
    for r in rows:
        assert r["role"] == r["kind"] == "reading" and r["id"].startswith("read-")
        assert (r["split"] == "heldout") == (r["voice"] == "espeak:cmn-latn-pinyin+m6")
        assert os.path.exists(out / r["path"])
    calls.clear()
    again = reading.build(out, corpus, {"en": 3, "zh": 1}, heldout={"zh": 1}, synth=_fake_synth(calls),
                          progress=False,
                          sentences=lambda lang: SENTENCES[lang], voices=_voices)
    assert (again.made, again.kept) == (0, 4) and [t for _, ts in calls for t in ts] == [
        "It was a bad day indeed."]  # only the failed row is tried again


def _reading_tokens(folder, rows, heldout=()):
    (folder / "tokens").mkdir(parents=True)
    with open(folder / "manifest.jsonl", "w", encoding="utf-8") as f:
        for rid, text in rows:
            split = "heldout" if rid in heldout else "train"
            f.write(json.dumps({"id": rid, "text": text, "language": "en", "voice": "espeak:en-us+f1",
                                "style": "plain", "duration": 1.0, "path": f"audio16k/{rid}.wav", "role": "reading",
                                "kind": "reading", "item_id": rid, "split": split}) + "\n")
            np.save(folder / "tokens" / f"{rid}.npy", fake_codes(text))


def test_lm_trainer_adds_the_extra_corpus_utterances(tmp_path):
    from test_train_lm import _run

    env = {"tok": make_tokenizer_dir(tmp_path / "tok"), "corpus": make_corpus(tmp_path / "corpus")}
    extra = tmp_path / "reading"
    _reading_tokens(extra, [("read-en-000000", "Rain fell all night long."), ("read-en-000001", "A dog ran home.")])
    base = ls.load_lm_data(env["corpus"])
    rows = _run(env, tmp_path / "run", "--mix", "asr=1", "--extra-corpus", extra, steps=2)
    assert rows
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["extra_corpus"] == [str(extra)]
    assert f"{len(base.utterances) + 2} utterances" in run["data"]
    _run(env, tmp_path / "run3", "--mix", "asr=1", "--extra-corpus", extra, "--extra-repeat", 3, steps=1)
    run = json.loads((tmp_path / "run3" / "run.json").read_text())
    assert f"{len(base.utterances) + 6} utterances" in run["data"] and run["extra_repeat"] == 3
    with pytest.raises(ConfigError, match="--extra-repeat"):
        _run(env, tmp_path / "run4", "--extra-corpus", extra, "--extra-repeat", 0, steps=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.jsonl").write_text("")
    with pytest.raises(ConfigError, match="no utterance with cached codes"):
        _run(env, tmp_path / "run2", "--extra-corpus", empty, steps=1)


def test_lm_trainer_reports_the_extra_corpus_heldout_transcript_loss(tmp_path):
    from test_train_lm import _run

    env = {"tok": make_tokenizer_dir(tmp_path / "tok"), "corpus": make_corpus(tmp_path / "corpus")}
    extra = tmp_path / "reading_v9"
    _reading_tokens(extra, [("read-en-000000", "Rain fell all night long."), ("read-en-000001", "A dog ran home."),
                            ("read-en-h000000", "The cat sat on a warm mat.")], heldout={"read-en-h000000"})
    _run(env, tmp_path / "run", "--mix", "asr=1", "--extra-corpus", extra, "--eval-every", 2, "--eval-batches", 1,
         steps=4)
    evals = [r for r in read_metrics(str(tmp_path / "run")) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:  # the held-out reading row's transcript, apart from the corpus's own held-out batches
        assert r["eval_reading_v9_asr_loss"] > 0 and 0 <= r["eval_reading_v9_asr_acc"] <= 1
        assert r["eval_reading_v9_asr_loss"] != r["eval_text_loss"]
    # a folder without held-out rows adds nothing
    plain = tmp_path / "plain"
    _reading_tokens(plain, [("read-en-000000", "Rain fell all night long.")])
    _run(env, tmp_path / "run2", "--mix", "asr=1", "--extra-corpus", plain, "--eval-every", 1, "--eval-batches", 1,
         steps=1)
    (row,) = [r for r in read_metrics(str(tmp_path / "run2")) if r["kind"] == "eval"]
    assert not any(k.startswith("eval_plain") for k in row) and "eval_text_loss" in row


def test_lm_trainer_extra_kinds_puts_the_extra_utterances_in_those_pools_only(tmp_path):
    from test_train_lm import _run

    env = {"tok": make_tokenizer_dir(tmp_path / "tok"), "corpus": make_corpus(tmp_path / "corpus")}
    extra = tmp_path / "reading"
    _reading_tokens(extra, [("read-en-000000", "Rain fell all night long."), ("read-en-000001", "A dog ran home.")])
    base = ls.load_lm_data(env["corpus"])
    _run(env, tmp_path / "run", "--mix", "asr=1", "--extra-corpus", extra, "--extra-kinds", "asr",
         "--extra-repeat", 2, steps=1)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["extra_kinds"] == ["asr"]
    assert f"{len(base.utterances)} utterances" in run["data"] and "4 more utterances for asr only" in run["data"]
    for bad in ("asr,sft", ","):
        with pytest.raises(ConfigError, match="--extra-kinds"):
            _run(env, tmp_path / "run2", "--extra-corpus", extra, "--extra-kinds", bad, steps=1)
    # the pools the mixture draws from: the extra rows are heard (asr) but never spoken (tts, speech)
    more = ls.load_lm_data(str(extra), with_item_texts=False)
    base.kind_utterances["asr"] = list(more.utterances)
    ids = {k: {u.id for u in base.pool(k)} for k in ("asr", "tts", "speech")}
    extra_ids = {u.id for u in more.utterances}
    assert extra_ids <= ids["asr"] and not extra_ids & (ids["tts"] | ids["speech"])
    assert ids["tts"] == ids["speech"] == ids["asr"] - extra_ids


def test_plan_in_the_target_voice_reads_every_row_in_the_answer_voice(tmp_path):
    corpus = Path(make_corpus(tmp_path / "c", broken=False))
    meta = json.loads((corpus / "corpus.json").read_text()) if (corpus / "corpus.json").exists() else {}
    meta.setdefault("voices", {})["target"] = {"en": "flite:slt", "zh": "espeak:cmn-latn-pinyin+m1"}
    (corpus / "corpus.json").write_text(json.dumps(meta))
    sentences = {"sentences": lambda lang: SENTENCES[lang]}
    rows = reading.plan(corpus, {"en": 2, "zh": 1}, heldout={"en": 1}, seed=1, voice_set="target", **sentences)
    assert [(v.name, rid[:10], split) for v, rid, _, split in rows] == [
        ("flite:slt", "read-en-t0", "train"), ("flite:slt", "read-en-t0", "train"),
        ("flite:slt", "read-en-th", "heldout"), ("espeak:cmn-latn-pinyin+m1", "read-zh-t0", "train")]
    # the same sentences as the training voices' plan, so only the voices and the ids differ
    plain = reading.plan(corpus, {"en": 2, "zh": 1}, heldout={"en": 1}, seed=1, voices=_voices, **sentences)
    assert [r[2] for r in rows] == [r[2] for r in plain]
    assert not {r[1] for r in rows} & {r[1] for r in plain}
    with pytest.raises(ConfigError, match="unknown reading voice set 'answers'"):
        reading.plan(corpus, {"en": 1}, voice_set="answers", **sentences)
    meta["voices"]["target"] = {"en": "flite:slt"}
    (corpus / "corpus.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="no target \\(answer\\) voice of language 'zh'"):
        reading.plan(corpus, {"zh": 1}, voice_set="target", **sentences)


def test_extra_corpus_folders_take_their_own_kinds():
    from glm4voice.train.lm_trainer import _kinds_record, extra_corpora

    assert extra_corpora(["data/r1", "data/r2:tts", "data/r3:asr,speech"], "asr") == [
        ("data/r1", ["asr"]), ("data/r2", ["tts"]), ("data/r3", ["asr", "speech"])]
    # a colon that does not end in kinds belongs to the path
    assert extra_corpora(["c:/data/r1", "data/a:b"], "asr,tts,speech") == [
        ("c:/data/r1", ["asr", "tts", "speech"]), ("data/a:b", ["asr", "tts", "speech"])]
    for bad in ("asr,sft", ","):
        with pytest.raises(ConfigError, match="--extra-kinds"):
            extra_corpora(["data/r1"], bad)
    assert _kinds_record(extra_corpora(["a", "b"], "asr")) == ["asr"]
    assert _kinds_record(extra_corpora(["a", "b:tts"], "asr")) == {"a": ["asr"], "b": ["tts"]}
    assert _kinds_record([]) == []


def test_lm_trainer_per_folder_kinds_and_the_tts_heldout_loss(tmp_path):
    from test_train_lm import _run

    env = {"tok": make_tokenizer_dir(tmp_path / "tok"), "corpus": make_corpus(tmp_path / "corpus")}
    heard, spoken = tmp_path / "heard", tmp_path / "spoken"
    _reading_tokens(heard, [("read-en-000000", "Rain fell all night long."), ("read-en-h000000", "A dog ran home.")],
                    heldout={"read-en-h000000"})
    _reading_tokens(spoken, [("read-en-t000000", "We sang a song together."),
                             ("read-en-th000000", "The cat sat on a warm mat.")], heldout={"read-en-th000000"})
    _run(env, tmp_path / "run", "--mix", "asr=0.5,tts=0.5", "--extra-corpus", heard, f"{spoken}:tts",
         "--extra-kinds", "asr", "--eval-every", 1, "--eval-batches", 1, steps=1)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["extra_kinds"] == {str(heard): ["asr"], str(spoken): ["tts"]}
    assert "1 more utterances for asr only" in run["data"] and "1 more utterances for tts only" in run["data"]
    (row,) = [r for r in read_metrics(str(tmp_path / "run")) if r["kind"] == "eval"]
    # the heard folder's held-out row is measured as a transcript only; the spoken one's also as speech
    assert "eval_heard_asr_loss" in row and "eval_heard_tts_loss" not in row
    assert row["eval_spoken_tts_loss"] > 0 and 0 <= row["eval_spoken_tts_acc"] <= 1
    assert row["eval_spoken_tts_loss"] != row["eval_spoken_asr_loss"]
