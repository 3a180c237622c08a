"""CPU threads on an idle and on a busy CPU: time to first audio and turn time with 1 thread, all cores, and what
``--threads auto`` picks (glm4voice/threads.py).

    python benchmarks/threads.py [--runs 5] [--load-threads 2]

"busy" starts a background process that keeps ``--load-threads`` torch threads busy with matmuls (a stand-in for a
training run or a browser on a laptop) and stops it afterwards. Turns with each thread count alternate, so a
drifting machine hits all rows alike; compare within one run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import QUESTION, load_chat, one_turn  # noqa: E402  (benchmarks/pipeline.py)

BURNER = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(512, 512)
while True:
    a = torch.tanh(a @ a)
"""


def measure(chat, counts, runs, question):
    from glm4voice.pipeline.session import ChatSettings

    settings = ChatSettings(seed=0)
    rows = {n: {"ttfa": [], "total": []} for n in counts}
    for n in counts:  # warm-up at each count
        torch.set_num_threads(n)
        one_turn(chat, settings, question)
    for _ in range(runs):
        for n in counts:
            torch.set_num_threads(n)
            t, _, _ = one_turn(chat, settings, question)
            rows[n]["ttfa"].append(t["time_to_first_audio"])
            rows[n]["total"].append(t["total"])
    return rows


def main(argv=None):
    from glm4voice.threads import choose_threads

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--load-threads", type=int, default=None, help="threads of the background load (default: cores)")
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-seq", type=int, default=2048)
    args = p.parse_args(argv)
    cores = torch.get_num_threads()
    counts = sorted({1, cores})
    chat, label = load_chat(args, 1)
    question = QUESTION.read_bytes()
    print(f"model: {label}; torch default threads {cores}; {args.runs} alternating turns per row (median)\n")
    header = f"{'CPU':<6}{'threads':>8}{'first audio':>14}{'turn':>10}   auto picks"
    print(header)
    print("-" * len(header))
    for cpu in ("idle", "busy"):
        load = None
        if cpu == "busy":
            load = subprocess.Popen([sys.executable, "-c", BURNER, str(args.load_threads or cores)])
            time.sleep(2.0)
        try:
            auto = choose_threads("auto", default=cores, environ={})
            rows = measure(chat, counts, args.runs, question)
        finally:
            if load is not None:
                load.kill()
                load.wait()
        torch.set_num_threads(cores)
        for n in counts:
            r = rows[n]
            print(f"{cpu:<6}{n:>8}{statistics.median(r['ttfa']) * 1000:>11.0f} ms"
                  f"{statistics.median(r['total']) * 1000:>7.0f} ms   {auto.reason if n == counts[0] else ''}")


if __name__ == "__main__":
    main()
