"""scripts/code_agreement.py: code edit distances between voices saying the same sentence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
from test_train_lm import load_script


def test_edit_distance_and_normalisation():
    from glm4voice.train.tokenizer_trainer import edit_distance

    ca = load_script("code_agreement")
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([], [4, 5]) == 2
    assert edit_distance([1, 2, 3, 4], [9, 2, 3]) == 2  # one substitution, one deletion
    assert edit_distance([1, 2], [2, 1]) == 2  # a swap is two edits (no transpositions)
    assert ca.normalised([1, 2], [3, 4, 5, 6]) == 1.0 and ca.normalised([], []) == 0.0


def test_groups_need_two_voices_and_keep_one_rendition_each():
    ca = load_script("code_agreement")
    rows = [{"id": f"r{i}", "role": "question", "language": "en", "text": t, "voice": v}
            for i, (t, v) in enumerate([("a", "x"), ("a", "y"), ("a", "y"), ("b", "x"), ("c", "x"), ("c", "z")])]
    rows.append({"id": "ans", "role": "answer", "language": "en", "text": "b", "voice": "y"})
    groups = ca.pick_groups(rows, 10, 0)
    assert sorted(sorted(r["voice"] for r in g) for g in groups) == [["x", "y"], ["x", "z"]]
    assert ca.pick_groups(rows, 1, 0)[0] in groups


def test_unrelated_pairs_are_one_voice_two_texts_and_seeded():
    ca = load_script("code_agreement")
    rows = [{"id": f"r{i}", "text": t, "voice": v} for i, (t, v) in enumerate(
        [("a", "x"), ("b", "x"), ("c", "x"), ("a", "y"), ("d", "z"), ("e", "z")])]
    pairs = ca.unrelated_pairs(rows, 20, 3)
    assert len(pairs) == 20 and pairs == ca.unrelated_pairs(rows, 20, 3)
    assert all(a["voice"] == b["voice"] and a["id"] != b["id"] for a, b in pairs)
    assert {a["voice"] for a, _ in pairs} == {"x", "z"}  # y has one rendition only
    assert ca.unrelated_pairs(rows[3:4], 5, 0) == []


def test_main_scores_a_tokenizer_against_itself_the_same(tmp_path, capsys):
    ca = load_script("code_agreement")
    corpus = tmp_path / "c"
    (corpus / "audio").mkdir(parents=True)
    rows = []
    t = np.arange(16000) / 16000
    for i, (text, voice, f0) in enumerate([("one", "espeak:en-us", 150), ("one", "flite:awb", 190),
                                            ("two", "espeak:en-us", 260), ("two", "flite:awb", 330)]):
        path = f"audio/{i}.wav"
        sf.write(corpus / path, (0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.1 * i * t))).astype(np.float32), 16000)
        rows.append({"id": f"q{i}", "role": "question", "language": "en", "text": text, "voice": voice,
                     "path": path, "split": "heldout"})
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = str(Path(__file__).resolve().parents[1] / "glm4voice/assets/embedded/tokenizer")
    out = tmp_path / "summary.json"
    assert ca.main(["--corpus", str(corpus), "--tokenizer", tok, tok, "--texts", "5", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    (a,) = {json.dumps(v, sort_keys=True) for v in summary.values()}  # the same tokenizer twice: the same numbers
    a = json.loads(a)
    assert a["pairs"] == 2 and 0 <= a["same text, two voices"] <= 1
    assert a["ratio"] == a["same text, two voices"] / a["two texts, one voice"]
    assert set(a["held-out voices"]) == {"flite:awb"}
    assert "same text, held-out voice in pair" in capsys.readouterr().out
