"""Write suite results: ``results.json`` (everything, machine-readable), ``report.md`` and ``plots/*.png``."""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

from glm4voice.eval.suites import SuiteResult

EXAMPLES_PER_SUITE = 8  # rows shown in the Markdown report (wrong answers first); all rows are in the JSON
EXAMPLE_FIELDS = ("id", "question", "ref", "text", "expected", "answer", "transcript", "asr", "judge_input",
                  "judge_recon", "correct",
                  "correct_s2t", "correct_s2s", "error", "recon_error", "seconds_per_syllable", "score_s2t",
                  "score_s2s", "question_seconds", "time_to_first_audio", "total", "rtf", "source", "ovrl_mos")
WRONG_FIELDS = ("correct", "correct_s2t", "correct_s2s")
PALETTE = ("#4878a8", "#e08a3c", "#5aa05a", "#a05aa0")


def _clean(x):
    """JSON-safe: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_report(results: list[SuiteResult], out: str | Path, *, meta: dict) -> tuple[Path, Path]:
    """Write the three outputs into ``out``; returns (results.json, report.md)."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor()} | meta
    doc = {"meta": meta, "suites": {r.suite: r.to_json() for r in results}}
    js = out / "results.json"
    js.write_text(json.dumps(_clean(doc), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    md = out / "report.md"
    md.write_text(_markdown(results, meta, out), encoding="utf-8")
    return js, md


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _cell(v) -> str:
    return _fmt(v).replace("|", "\\|").replace("\n", " ")[:160]


def _markdown(results: list[SuiteResult], meta: dict, out: Path) -> str:
    lines = ["# glm4voice evaluation", ""]
    lines += [f"- **{k}**: {_cell(v)}" for k, v in meta.items() if not isinstance(v, dict)]
    for k, v in meta.items():
        if isinstance(v, dict):
            lines.append(f"- **{k}**: " + ", ".join(f"{a}={_cell(b)}" for a, b in v.items()))
    targets = [(r.suite, t, r.metrics.get(t.metric)) for r in results for t in r.targets]
    if targets:
        lines += ["", "## Targets", "", "| suite | target | required | measured | met |", "|---|---|---|---|---|"]
        for suite, t, v in targets:
            lines.append(f"| {suite} | {t.label} | {t.op} {t.value:g} | {_fmt(v)} | {_fmt(t.met(v))} |")
    for r in results:
        lines += ["", f"## {r.suite}", "", f"data: {r.data or '–'}; {r.seconds:.1f} s; status: {r.status}", ""]
        lines += [f"> {n}" for n in r.notes] + ([""] if r.notes else [])
        if r.metrics:
            lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in r.metrics.items()]
        for name, groups in r.breakdown.items():
            if not groups:
                continue
            cols = sorted({c for g in groups.values() for c in g})
            lines += ["", f"**{name}**", "", "| group | " + " | ".join(cols) + " |",
                      "|---" * (len(cols) + 1) + "|"]
            lines += [f"| {k} | " + " | ".join(_cell(g.get(c)) for c in cols) + " |" for k, g in groups.items()]
        for i, chart in enumerate(r.charts):
            png = _plot(chart, out / "plots" / f"{r.suite}_{i}.png")
            if png:
                lines += ["", f"![{chart['title']}](plots/{png.name})"]
        lines += _examples(r)
    return "\n".join(lines) + "\n"


def _examples(r: SuiteResult) -> list[str]:
    if not r.rows:
        return []
    rows = sorted(r.rows, key=lambda x: all(x.get(f, True) for f in WRONG_FIELDS))[:EXAMPLES_PER_SUITE]
    cols = [c for c in EXAMPLE_FIELDS if any(c in x for x in rows)]
    out = ["", f"Examples ({len(rows)} of {len(r.rows)}, wrong answers first; all in results.json):", "",
           "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    return out + ["| " + " | ".join(_cell(x.get(c)) for c in cols) + " |" for x in rows]


def _plot(chart: dict, path: Path) -> Path | None:
    """Draw one chart (bar / box / scatter) with matplotlib's file-only backend; None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(chart.get("labels", [])) + 2), 3.2), dpi=100)
    kind = chart["type"]
    if kind == "bar":  # "values": one bar per label, or "series": {name: values} as grouped bars
        series = chart.get("series") or {"": chart["values"]}
        width = 0.8 / len(series)
        for k, (name, vals) in enumerate(series.items()):
            xs = [i - 0.4 + width * (k + 0.5) for i in range(len(vals))]
            ax.bar(xs, [v if v is not None else 0.0 for v in vals], width, label=name or None,
                   color=PALETTE[k % len(PALETTE)])
        ax.set_xticks(range(len(chart["labels"])), chart["labels"], rotation=45, ha="right", fontsize=8)
        if len(series) > 1:
            ax.legend(fontsize=8)
    elif kind == "box":
        data = [v if v else [float("nan")] for v in chart["values"]]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(data) + 1), chart["labels"], rotation=45, ha="right", fontsize=8)
    elif kind == "scatter":
        ax.scatter(chart["x"], chart["y"], s=12, color="#4878a8")
        ax.set_xlabel(chart.get("xlabel", ""))
    else:
        raise ValueError(f"unknown chart type {kind!r}")
    if chart.get("target") is not None:
        ax.axhline(chart["target"], color="#c04040", linestyle="--", linewidth=1, label="target")
        ax.legend(fontsize=8)
    ax.set_title(chart["title"], fontsize=10)
    ax.set_ylabel(chart.get("ylabel", ""))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
