"""Generate one answer with the language model and print it routed into text and speech codes.

    glm4voice generate --lm PATH_OR_ID (--text "question" | --audio-tokens FILE) [--temperature 0.2 --top-p 0.8
        --top-k 50 --seed N --max-new-tokens 2000 --language en --quantize int8 --device cpu --dtype auto]
        [--codes-out codes.txt] [--ids]

The answer's text streams to stdout as it is generated; the speech codes (one line, space-separated) follow on a
line starting with ``audio:`` (or go to --codes-out, which ``glm4voice synthesize`` reads); a summary goes to
stderr. The text tokenizer is read from the LM folder (the release keeps tokenizer.model there).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from glm4voice.cli import add_threads_arg


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lm", default=None, help="LM folder, 'official', a hub id (default: embedded)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the user's question as text")
    src.add_argument("--audio-tokens", help="the user's question as speech codes (file: ints or JSON list)")
    parser.add_argument("--system", default=None, help="system prompt (default: the official one for the input)")
    parser.add_argument("--temperature", type=float, default=0.2, help="0 = greedy (default 0.2, official demo)")
    parser.add_argument("--top-p", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=2000)
    parser.add_argument("--max-seq", type=int, default=None, help="KV cache length (default: prompt + new tokens)")
    parser.add_argument("--language", choices=["en", "zh"], default=None, help="language lock of the text tokens")
    parser.add_argument("--free-start", action="store_true",
                        help="let the answer start with a speech code (by default a first draw that is a speech "
                             "code is drawn again among the other ids: answers open with text)")
    parser.add_argument("--quantize", choices=["int8"], default=None, help="int8 weight-only quantisation")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps ...")
    add_threads_arg(parser)
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="auto: the checkpoint's torch_dtype (bfloat16 for the release: 19 GB; float32 would "
                             "need 38 GB)")
    parser.add_argument("--codes-out", default=None, help="write the speech codes to this file instead of stdout")
    parser.add_argument("--ids", action="store_true", help="also print the generated token ids")


def pick_dtype(name: str, config_dtype: str):
    import torch

    return getattr(torch, config_dtype if name == "auto" else name)


def generate_answer(*, lm=None, text: str | None = None, audio: list[int] | None = None, system: str | None = None,
                    temperature: float = 0.2, top_p: float = 0.8, top_k: int = 50, seed: int | None = None,
                    max_new_tokens: int = 2000, max_seq: int | None = None, language: str | None = None,
                    quantize: str | None = None, device: str = "cpu", dtype: str = "auto", on_text=None,
                    progress: bool = False, text_first: bool = True):
    """Run one turn; returns (text, codes, ids, stop event). ``on_text(piece)`` is called as text arrives."""
    from glm4voice.checkpoints import resolve
    from glm4voice.lm import prompt
    from glm4voice.lm.config import GLMConfig
    from glm4voice.lm.generate import Generator
    from glm4voice.lm.load import load_lm
    from glm4voice.lm.routing import AudioCode, Stop, TextPiece, route_stream
    from glm4voice.lm.sampling import SamplingParams, language_mask, no_audio_mask
    from glm4voice.lm.text_tokenizer import TextTokenizer

    folder = resolve(lm, "lm")
    tok = TextTokenizer.from_dir(folder)
    cfg = GLMConfig.from_json(folder)
    model = load_lm(folder, device=device, dtype=pick_dtype(dtype, cfg.torch_dtype), quantize=quantize,
                    progress=progress)
    ids = prompt.build_turn(tok, text=text, audio=audio, system=system)
    gen = Generator(model, 1, min(max_seq or len(ids) + max_new_tokens, cfg.seq_length))
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    allowed = language_mask(tok, language, cfg.padded_vocab_size, device) if language else None
    first = no_audio_mask(tok, cfg.padded_vocab_size, device) if text_first else None
    out_ids: list[int] = []

    def tee():
        for i in gen.generate(ids, params=params, max_new_tokens=max_new_tokens, stop_ids=tok.stop_ids,
                              allowed=allowed, first=first):
            out_ids.append(i)
            yield i

    pieces, codes, stop = [], [], None
    for event in route_stream(tok, tee()):
        if isinstance(event, TextPiece | Stop) and event.text:
            pieces.append(event.text)
            if on_text:
                on_text(event.text)
        if isinstance(event, AudioCode):
            codes.append(event.code)
        if isinstance(event, Stop):
            stop = event
    return "".join(pieces), codes, out_ids, stop


def run(args: argparse.Namespace) -> int:
    audio = None
    if args.audio_tokens:
        from glm4voice.cli.synthesize import read_codes

        audio = read_codes(args.audio_tokens)
    t0 = time.perf_counter()
    text, codes, ids, stop = generate_answer(
        lm=args.lm, text=args.text, audio=audio, system=args.system, temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k, seed=args.seed, max_new_tokens=args.max_new_tokens,
        max_seq=args.max_seq, language=args.language, quantize=args.quantize, device=args.device, dtype=args.dtype,
        on_text=lambda piece: print(piece, end="", flush=True), progress=True, text_first=not args.free_start)
    print()
    line = " ".join(map(str, codes))
    if args.codes_out:
        Path(args.codes_out).write_text(line + "\n")
    else:
        print(f"audio: {line}")
    if args.ids:
        print(f"ids: {' '.join(map(str, ids))}")
    dt = time.perf_counter() - t0
    print(f"[{len(ids)} tokens: {len(text)} characters of text, {len(codes)} speech codes; stop: {stop.reason}"
          f"{'' if stop.id is None else f' (id {stop.id})'}; {dt:.1f} s incl. loading]", file=sys.stderr)
    return 0
