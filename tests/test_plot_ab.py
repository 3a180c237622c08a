"""scripts/plot_ab.py: reads a metric from eval result folders, prints the table and writes the chart."""

import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "plot_ab.py"


def _results(folder: Path, **metrics) -> str:
    folder.mkdir(parents=True)
    doc = {"suites": {"spoken_qa": {"metrics": metrics}}}
    (folder / "results.json").write_text(json.dumps(doc))
    return str(folder)


def test_plot_ab_table_and_png(tmp_path, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    a = _results(tmp_path / "a", accuracy_s2t=0.08, items=200)
    b = _results(tmp_path / "b", accuracy_s2t=0.155, items=200)
    c = _results(tmp_path / "c", accuracy_s2t=0.34, items=150)
    out = tmp_path / "ab.png"
    assert main([f"old|heldout={a}", f"new K=4|heldout={b}", f"old|train={c}", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| run | heldout | train |" in table
    assert "| old | 0.080 (200) | 0.340 (150) |" in table
    assert "| new K=4 | 0.155 (200) | – |" in table  # a label may hold "="; a missing cell is shown, not invented
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_ab_refuses_bad_input(tmp_path):
    main = runpy.run_path(str(SCRIPT))["main"]
    a = _results(tmp_path / "a", accuracy=0.5, items=10)
    with pytest.raises(SystemExit, match="no metric 'accuracy_s2t'"):
        main([f"x|g={a}", "--out", str(tmp_path / "o.png")])
    with pytest.raises(SystemExit, match="RUN\\|GROUP=FOLDER"):
        main([f"x={a}", "--out", str(tmp_path / "o.png")])
    with pytest.raises(SystemExit, match="cannot read"):
        main([f"x|g={tmp_path / 'missing'}", "--out", str(tmp_path / "o.png")])
