"""The LM in its own thread, ahead of the speech decoder (``VoiceChat.run_ahead``), against the sequential
pipeline: time to first audio, whole turn and real-time factor at 1 thread and at all cores.

    python benchmarks/run_ahead.py [--runs 5]

The four settings alternate turn by turn, so a drifting machine hits every row alike; compare within one run.
Each row also checks that the answer (text and speech codes, seed 0) is the same as the sequential one's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import QUESTION, load_chat  # noqa: E402  (benchmarks/pipeline.py)


def turn(chat, settings, question):
    from glm4voice.pipeline.events import Timing, TurnEnd

    timings, end = {}, None
    with chat.session(settings) as s:
        for ev in s.respond(user_audio=question):
            if isinstance(ev, Timing):
                timings[ev.stage] = ev.seconds
            elif isinstance(ev, TurnEnd):
                end = ev
    return timings, end


def main(argv=None):
    from glm4voice.pipeline.session import ChatSettings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-seq", type=int, default=2048)
    p.add_argument("--max-new-tokens", type=int, default=400)
    args = p.parse_args(argv)
    cores = torch.get_num_threads()
    chat, label = load_chat(args, 1)
    question = QUESTION.read_bytes()
    settings = ChatSettings(seed=0, max_new_tokens=args.max_new_tokens)
    configs = [(n, ahead) for n in sorted({1, cores}) for ahead in (False, True)]
    rows = {c: {"ttfa": [], "total": [], "rtf": [], "same": True} for c in configs}
    ref = None
    for i in range(args.runs + 1):  # the first round warms up
        for n, ahead in configs:
            torch.set_num_threads(n)
            chat.run_ahead = ahead
            t, end = turn(chat, settings, question)
            answer = (end.text, end.audio_codes)
            ref = ref or answer
            r = rows[(n, ahead)]
            r["same"] &= answer == ref
            if i:
                r["ttfa"].append(t["time_to_first_audio"])
                r["total"].append(t["total"])
                r["rtf"].append(t["total"] / max(end.audio_seconds, 1e-9))
    torch.set_num_threads(cores)
    chat.run_ahead = False
    print(f"model: {label}; {args.runs} alternating turns per row (median); answer {len(ref[1])} speech codes\n")
    header = f"{'threads':>8}{'LM ahead':>10}{'first audio':>14}{'turn':>10}{'RTF':>8}   same answer"
    print(header)
    print("-" * len(header))
    for n, ahead in configs:
        r = rows[(n, ahead)]
        print(f"{n:>8}{'yes' if ahead else 'no':>10}{statistics.median(r['ttfa']) * 1000:>11.0f} ms"
              f"{statistics.median(r['total']) * 1000:>7.0f} ms{statistics.median(r['rtf']):>8.3f}   "
              f"{'yes' if r['same'] else 'NO'}")


if __name__ == "__main__":
    main()
