"""Talk to the model: one question (spoken or typed) or an interactive multi-turn conversation.

    glm4voice chat --audio question.wav -o answer.wav [--timings]
    glm4voice chat --text "What is the capital of France?" -o answer.wav
    glm4voice chat                                 # interactive: type text, or @file.wav to speak a file

Defaults to the embedded model; ``--model`` takes a folder with tokenizer/, lm/, decoder/ (or 'official'), and
``--tokenizer/--lm/--decoder`` override single components. ``--lm-url`` uses an LM served elsewhere.
"""

from __future__ import annotations

import argparse
import sys

from glm4voice.cli import add_threads_arg

TIMING_ORDER = ("tokenize", "lm_prefill", "lm_first_audio_block", "speech_decode", "time_to_first_audio",
                "time_to_first_text", "total")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Model, device and sampling options shared by ``chat`` and ``serve``."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=None, help="folder with tokenizer/, lm/, decoder/; 'official'; default: embedded")
    g.add_argument("--tokenizer", default=None, help="speech tokenizer folder / 'official' / hub id")
    g.add_argument("--lm", default=None, help="LM folder / 'official' / hub id (with --lm-url: its tokenizer files)")
    g.add_argument("--decoder", default=None, help="speech decoder folder / 'official' / hub id")
    g.add_argument("--lm-url", default=None, help="use the LM of another server (POST URL/v1/completions)")
    g.add_argument("--lm-api-key", default=None, help="API key of the --lm-url server")
    g.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, mps)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="LM dtype")
    g.add_argument("--max-seq", type=int, default=None, help="context length (tokens) of the KV cache")
    g.add_argument("--flow-steps", type=int, default=None,
                   help="Euler steps of the decoder's flow (default: the decoder's config; official 10, embedded 4)")
    g.add_argument("--lm-ahead", action="store_true",
                   help="run the LM in its own thread, ahead of the speech decoder (overlaps them on a multi-core "
                        "CPU; benchmarks/run_ahead.py)")
    add_threads_arg(g)


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("answer")
    g.add_argument("--temperature", type=float, default=0.2)
    g.add_argument("--top-p", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--max-new-tokens", type=int, default=2000)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--language", choices=["en", "zh"], default=None, help="lock the answer's text to a language")
    g.add_argument("--instruction", default="", help='extra style instruction, e.g. "Speak slowly."')
    g.add_argument("--text-only", action="store_true", help="answer in text only (no speech decoding)")
    g.add_argument("--decoder-mode", choices=["low_latency", "official"], default="low_latency",
                   help="streaming decoder schedule")


def register(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--audio", help="spoken question (wav/flac/ogg/mp3)")
    src.add_argument("--text", help="typed question")
    parser.add_argument("-o", "--output", help="answer audio (WAV, 22,050 Hz); interactive: NAME_1.wav, NAME_2.wav…")
    parser.add_argument("--timings", action="store_true", help="print the latency breakdown of each answer")
    add_model_args(parser)
    add_sampling_args(parser)


def load_chat(args, *, max_sessions: int = 1, speech: bool = True):
    import torch

    from glm4voice.pipeline.voice_chat import VoiceChat

    return VoiceChat.from_pretrained(model=args.model, tokenizer=args.tokenizer, lm=args.lm, decoder=args.decoder,
                                     lm_url=args.lm_url, lm_api_key=args.lm_api_key, device=args.device,
                                     dtype=getattr(torch, args.dtype), max_sessions=max_sessions,
                                     max_seq=args.max_seq, speech=speech, flow_steps=args.flow_steps,
                                     run_ahead=args.lm_ahead)


def settings_from(args):
    from glm4voice.pipeline.session import ChatSettings

    return ChatSettings(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                        max_new_tokens=args.max_new_tokens, seed=args.seed, language=args.language,
                        instruction=args.instruction, output="text" if args.text_only else "audio",
                        decoder_mode=args.decoder_mode)


def run(args) -> int:
    settings = settings_from(args)
    chat = load_chat(args)
    with chat.session(settings) as session:
        if args.audio or args.text:
            return _one_turn(session, args, audio=args.audio, text=args.text, output=args.output)
        return _interactive(session, args)


def _one_turn(session, args, *, audio=None, text=None, output=None) -> int:
    from glm4voice.pipeline.events import AudioChunk, ErrorEvent, TextDelta, Timing, TurnEnd

    pcm, timings, end = [], {}, None
    events = session.respond(user_audio=audio) if audio else session.respond(user_text=text)
    try:
        for ev in events:
            if isinstance(ev, TextDelta):
                print(ev.text, end="", flush=True)
            elif isinstance(ev, AudioChunk):
                pcm.append(ev.pcm)
            elif isinstance(ev, Timing):
                timings[ev.stage] = ev.seconds
            elif isinstance(ev, ErrorEvent):
                print(f"\nerror: {ev.message}", file=sys.stderr)
            elif isinstance(ev, TurnEnd):
                end = ev
    except KeyboardInterrupt:
        session.cancel()
        events.close()
        print("\n[stopped]")
    print()
    if output and pcm:
        _write_wav(output, pcm)
        print(f"[audio: {sum(len(p) for p in pcm) / 22050:.2f} s -> {output}]", file=sys.stderr)
    elif output:
        print("[no audio in this answer]", file=sys.stderr)
    if args.timings:
        print(format_timings(timings, end), file=sys.stderr)
        if getattr(args, "thread_choice", None) is not None:
            print(f"  threads: {args.thread_choice.reason}", file=sys.stderr)
    return 0 if end is not None and end.reason != "error" else 1


def _interactive(session, args) -> int:
    print("glm4voice chat. Type a message, @path.wav to speak a file, /reset, /quit.", file=sys.stderr)
    n = 0
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            session.reset()
            print("[new conversation]", file=sys.stderr)
            continue
        n += 1
        output = None
        if args.output:
            stem, dot, ext = args.output.rpartition(".")
            output = f"{stem}_{n}.{ext}" if dot else f"{args.output}_{n}.wav"
        print("glm> ", end="", flush=True)
        from glm4voice.errors import Glm4VoiceError

        try:
            if line.startswith("@"):
                _one_turn(session, args, audio=line[1:].strip(), output=output)
            else:
                _one_turn(session, args, text=line, output=output)
        except Glm4VoiceError as e:
            print(f"\nerror: {e}", file=sys.stderr)


def _write_wav(path: str, chunks) -> None:
    import numpy as np
    import soundfile as sf

    sf.write(path, np.concatenate(chunks), 22050, subtype="PCM_16")


def format_timings(t: dict, end=None) -> str:
    rows = [f"  {name:<22} {t[name] * 1000:9.1f} ms" for name in TIMING_ORDER if name in t]
    tail = f"  ({end.tokens} tokens, {end.audio_seconds:.2f} s of audio, ended: {end.reason})" if end else ""
    return "latency:\n" + "\n".join(rows) + ("\n" + tail if tail else "")
