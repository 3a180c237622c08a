"""glm4voice train compare: runs' metrics at equal steps (table + plot)."""

import argparse
import json

import pytest

from glm4voice.errors import ConfigError
from glm4voice.train import compare


def _run(path, losses, evals=(), torn=False):
    path.mkdir()
    with open(path / "metrics.jsonl", "w") as f:
        for step, v in losses:
            f.write(json.dumps({"kind": "train", "step": step, "asr_loss": v}) + "\n")
        for step, v in evals:
            f.write(json.dumps({"kind": "eval", "step": step, "wer_en": v}) + "\n")
        if torn:
            f.write('{"kind": "train", "st')
    return str(path)


def _args(runs, metrics, out=None, window=2):
    ns = argparse.ArgumentParser()
    compare.add_args(ns)
    argv = [*runs] + [x for m in metrics for x in ("--metric", m)] + ["--window", str(window)]
    return ns.parse_args(argv + (["--out", str(out)] if out else []))


def test_train_series_is_a_trailing_mean_and_eval_series_is_as_logged():
    rows = [{"kind": "train", "step": s, "asr_loss": v} for s, v in [(10, 4.0), (20, 2.0), (30, 0.0)]]
    assert compare.series(rows, "asr_loss", window=2) == {10: 4.0, 20: 3.0, 30: 1.0}
    rows.append({"kind": "eval", "step": 30, "asr_loss": 9.0})
    assert compare.series(rows, "asr_loss", window=2) == {30: 9.0}


def test_table_uses_only_steps_every_run_reached():
    lines = compare.table({"a": {1: 1.0, 2: 2.0, 3: 3.0}, "b": {1: 5.0, 2: 6.0}}, every=1)
    assert lines[0] == "| step | a | b |"
    assert lines[2:] == ["| 1 | 1 | 5 |", "| 2 | 2 | 6 |"]


def test_cli_prints_tables_and_plots(tmp_path, capsys):
    a = _run(tmp_path / "base", [(500, 3.0), (1000, 2.0)], [(500, 0.9), (1000, 0.8)], torn=True)
    b = _run(tmp_path / "phone", [(500, 2.0), (1000, 1.0), (1500, 0.5)], [(500, 0.7), (1000, 0.6)])
    out = tmp_path / "cmp.png"
    assert compare.main(_args([a, b], ["asr_loss", "wer_en"], out=out, window=1)) == 0
    text = capsys.readouterr().out
    assert "| 1000 | 2 | 1 |" in text and "| 1500" not in text  # base never reached 1500
    assert "| 1000 | 0.8 | 0.6 |" in text
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"


def test_cli_names_the_run_missing_a_metric_or_metrics(tmp_path):
    a = _run(tmp_path / "base", [(10, 1.0)])
    with pytest.raises(ConfigError, match="'phone_loss' is not logged by base"):
        compare.main(_args([a], ["phone_loss"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no metrics.jsonl"):
        compare.main(_args([str(tmp_path / "empty")], ["asr_loss"]))
