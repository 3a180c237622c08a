"""Encode speech into 12.5 Hz speech-token codes with the speech tokenizer.

    glm4voice encode AUDIO... [--tokenizer PATH_OR_ID] [--json] [-o FILE] [--device cpu] [--dtype float32]

Inputs are wav/flac/ogg/mp3 files at any rate (resampled to 16 kHz; channel 0 kept as the official code, or
--channel). Output: with one input, its codes separated by spaces; with several, one line per input,
``PATH<TAB>codes``; with --json, ``{"PATH": [codes], ...}`` (the format ``glm4voice synthesize`` reads).

Batching: all inputs are batched together, up to --batch-size 30 s chunks per forward, exactly as the official
``extract_speech_token`` called with the list of files (--per-file: one call per file, as called with one file;
the codes are the same except for float rounding on a knife edge). --sort groups chunks of similar length,
much faster for many files of mixed length. fp32 is the parity reference; bf16/fp16 are for GPUs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from glm4voice.cli import add_threads_arg

DTYPES = ("float32", "bfloat16", "float16")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", nargs="*", help="audio files (wav, flac, ogg, mp3)")
    parser.add_argument("--list", dest="list_file", default=None,
                        help="text file with one audio path per line (for many files), added after AUDIO")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer folder, 'official', or a hub id (default: the embedded model)")
    parser.add_argument("--json", action="store_true", help='write {"PATH": [codes], ...}')
    parser.add_argument("-o", "--output", default=None, help="write the codes here instead of standard output")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    add_threads_arg(parser)
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (fp32 = parity reference)")
    parser.add_argument("--per-file", action="store_true", help="one forward per file (official single-file call)")
    parser.add_argument("--batch-size", type=int, default=128, help="30 s chunks per forward (official: 128)")
    parser.add_argument("--sort", action="store_true", help="batch chunks of similar length (faster, many files)")
    parser.add_argument("--channel", default="0", help="channel index to keep (official: 0) or 'mix'")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="refuse longer inputs (default 600; 0 = no limit)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="report unreadable inputs and go on (exit status 1) instead of stopping")


def read_inputs(audio: list[str], list_file: str | None) -> list[str]:
    from glm4voice.errors import AudioError

    paths = list(audio)
    if list_file is not None:
        try:
            lines = Path(list_file).read_text().splitlines()
        except OSError as e:
            raise AudioError(f"cannot read the list file {list_file}: {e}") from e
        paths += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not paths:
        raise AudioError("no audio given: pass files or --list FILE")
    return paths


def format_codes(paths: list[str], codes: list[list[int] | None], as_json: bool) -> str:
    if as_json:
        return json.dumps(dict(zip(paths, codes, strict=True))) + "\n"
    if len(paths) == 1:
        return " ".join(map(str, codes[0] or [])) + "\n"
    return "".join(f"{p}\t{' '.join(map(str, c))}\n" for p, c in zip(paths, codes, strict=True) if c is not None)


def run(args: argparse.Namespace) -> int:
    import torch

    from glm4voice.audio import MAX_AUDIO_SECONDS
    from glm4voice.constants import TOKEN_RATE_HZ
    from glm4voice.errors import AudioError
    from glm4voice.tokenizer import SpeechTokenizer

    paths = read_inputs(args.audio, args.list_file)
    channel = args.channel if args.channel == "mix" else _int(args.channel)
    if args.batch_size < 1:
        raise AudioError(f"--batch-size must be >= 1, got {args.batch_size}")
    max_seconds = MAX_AUDIO_SECONDS if args.max_seconds is None else (args.max_seconds or None)
    tok = SpeechTokenizer.from_pretrained(args.tokenizer, device=args.device, dtype=getattr(torch, args.dtype),
                                          max_seconds=max_seconds)
    start = time.perf_counter()
    codes = tok.encode(paths, batched=not args.per_file, batch_size=args.batch_size, sort=args.sort,
                       channel=channel, errors=_report if args.skip_bad else "raise",
                       progress=len(paths) > 1 and sys.stderr.isatty())
    elapsed = time.perf_counter() - start
    text = format_codes(paths, codes, args.json)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()  # codes before the summary line on a terminal
    done = [c for c in codes if c is not None]
    n_codes = sum(map(len, done))
    print(f"encoded {len(done)}/{len(paths)} input(s): {n_codes} codes (~{n_codes / TOKEN_RATE_HZ:.1f} s of speech) "
          f"in {elapsed:.2f} s" + (f", wrote {args.output}" if args.output else ""), file=sys.stderr)
    return 0 if len(done) == len(paths) else 1


def _report(index: int, error: Exception) -> None:
    print(f"glm4voice encode: skipped: {error}", file=sys.stderr)


def _int(text: str) -> int:
    from glm4voice.errors import AudioError

    try:
        return int(text)
    except ValueError:
        raise AudioError(f"--channel must be an index (0, 1, ...) or 'mix', got {text!r}") from None
