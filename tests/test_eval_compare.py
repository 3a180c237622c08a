"""`glm4voice eval compare`: paired comparison of two eval runs, item by item."""

from __future__ import annotations

import json
from math import comb

import pytest

from glm4voice.cli import main
from glm4voice.errors import ConfigError
from glm4voice.eval.compare import compare, compare_pair, two_sided_binomial_p


def _results(folder, lm, rows, suite="spoken_qa"):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(
        {"meta": {"model": {"tokenizer": "embedded", "lm": lm, "decoder": "embedded"}},
         "suites": {suite: {"suite": suite, "rows": rows}}}))
    return folder


def _qa(i, s2t, s2s, answer, transcript, language="en"):
    return {"id": f"q{i}", "language": language, "answer": answer, "transcript": transcript,
            "correct_s2t": s2t, "correct_s2s": s2s, "intelligibility_error": 0.0 if answer == transcript else 0.5}


def test_binomial_p_is_the_exact_two_sided_sign_test():
    assert two_sided_binomial_p(0, 0) == 1.0
    assert two_sided_binomial_p(5, 5) == 1.0
    assert two_sided_binomial_p(6, 0) == pytest.approx(2 / 2 ** 6)
    assert two_sided_binomial_p(18, 9) == pytest.approx(2 * sum(comb(27, i) for i in range(10)) / 2 ** 27)
    assert two_sided_binomial_p(9, 18) == two_sided_binomial_p(18, 9) < 0.2


def test_compare_counts_better_and_worse_items_and_the_same_answer_subset(tmp_path):
    base = _results(tmp_path / "a", "v11", [
        _qa(0, True, True, "The capital of Peru is Lima.", "The capital of Peru is Lima."),
        _qa(1, False, False, "8 times 9 is 72.", "It times 9 is 72."),
        _qa(2, True, False, "You are welcome.", "You are welcome."),
        _qa(3, False, False, "Hello!", "Oh"),
        _qa(4, True, True, "Hi.", "Hi.")])  # only in the base: left out
    other = _results(tmp_path / "b", "read2", [
        _qa(0, True, True, "The capital of Peru is Lima.", "The capital of pro is lima."),  # same text, worse audio
        _qa(1, True, True, "8 times 9 is 72.", "8 times 9 is 72."),  # better on both
        _qa(2, False, False, "Here's a regex: import re", "Here's a Regix"),  # worse, and another answer
        _qa(3, True, False, "Hello!", "Hello!")])
    a, b = json.loads((base / "results.json").read_text()), json.loads((other / "results.json").read_text())
    rows = {r.measure: r for r in compare_pair(a, b)}
    s2t, s2s = rows["correct_s2t"], rows["correct_s2s"]
    assert (s2t.items, s2t.base, s2t.other, s2t.better, s2t.worse) == (4, "2", "3", 2, 1)
    assert (s2s.base, s2s.other, s2s.better, s2s.worse) == ("1", "2", 1, 0)
    assert s2t.left_out == 1 and s2t.p == pytest.approx(two_sided_binomial_p(2, 1))
    intel, same = rows["intelligibility_error"], rows["intelligibility_error (same answer)"]
    assert intel.items == 4 and (intel.better, intel.worse) == (2, 2)
    # the same-answer subset: items 0, 1, 3 (item 2 said different things); its rates are over those texts only
    assert same.items == 3 and (same.better, same.worse) == (2, 1)
    assert same.base.startswith("en ") and float(same.base.split()[1]) == pytest.approx(2 / 12, abs=1e-3)
    assert float(same.other.split()[1]) == pytest.approx(1 / 12, abs=1e-3)  # 12 words
    md, js = compare([str(base), str(other)])
    assert "| spoken_qa | correct_s2t | 4 | 2 | 3 | 2 | 1 |" in md and "lm read2" in md and "left out" in md
    assert js["others"][0]["rows"][0]["measure"] == "correct_s2t"


def test_eval_compare_command_writes_the_report_and_refuses_bad_input(tmp_path, capsys):
    base = _results(tmp_path / "a", "v11", [{"id": "x", "correct": True}, {"id": "y", "correct": False}], "lm")
    other = _results(tmp_path / "b", "c12", [{"id": "x", "correct": False}, {"id": "y", "correct": False}], "lm")
    out = tmp_path / "cmp" / "report.md"
    assert main(["eval", "compare", str(base), str(other), "--out", str(out)]) == 0
    assert "| lm | correct | 2 | 1 | 0 | 0 | 1 | 1.000 |" in out.read_text()
    assert json.loads(out.with_suffix(".json").read_text())["others"][0]["rows"][0]["worse"] == 1
    capsys.readouterr()
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "results.json").write_text('{"suites": {')
    for argv, msg in ((["eval", "compare", str(base)], "at least two"),
                      (["eval", "compare", str(base), str(tmp_path / "nothing")], "no results.json"),
                      (["eval", "compare", str(base), str(tmp_path / "torn")], "not a readable results file"),
                      (["eval", "spoken_qa", "nonsense"], "unknown suite 'nonsense'")):
        assert main(argv) == 2
        assert msg in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no 'suites'"):
        (tmp_path / "odd").mkdir()
        (tmp_path / "odd" / "results.json").write_text("[1, 2]")
        compare([str(base), str(tmp_path / "odd")])


def test_comma_joined_folders_pool_their_items(tmp_path):
    a1 = _results(tmp_path / "a1", "v11", [{"id": "x", "correct": True}, {"id": "y", "correct": False}], "lm")
    a2 = _results(tmp_path / "a2", "v11", [{"id": "x", "correct": False}], "lm")  # the same id in another set
    b1 = _results(tmp_path / "b1", "new", [{"id": "x", "correct": True}, {"id": "y", "correct": True}], "lm")
    b2 = _results(tmp_path / "b2", "new", [{"id": "x", "correct": True}], "lm")
    md, js = compare([f"{a1},{a2}", f"{b1},{b2}"])
    (row,) = js["others"][0]["rows"]
    assert (row["items"], row["base"], row["other"], row["better"], row["worse"]) == (3, "1", "3", 2, 0)
    assert row["left_out"] == 0 and "lm new" in md
    # one side pooled, the other not: the ids do not match and nothing is compared
    md, js = compare([f"{a1},{a2}", str(b1)])
    assert js["others"][0]["rows"] == [] and "No paired measure" in md


def test_compare_by_a_field_splits_the_paired_counts(tmp_path, capsys):
    from glm4voice.eval.compare import compare_groups

    def row(i, ok, voice):
        return _qa(i, ok, False, "a", "a") | {"voice": voice}

    base = _results(tmp_path / "a", "v12", [row(0, True, "awb"), row(1, False, "awb"), row(2, False, "m6"),
                                           row(3, True, "m6"), row(4, False, "m6")])
    other = _results(tmp_path / "b", "aug", [row(0, False, "awb"), row(1, False, "awb"), row(2, True, "m6"),
                                            row(3, True, "m6"), row(4, True, "m6")])
    a, b = json.loads((base / "results.json").read_text()), json.loads((other / "results.json").read_text())
    got = {(r.measure, r.extra["group"]): r for r in compare_groups(a, b, "voice")}
    awb, m6 = got[("correct_s2t", "awb")], got[("correct_s2t", "m6")]
    assert (awb.items, awb.base, awb.other, awb.better, awb.worse) == (2, "1", "0", 0, 1)
    assert (m6.items, m6.base, m6.other, m6.better, m6.worse) == (3, "1", "3", 2, 0)
    assert got[("correct_s2s", "m6")].better == 0
    assert main(["eval", "compare", str(base), str(other), "--by", "voice"]) == 0
    out = capsys.readouterr().out
    assert "By voice:" in out and "| spoken_qa | correct_s2t | m6 | 3 | 1 | 3 | 2 | 0 |" in out
    md, js = compare([str(base), str(other)], by="kind")  # a field the rows lack: one group
    assert [r["group"] for r in js["others"][0]["groups"]["rows"]] == ["–", "–"]
