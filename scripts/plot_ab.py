"""Grouped bar chart of an A/B: one accuracy metric from several `glm4voice eval` result folders.

    python3 scripts/plot_ab.py --metric accuracy_s2t --out ab.png \
        "lm_v9n|train=eval-results/v9n_train" "lm_v9n|heldout=eval-results/v9n_heldout" \
        "lm_v10b|train=eval-results/v10b_train" "lm_v10b|heldout=eval-results/v10b_heldout"

Each argument is ``RUN|GROUP=FOLDER``; FOLDER holds the ``results.json`` that ``glm4voice eval`` wrote. Bars are
grouped by GROUP (e.g. the corpus split) and coloured by RUN, in the order given; each bar is labelled with its
value and the number of items. Prints the table it plots.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_metric(folder: str, metric: str) -> tuple[float, int]:
    """(value, items) of ``metric`` from the first suite of ``folder/results.json`` that reports it."""
    path = Path(folder) / "results.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"cannot read {path}: {e}") from None
    for suite in doc.get("suites", {}).values():
        metrics = suite.get("metrics", {})
        if metrics.get(metric) is not None:
            return float(metrics[metric]), int(metrics.get("items", 0))
    raise SystemExit(f"{path} has no metric {metric!r}")


def parse_spec(spec: str) -> tuple[str, str, str]:
    label, sep, folder = spec.rpartition("=")  # labels may contain "=", folders rarely do
    run, bar, group = label.partition("|")
    if not sep or not bar or not run or not group or not folder:
        raise SystemExit(f"expected RUN|GROUP=FOLDER, got {spec!r}")
    return run, group, folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="+", help="RUN|GROUP=FOLDER")
    ap.add_argument("--metric", default="accuracy_s2t")
    ap.add_argument("--title", default=None)
    ap.add_argument("--out", required=True, help="PNG to write")
    args = ap.parse_args(argv)

    rows = [(run, group, *read_metric(folder, args.metric)) for run, group, folder in map(parse_spec, args.specs)]
    runs = list(dict.fromkeys(r[0] for r in rows))
    groups = list(dict.fromkeys(r[1] for r in rows))
    print(f"| run | {' | '.join(groups)} |\n|---|{'---|' * len(groups)}")
    value = {(r[0], r[1]): (r[2], r[3]) for r in rows}
    for run in runs:
        cells = [f"{value[run, g][0]:.3f} ({value[run, g][1]})" if (run, g) in value else "–" for g in groups]
        print(f"| {run} | {' | '.join(cells)} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(groups) * max(1, len(runs) / 2), 3.6))
    for i, run in enumerate(runs):
        xs = [g + (i - (len(runs) - 1) / 2) * width for g in range(len(groups))]
        vals = [value.get((run, grp), (0.0, 0)) for grp in groups]
        bars = ax.bar(xs, [v for v, _ in vals], width, label=run)
        for b, (v, n) in zip(bars, vals, strict=True):
            ax.annotate(f"{v:.2f}\n({n})", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(args.metric)
    top = max(v for v, _ in value.values())
    ax.set_ylim(0, max(0.1, top * 1.3))
    ax.set_title(args.title or args.metric)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
