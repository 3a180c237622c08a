"""How many CPU threads torch should use: an explicit number, or ``auto`` (measure, then choose).

Why: on a 2-core CPU that something else keeps busy, torch's intra-op parallelism turns pathological. Every
parallel region waits at a barrier for its slowest thread, and a thread the scheduler has descheduled costs a
whole time slice. Measured in session 15 (2-core AMD EPYC, a 2-thread training run in the background): a small
matmul took 64 ms with 2 threads against 1.6 ms with 1, and ``glm4voice chat`` took 1.36 s to the first audio
with 2 threads against 0.52–0.60 s with 1 (3.3–12.7 s in single runs).

``auto`` therefore times a small fixed workload (a convolution and a matrix-vector product, about the sizes of
the embedded model's layers) at 1 thread, at torch's default count n and (n >= 4) at n / 2, interleaved, and
takes the fewest threads whose mean time is within ``MIN_GAIN`` of the fastest. On that idle CPU, with the
embedded model, 1 and 2 threads gave the same first audio (340–360 vs 362–389 ms), so a close call costs
nothing there (the probe's workload ran 1.1–1.3x faster with 2 threads); the official 9B LM needs every core, and
an idle many-core CPU shows that in the probe. The probe takes about 0.3 s, less when the CPU is clearly busy.
``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` in the environment is an explicit choice and is left alone.
The CLI decides once per process (``glm4voice chat/serve/encode/synthesize/generate/eval --threads``); library
code never changes the global thread count.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

MIN_GAIN = 1.1  # more threads must be at least 10 % faster than one to be kept
PROBE_SECONDS = 0.3  # how long to measure: a background job's single-threaded phases must not fool the probe
PROBE_MIN_REPS = 3
PROBE_GIVE_UP = 3.0  # stop early once the larger count is this many times slower than one thread (a busy CPU)
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # one line for logs and --timings
    probe_ms: dict[int, float] | None = None  # median probe time per thread count, when measured


def parse_threads(value: str) -> str | int:
    """argparse type of ``--threads``: ``auto`` or a positive integer."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        import argparse

        raise argparse.ArgumentTypeError(f"--threads must be 'auto' or a positive integer, not {value!r}")
    return n


def _workload(x: torch.Tensor, w_conv: torch.Tensor, v: torch.Tensor, w_lin: torch.Tensor) -> None:
    torch.nn.functional.conv1d(x, w_conv, padding=1)
    v @ w_lin


def _inputs(generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    # conv: 256 channels x 100 frames (a flow-estimator block); matvec: 1 x 1024 @ 1024 x 2048 (8 MB of weights,
    # an LM decode step's memory-bound shape)
    return (torch.randn(1, 256, 100, generator=generator), torch.randn(256, 256, 3, generator=generator),
            torch.randn(1, 1024, generator=generator), torch.randn(1024, 2048, generator=generator))


def probe(counts: tuple[int, ...], *, seconds: float = PROBE_SECONDS) -> dict[int, float]:
    """Mean milliseconds of the workload at each thread count, measured interleaved for about ``seconds`` (so
    drift hits all counts alike). The mean, not the median: a busy CPU shows as occasional stalls of a whole
    time slice, and those are what hurt; a window of a few hundred ms spans the single-threaded phases of a
    background job (a trainer's data loading) that a shorter probe can fall into.

    Restores the thread count it found. Stops early once the largest count is ``PROBE_GIVE_UP`` times slower
    than the smallest after ``PROBE_MIN_REPS`` reps: on a busy CPU each of its reps can cost a time slice."""
    before = torch.get_num_threads()
    args = _inputs(torch.Generator().manual_seed(0))
    times: dict[int, list[float]] = {n: [] for n in counts}
    lo, hi = min(counts), max(counts)
    try:
        for n in counts:  # warm-up: thread pools, allocator
            torch.set_num_threads(n)
            _workload(*args)
        start = time.perf_counter()
        while len(times[lo]) < PROBE_MIN_REPS or time.perf_counter() - start < seconds:
            for n in counts:
                torch.set_num_threads(n)
                t = time.perf_counter()
                _workload(*args)
                times[n].append(time.perf_counter() - t)
            if (lo != hi and len(times[lo]) >= PROBE_MIN_REPS
                    and sum(times[hi]) > PROBE_GIVE_UP * sum(times[lo])):
                break
    finally:
        torch.set_num_threads(before)
    return {n: 1e3 * sum(ts) / len(ts) for n, ts in times.items()}


def choose_threads(setting: str | int | None = "auto", *, default: int | None = None,
                   environ: dict[str, str] | None = None) -> ThreadChoice:
    """The thread count for ``setting`` (``auto``, None = auto, or a number) without applying it.

    ``default``: the count to weigh against one thread (torch's current count, normally the physical cores)."""
    environ = os.environ if environ is None else environ
    default = torch.get_num_threads() if default is None else default
    if isinstance(setting, int):
        return ThreadChoice(setting, f"{setting} (--threads)")
    if setting not in (None, "auto"):
        raise ValueError(f"threads setting must be 'auto', None or an int, not {setting!r}")
    env = [k for k in ENV_VARS if environ.get(k)]
    if env:
        return ThreadChoice(default, f"{default} ({env[0]}={environ[env[0]]})")
    if default <= 1:
        return ThreadChoice(1, "1 (one core)")
    counts = tuple(sorted({1, default // 2, default})) if default >= 4 else (1, default)
    ms = probe(counts)
    best = min(ms.values())
    n = min(c for c in counts if ms[c] <= best * MIN_GAIN)  # the fewest threads nearly as fast as the fastest
    timing = ", ".join(f"{c}: {ms[c]:.1f} ms" for c in counts)
    busy = "; the CPU is busy" if n < default else ""
    return ThreadChoice(n, f"{n} (auto: {timing}{busy})", ms)
