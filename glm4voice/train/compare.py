"""Compare training runs: ``glm4voice train compare RUN [RUN ...] --metric asr_loss --metric wer_en``.

Reads each run's ``metrics.jsonl`` (torn lines after a kill are skipped) and, for every metric, prints a table
at the steps all runs reached and draws one panel with a line per run (``--out``, PNG). Training metrics are
averaged over a window of ``--window`` logged steps ending at each step (they are noisy); held-out metrics are
plotted as logged. Runs are compared at equal steps only, so an A/B stopped early is still a fair comparison.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)


def series(rows: list[dict], metric: str, window: int) -> dict[int, float]:
    """step -> value of ``metric``: held-out rows as logged, train rows as a trailing mean over ``window`` rows."""
    evals = {r["step"]: float(r[metric]) for r in rows
             if r.get("kind") == "eval" and isinstance(r.get(metric), int | float)}
    if evals:
        return evals
    train = [(r["step"], float(r[metric])) for r in rows
             if r.get("kind") != "eval" and isinstance(r.get(metric), int | float)]
    out = {}
    for i, (step, _) in enumerate(train):
        vals = [v for _, v in train[max(0, i - window + 1):i + 1] if math.isfinite(v)]
        if vals:
            out[step] = sum(vals) / len(vals)
    return out


def table(curves: dict[str, dict[int, float]], every: int) -> list[str]:
    """Markdown rows at the shared steps (every ``every``-th step for train series with many points)."""
    shared = sorted(set.intersection(*(set(c) for c in curves.values()))) if curves else []
    if len(shared) > 12:
        shared = [s for s in shared if s % every == 0] or shared[-1:]
    names = list(curves)
    lines = ["| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(f"{curves[n][s]:.4g}" for n in names) + " |" for s in shared]
    return lines


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl)")
    parser.add_argument("--metric", action="append", required=True, help="metric key (repeat for several)")
    parser.add_argument("--window", type=int, default=10, help="logged training rows averaged per point")
    parser.add_argument("--every", type=int, default=500, help="table rows every N steps for training metrics")
    parser.add_argument("--out", default=None, help="write the plot here (PNG)")


def main(args: argparse.Namespace) -> int:
    from glm4voice.errors import ConfigError
    from glm4voice.train.engine import read_metrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = {}
    for run in args.runs:
        if not os.path.isfile(os.path.join(run, "metrics.jsonl")):
            raise ConfigError(f"{run}: no metrics.jsonl (not a training run folder?)")
        rows[Path(run).name or run] = read_metrics(run)
    panels = {}
    for metric in args.metric:
        curves = {name: series(r, metric, args.window) for name, r in rows.items()}
        empty = [name for name, c in curves.items() if not c]
        if empty:
            raise ConfigError(f"metric {metric!r} is not logged by {', '.join(empty)}")
        panels[metric] = curves
        print(f"\n{metric}\n" + "\n".join(table(curves, args.every)))
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        for ax, (metric, curves) in zip(axes[0], panels.items(), strict=True):
            for name, c in curves.items():
                steps = sorted(c)
                ax.plot(steps, [c[s] for s in steps], label=name, marker="o" if len(steps) < 40 else None,
                        markersize=3)
            ax.set(xlabel="step", title=metric)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out, dpi=90)
        plt.close(fig)
        log.info("wrote %s", args.out)
    return 0
