"""Voice-chat latency and capacity: time to first audio and the four-stage breakdown for a spoken question, and
how many concurrent sessions keep up with real-time playback.

    python benchmarks/pipeline.py                      # embedded model if installed, else the tiny test model
    python benchmarks/pipeline.py --model DIR --device cuda --runs 5 --sessions 1,2,4,8
    python benchmarks/pipeline.py --first-voc-frames 0,8,16,24 --runs 15   # the first vocoder call's length

Stages (``pipeline/events.py``): tokenize (the 3 s question, offline tokenizer), LM prefill (whole first-turn
prompt), LM decoding until the tokens of the first audio block exist, speech decode of that block, and time to
first audio from the end of the question. Capacity: K sessions answer at once (threads sharing the models, as
the server runs them); a session keeps up with real time if every audio chunk arrives before the audio already
received has finished playing (a player that starts at the first chunk never runs dry). "stall" is the total
time such a player would wait. Numbers are from one machine under its current load: compare within a run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
QUESTION = ROOT.parent / "shared" / "reference" / "tokenizer" / "inputs" / "a01_16k_mono_3s.wav"
STAGES = ("tokenize", "lm_prefill", "lm_first_audio_block", "speech_decode", "time_to_first_audio", "total")


def load_chat(args, max_sessions: int):
    from glm4voice.pipeline.voice_chat import VoiceChat

    model = args.model
    label = model or "embedded"
    if model is None:
        from glm4voice.checkpoints import embedded_dir

        if not embedded_dir("lm").is_dir():
            sys.path.insert(0, str(ROOT))
            from tests.test_pipeline_fixtures import build_models

            model = build_models(Path(tempfile.mkdtemp(prefix="glm4voice-bench-")))
            label = "tiny scripted test model (the embedded model is not installed)"
    chat = VoiceChat.from_pretrained(model=model, device=args.device, dtype=getattr(torch, args.dtype),
                                     max_sessions=max_sessions, max_seq=args.max_seq)
    return chat, label


def one_turn(chat, settings, question):
    """(timings by stage, [(arrival seconds since the end of the question, samples)], audio seconds)."""
    from glm4voice.pipeline.events import AudioChunk, Timing, TurnEnd

    timings, arrivals, end = {}, [], None
    with chat.session(settings) as s:
        t0 = time.perf_counter()
        for ev in s.respond(user_audio=question):
            if isinstance(ev, Timing):
                timings[ev.stage] = ev.seconds
            elif isinstance(ev, AudioChunk):
                arrivals.append((time.perf_counter() - t0, ev.pcm.size))
            elif isinstance(ev, TurnEnd):
                end = ev
    return timings, arrivals, end.audio_seconds if end else 0.0


def stall_seconds(arrivals, rate: int = 22050) -> float:
    """Total time a player starting at the first chunk would wait for audio that has not arrived."""
    if not arrivals:
        return 0.0
    buffered_until, stall = arrivals[0][0], 0.0  # when the audio received so far finishes playing
    for t, n in arrivals:
        if t > buffered_until:
            stall += t - buffered_until
            buffered_until = t
        buffered_until += n / rate
    return stall


def latency_table(args):
    from glm4voice.pipeline.session import ChatSettings

    chat, label = load_chat(args, 1)
    question = QUESTION.read_bytes()
    print(f"model: {label}; device {args.device}, LM {args.dtype}, torch threads {torch.get_num_threads()}")
    print(f"question: {QUESTION.name} (3.06 s of speech); {args.runs} runs per row (median)\n")
    header = f"{'decoder mode':<14}" + "".join(f"{s:>22}" for s in STAGES) + f"{'stall':>10}"
    print(header)
    print("-" * len(header))
    for mode in ("low_latency", "official"):
        settings = ChatSettings(decoder_mode=mode, seed=0)
        one_turn(chat, settings, question)  # warm-up
        rows, stalls = {s: [] for s in STAGES}, []
        for _ in range(args.runs):
            t, arrivals, _ = one_turn(chat, settings, question)
            for s in STAGES:
                if s in t:
                    rows[s].append(t[s])
            stalls.append(stall_seconds(arrivals))
        cells = "".join(f"{statistics.median(rows[s]) * 1000:>19.0f} ms" if rows[s] else f"{'-':>22}"
                        for s in STAGES)
        print(f"{mode:<14}{cells}{statistics.median(stalls):>8.2f} s")


def capacity_table(args):
    from glm4voice.pipeline.session import ChatSettings

    counts = [int(k) for k in args.sessions.split(",")]
    chat, label = load_chat(args, max(counts))
    question = QUESTION.read_bytes()
    settings = ChatSettings(seed=0)
    one_turn(chat, settings, question)  # warm-up
    print(f"\nconcurrent sessions ({label}); each answers the same question at once")
    header = f"{'sessions':>8}{'median TTFA':>14}{'worst TTFA':>13}{'audio/wall':>12}{'worst stall':>13}  real time?"
    print(header)
    print("-" * len(header))
    for k in counts:
        results = [None] * k

        def worker(i, out=results):
            out[i] = one_turn(chat, settings, question)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(k)]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
        ttfa = [r[0].get("time_to_first_audio", float("nan")) for r in results]
        stalls = [stall_seconds(r[1]) for r in results]
        audio = sum(r[2] for r in results)
        ok = max(stalls) < 0.05
        print(f"{k:>8}{statistics.median(ttfa) * 1000:>11.0f} ms{max(ttfa) * 1000:>10.0f} ms"
              f"{audio / wall:>12.2f}{max(stalls):>11.2f} s  {'yes' if ok else 'no'}")


def first_chunk_table(args):
    """Alternating turns with different ``LowLatencySchedule.first_voc_frames`` (the first vocoder call's length):
    on a noisy machine only turns measured side by side compare; the last column is the median of the paired
    differences against the first value."""
    from dataclasses import replace

    from glm4voice.pipeline.session import ChatSettings

    ks = [int(k) for k in args.first_voc_frames.split(",")]
    chat, label = load_chat(args, 1)
    question = QUESTION.read_bytes()
    settings = ChatSettings(seed=0)
    driver = chat.decoders().driver("low_latency")
    base = driver.schedule
    one_turn(chat, settings, question)  # warm-up
    rows = {k: {"time_to_first_audio": [], "speech_decode": [], "lm_first_audio_block": [], "stall": []} for k in ks}
    try:
        for _ in range(args.runs):
            for k in ks:
                driver.schedule = replace(base, first_voc_frames=k)
                t, arrivals, _ = one_turn(chat, settings, question)
                for stage in ("time_to_first_audio", "speech_decode", "lm_first_audio_block"):
                    rows[k][stage].append(t[stage])
                rows[k]["stall"].append(stall_seconds(arrivals))
    finally:
        driver.schedule = base
    print(f"\nfirst vocoder call ({label}); {args.runs} alternating turns per row (median)")
    header = (f"{'first_voc_frames':>16}{'speech_decode':>15}{'LM first block':>16}{'first audio':>13}"
              f"{'worst stall':>13}{'first audio vs ' + str(ks[0]):>22}")
    print(header)
    print("-" * len(header))
    for k in ks:
        r = rows[k]
        paired = statistics.median(a - b for a, b in zip(r["time_to_first_audio"],
                                                          rows[ks[0]]["time_to_first_audio"], strict=True))
        print(f"{k:>16}{statistics.median(r['speech_decode']) * 1000:>12.0f} ms"
              f"{statistics.median(r['lm_first_audio_block']) * 1000:>13.0f} ms"
              f"{statistics.median(r['time_to_first_audio']) * 1000:>10.0f} ms{max(r['stall']):>11.2f} s"
              f"{paired * 1000:>+19.0f} ms")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="folder with tokenizer/, lm/, decoder/ (default: embedded or tiny)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-seq", type=int, default=2048)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--sessions", default="1,2,4", help="concurrent session counts to try")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (on a shared, oversubscribed machine 1 avoids OpenMP spin-wait "
                        "thrash that made the decoder 50-100x slower in our runs)")
    p.add_argument("--first-voc-frames", default="",
                   help="compare first vocoder call lengths in alternating turns instead, e.g. 0,16 (0: whole block)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.first_voc_frames:
        first_chunk_table(args)
        return
    latency_table(args)
    capacity_table(args)


if __name__ == "__main__":
    main()
