"""Synthesise speech from speech-token codes with the speech decoder (offline or streaming).

    glm4voice synthesize TOKENS_FILE -o out.wav [--decoder PATH_OR_ID] [--stream] [--mode official|low_latency]

TOKENS_FILE holds whitespace-separated integer codes, or the JSON that ``glm4voice encode --json`` writes:
a list of codes, or {"file name": [codes], ...} (choose an entry with --key when there are several).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from glm4voice.cli import add_threads_arg


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tokens_file", help="codes: whitespace-separated ints, a JSON list, or {name: [codes]}")
    parser.add_argument("-o", "--output", required=True, help="output WAV (22,050 Hz, float32 PCM written as 16-bit)")
    parser.add_argument("--decoder", default=None, help="decoder folder, 'official', a hub id (default: embedded)")
    parser.add_argument("--flow-steps", type=int, default=None,
                        help="Euler steps of the flow (default: the decoder's config; official 10, embedded 4)")
    parser.add_argument("--key", default=None, help="entry of a {name: [codes]} JSON file")
    parser.add_argument("--stream", action="store_true", help="synthesise block by block as a live stream would")
    parser.add_argument("--mode", choices=["official", "low_latency"], default="low_latency",
                        help="streaming schedule (with --stream)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    add_threads_arg(parser)


def read_codes(path: str | Path, key: str | None = None) -> list[int]:
    """Parse a tokens file (see module doc); raises TokenError with what is wrong."""
    from glm4voice.errors import TokenError

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise TokenError(f"cannot read tokens file {path}: {e}") from e
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise TokenError(f"{path}: invalid JSON ({e})") from e
        if isinstance(data, dict):
            if key is None and len(data) != 1:
                raise TokenError(f"{path} holds {len(data)} entries ({', '.join(list(data)[:5])}); pick one with --key")
            if key is not None and key not in data:
                raise TokenError(f"{path} has no entry {key!r}")
            data = data[key] if key is not None else next(iter(data.values()))
        if not isinstance(data, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in data):
            raise TokenError(f"{path}: expected a list of integer codes")
        return data
    try:
        return [int(tok) for tok in stripped.split()]
    except ValueError as e:
        raise TokenError(f"{path}: expected whitespace-separated integer codes ({e})") from e


def synthesize(codes: list[int], *, decoder=None, stream: bool = False, mode: str = "low_latency",
               device: str = "cpu", flow_steps: int | None = None):
    """Return float32 PCM (n,) at the decoder's sample rate."""
    import torch

    from glm4voice.decoder import SpeechDecoder
    from glm4voice.decoder.stream import StreamingDecoder

    dec = SpeechDecoder.from_pretrained(decoder, device=device, flow_steps=flow_steps)
    dec.codes_tensor(codes)  # empty / out-of-codebook codes fail before any work
    if not stream:
        return dec.decode(codes), dec.sample_rate
    sd = StreamingDecoder(dec, mode)
    state, chunks = sd.init_state(), []
    for code in codes:  # one code at a time, as the LM produces them
        pcm, state = sd.step([code], state)
        chunks.append(pcm)
    chunks.append(sd.finish(state))
    return torch.cat(chunks), dec.sample_rate


def run(args: argparse.Namespace) -> int:
    import soundfile as sf

    codes = read_codes(args.tokens_file, args.key)
    pcm, sr = synthesize(codes, decoder=args.decoder, stream=args.stream, mode=args.mode, device=args.device,
                         flow_steps=args.flow_steps)
    sf.write(args.output, pcm.cpu().numpy(), sr)
    print(f"wrote {args.output}: {pcm.numel() / sr:.2f} s at {sr} Hz from {len(codes)} codes")
    return 0
