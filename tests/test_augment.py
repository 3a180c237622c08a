"""`glm4voice data augment`: speaker-perturbed copies of a corpus's training questions (sox), written as a corpus the
LM trainer reads with --extra-corpus; and the tokenizer stamp that lets such folders share the source's codes."""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from glm4voice.errors import ConfigError
from glm4voice.train import augment, corpus
from glm4voice.train import lm_samples as ls

pytestmark = pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed")

SR = 16_000
STAMP = {"tokenizer": "/x/tok", "sha256": "1" * 64, "codes_sha256": "2" * 64}


def _tone(freq: float, seconds: float = 0.8) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)


def make_audio_corpus(root) -> str:
    """Three items (two train, one held out): each a question (a tone) and an answer with cached codes."""
    root = str(root)
    rows, items = [], []
    for n, (split, freq) in enumerate([("train", 440.0), ("train", 660.0), ("heldout", 550.0)]):
        iid = f"chat-en-{n:05d}"
        items.append({"id": iid, "kind": "chat", "language": "en", "question": f"Question {n}?",
                      "answer": f"Answer {n}.", "split": split})
        for role, suffix, text in (("question", "q0", f"Question {n}?"), ("answer", "a", f"Answer {n}.")):
            rid = f"{iid}.{suffix}"
            path = f"audio16k/chat/{rid}.flac"
            os.makedirs(os.path.join(root, "audio16k", "chat"), exist_ok=True)
            sf.write(os.path.join(root, path), _tone(freq), SR)
            rows.append({"id": rid, "item_id": iid, "kind": "chat", "role": role, "text": text, "language": "en",
                         "voice": "espeak:en-us" if role == "question" else "target", "style": "", "split": split,
                         "duration": 0.8, "path": path, "sample_rate": SR})
            if role == "answer":
                os.makedirs(os.path.join(root, "tokens"), exist_ok=True)
                np.save(os.path.join(root, "tokens", rid + ".npy"), np.arange(5, dtype=np.int32) + n)
    with open(os.path.join(root, "tokens", corpus.TOKENS_STAMP), "w") as f:
        json.dump(STAMP, f)
    with open(os.path.join(root, "items.jsonl"), "w") as f:
        f.writelines(json.dumps(i) + "\n" for i in items)
    with open(os.path.join(root, "manifest.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return root


def _peak_hz(path: str) -> float:
    x, sr = sf.read(path)
    assert sr == SR
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec)) * sr / len(x)


def test_copies_are_perturbed_training_questions_with_their_answers(tmp_path):
    src = make_audio_corpus(tmp_path / "src")
    out = str(tmp_path / "aug")
    report = augment.build(out, src, rows=None, copies=2, seed=3, progress=False)
    assert report["copies"] == 4 and report["failed"] == 0 and report["answers"] == 2
    rows = corpus.read_jsonl(os.path.join(out, "manifest.jsonl"))[0]
    copies = [r for r in rows if "augment" in r]
    # only training questions are copied (the held-out item stays out), each with its recipe and a new id
    assert sorted(r["id"] for r in copies) == [f"chat-en-0000{n}.q0.aug{k}" for n in (0, 1) for k in (0, 1)]
    for r in copies:
        a = r["augment"]
        assert r["role"] == "question" and r["split"] == "train" and r["voice"] == "espeak:en-us~aug"
        assert 1.0 <= abs(a["pitch"]) <= 4.0 and 0.9 <= a["tempo"] <= 1.1 and abs(a["tilt"]) <= 6.0
        info = sf.info(os.path.join(out, r["path"]))
        assert info.samplerate == SR and info.channels == 1
        # tempo changes the duration, pitch moves the tone by 2^(semitones/12), and not the other way round
        assert info.duration == pytest.approx(0.8 / a["tempo"], abs=0.03)
        source_hz = 440.0 if r["item_id"].endswith("0") else 660.0
        assert _peak_hz(os.path.join(out, r["path"])) == pytest.approx(source_hz * 2 ** (a["pitch"] / 12), rel=0.02)
    # the answers are carried over with their codes and the source folder's tokenizer stamp
    answers = [r for r in rows if r["role"] == "answer"]
    assert sorted(r["id"] for r in answers) == ["chat-en-00000.a", "chat-en-00001.a"]
    assert np.array_equal(np.load(os.path.join(out, "tokens", "chat-en-00001.a.npy")), np.arange(5) + 1)
    assert json.load(open(os.path.join(out, "tokens", corpus.TOKENS_STAMP))) == STAMP
    assert [json.loads(x)["id"] for x in open(os.path.join(out, "items.jsonl"))] == ["chat-en-00000",
                                                                                    "chat-en-00001"]
    # deterministic from the seed, and resumable: a second run makes nothing new and writes the same manifest
    again = augment.build(out, src, rows=None, copies=2, seed=3, progress=False)
    assert again["made_now"] == 0 and corpus.read_jsonl(os.path.join(out, "manifest.jsonl"))[0] == rows
    twin = str(tmp_path / "twin")  # the same plan elsewhere gives the same audio bytes (sox -R -D)
    augment.build(twin, src, rows=None, copies=2, seed=3, progress=False)
    assert all(open(os.path.join(out, r["path"]), "rb").read() == open(os.path.join(twin, r["path"]), "rb").read()
               for r in copies)
    other = augment.plan(src, rows=None, copies=2, seed=4)
    assert [c["augment"] for _, c in other] != [r["augment"] for r in copies]


def test_the_lm_trainer_reads_the_copies_as_dialogues(tmp_path):
    src = make_audio_corpus(tmp_path / "src")
    out = str(tmp_path / "aug")
    augment.build(out, src, rows=1, copies=1, seed=0, progress=False)
    copy = next(r for r in corpus.read_jsonl(os.path.join(out, "manifest.jsonl"))[0] if "augment" in r)
    np.save(os.path.join(out, "tokens", copy["id"] + ".npy"), np.array([7, 8, 9], dtype=np.int32))
    data = ls.load_lm_data(out, with_item_texts=False)
    assert len(data.dialogues) == 1
    d = data.dialogues[0]
    assert d.question.id == copy["id"] and list(d.question.codes) == [7, 8, 9]
    assert d.answer.id == copy["item_id"] + ".a"


def test_a_copy_that_fails_is_recorded_not_lost(tmp_path):
    src = make_audio_corpus(tmp_path / "src")
    with open(os.path.join(src, "audio16k", "chat", "chat-en-00001.q0.flac"), "wb") as f:
        f.write(b"not audio at all")
    out = str(tmp_path / "aug")
    report = augment.build(out, src, rows=None, copies=1, seed=0, progress=False)
    assert report["copies"] == 1 and report["failed"] == 1
    failed = corpus.read_jsonl(os.path.join(out, "failed.jsonl"))[0]
    assert [f["id"] for f in failed] == ["chat-en-00001.q0.aug0"] and "sox" in failed[0]["reason"]
    ids = [r["id"] for r in corpus.read_jsonl(os.path.join(out, "manifest.jsonl"))[0]]
    assert ids == ["chat-en-00000.q0.aug0", "chat-en-00000.a"]  # no answer without a question, no partial file
    assert not any(n.endswith(".part.flac") for n in os.listdir(os.path.join(out, "audio16k", "chat")))


def test_bad_settings_are_refused(tmp_path):
    src = make_audio_corpus(tmp_path / "src")
    for kw in ({"pitch": -1.0}, {"tempo": 0.5}, {"tilt": -2.0}, {"pitch": 1.0, "min_pitch": 2.0}):
        with pytest.raises(ConfigError):
            augment.Ranges(**kw)
    with pytest.raises(ConfigError, match="copies"):
        augment.plan(src, rows=None, copies=0)
    with pytest.raises(ConfigError, match="not a corpus"):
        augment.plan(str(tmp_path), rows=None)
    with pytest.raises(ConfigError, match="new folder"):
        augment.build(src, src, rows=None, progress=False)


def test_fingerprint_codes_leave_out_the_asr_branch(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "config.json").write_text("{}")
    (tok / "model.safetensors").write_bytes(b"encoder")
    (tok / "asr_branch.safetensors").write_bytes(b"reader 1")
    a = corpus.tokenizer_fingerprint(tok)
    (tok / "asr_branch.safetensors").write_bytes(b"reader 2")  # a refitted reader: same codes
    b = corpus.tokenizer_fingerprint(tok)
    assert a["sha256"] != b["sha256"] and a["codes_sha256"] == b["codes_sha256"] and corpus.same_codes(a, b)
    (tok / "model.safetensors").write_bytes(b"another encoder")
    c = corpus.tokenizer_fingerprint(tok)
    assert not corpus.same_codes(a, c)
    # a stamp written before codes_sha256 existed is compared by its whole hash
    old = {"tokenizer": a["tokenizer"], "sha256": a["sha256"]}
    assert corpus.same_codes(old, a) and not corpus.same_codes(old, b)


def test_command_line(tmp_path, capsys):
    from glm4voice.cli import main

    src = make_audio_corpus(tmp_path / "src")
    out = str(tmp_path / "aug")
    assert main(["data", "augment", "--corpus", src, "--out", out, "--rows", "1", "--copies", "3", "--pitch", "2",
                 "--languages", "en", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["copies"] == 3 and report["answers"] == 1
    assert all(abs(r["augment"]["pitch"]) <= 2 for r in corpus.read_jsonl(os.path.join(out, "manifest.jsonl"))[0]
               if "augment" in r)
    assert main(["data", "augment", "--corpus", src, "--out", str(tmp_path / "zh"), "--languages", "zh",
                 "--quiet"]) == 0  # no Mandarin question: an empty corpus, said so
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["copies"] == 0
    assert main(["data", "augment", "--corpus", src, "--out", out, "--tempo", "0.7"]) != 0
    assert "tempo" in capsys.readouterr().err
