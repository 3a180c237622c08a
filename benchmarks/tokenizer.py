"""Speech tokenizer performance: end-of-speech latency (paper latency stage 1) and batch-encoding throughput.

    python benchmarks/tokenizer.py                          # tiny + full size, CPU, 3 s and 10 s utterances
    python benchmarks/tokenizer.py --sizes full --layers 4  # fewer encoder layers where time or memory is short
    python benchmarks/tokenizer.py --device cuda --sizes full --batch-files 64
    python benchmarks/tokenizer.py --threads 1               # a CPU shared with other jobs

End-of-speech latency = compute time from the last audio sample to the last code of the utterance:
- offline: the whole utterance is tokenized at end of speech (what the official web demo does);
- stream: the audio was fed in --step-ms pieces while the user spoke; at end of speech ``finish`` runs only the
  unfinished attention block (<= 4 s of audio at full size), unless the per-chunk log-mel floor (max - 8) rose
  since the cached blocks ran, which forces a recompute of the chunk so far. "typical" feeds the utterance with
  0.5 s of trailing silence (an endpointer needs some), so a late floor rise is absorbed by the eager refresh
  during that silence; "worst" ends on the loudest frame, so the whole chunk is recomputed at the end.
The columns also give the compute spent during speech (sum of all ``step`` calls) and the slowest single step.

Weights are random (timing only; the tiny size loads the reference checkpoint when it is found). Inputs are the
reference speech files when found, else a synthetic signal. Timings on a shared machine are noisy: compare
numbers within one run.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from glm4voice.audio import load_audio
from glm4voice.constants import TOKEN_HOP_SAMPLES
from glm4voice.constants import TOKENIZER_SAMPLE_RATE as SR
from glm4voice.tokenizer import SpeechTokenizer, TokenizerConfig, WhisperVQEncoder

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "tokenizer"
TRAILING_SILENCE_S = 0.5


def build(size: str, device: str, layers: int | None) -> SpeechTokenizer:
    if size == "tiny" and (REFERENCE / "config.json").is_file() and layers is None:
        return SpeechTokenizer.from_pretrained(REFERENCE, device=device)
    if size == "tiny":
        cfg = TokenizerConfig(d_model=64, encoder_attention_heads=4, encoder_ffn_dim=256, encoder_layers=4,
                              quantize_position=2, pooling_position=2, quantize_vocab_size=256,
                              quantize_causal_block_size=20)
    else:
        cfg = TokenizerConfig()  # the released shape: d 1280, 16 layers before the VQ, 16384 codes, block 200
    if layers is not None:
        cfg = TokenizerConfig(**{**cfg.__dict__, "quantize_position": layers, "pooling_position": layers})
    torch.manual_seed(0)
    with torch.device("meta"):
        model = WhisperVQEncoder(cfg)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]) if p.dim() > 1 else 0.02)
    return SpeechTokenizer(model.eval().requires_grad_(False), max_seconds=None)


def speech(seconds: float) -> torch.Tensor:
    """``seconds`` of speech: the reference recordings end to end, else a modulated tone with noise."""
    files = sorted((REFERENCE / "inputs").glob("*.wav")) if REFERENCE.is_dir() else []
    if files:
        wav = torch.cat([load_audio(f) for f in files])
    else:
        t = torch.arange(int(40 * SR)) / SR
        g = torch.Generator().manual_seed(0)
        wav = 0.3 * torch.sin(2 * math.pi * 180 * t) * (1 + torch.sin(2 * math.pi * 3 * t)) + \
            0.02 * torch.randn(t.shape, generator=g)
    return wav[: int(seconds * SR)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(tok: SpeechTokenizer, fn):
    sync(tok.device)
    t = time.perf_counter()
    out = fn()
    sync(tok.device)
    return out, time.perf_counter() - t


def stream_latency(tok: SpeechTokenizer, wav: torch.Tensor, step: int) -> dict:
    """Feed ``wav`` in ``step``-sample pieces, then time ``finish``; count the positions computed at the end."""
    state = tok.init_state()
    step_times = []
    for i in range(0, wav.shape[0], step):
        _, dt = timed(tok, lambda i=i: tok.step(wav[i: i + step], state))
        step_times.append(dt)
    positions = []
    run_layers = tok.model.run_layers
    tok.model.run_layers = lambda x, *a, **k: positions.append(x.shape[1]) or run_layers(x, *a, **k)
    recomputes = state.recomputes
    try:
        _, finish = timed(tok, lambda: tok.finish(state))
    finally:
        del tok.model.run_layers
    return {"finish": finish, "during": sum(step_times), "max_step": max(step_times),
            "positions": sum(positions), "recomputed": state.recomputes > recomputes}


def latency_rows(tok: SpeechTokenizer, size: str, seconds: float, step_ms: float, repeat: int) -> list[tuple]:
    step = int(step_ms * SR / 1000)
    voice = speech(seconds)
    typical = torch.cat([voice, torch.zeros(int(TRAILING_SILENCE_S * SR))])
    burst = 0.9 * torch.sin(torch.arange(int(0.1 * SR)) * 0.7)  # the loudest frame arrives last
    worst = torch.cat([voice, burst])
    rows = []
    for name, wav in (("typical", typical), ("worst", worst)):
        offline = min(timed(tok, lambda w=wav: tok.encode([w], batched=False))[1] for _ in range(repeat))
        runs = [stream_latency(tok, wav, step) for _ in range(repeat)]
        best = min(runs, key=lambda r: r["finish"])
        positions_total = math.ceil(wav.shape[0] / TOKEN_HOP_SAMPLES) * tok.cfg.pooling_kernel_size  # padded
        rows.append((size, f"{seconds:g} s", name, f"{offline * 1000:.0f}", f"{best['finish'] * 1000:.0f}",
                     f"{best['positions']}/{positions_total}", "yes" if best["recomputed"] else "no",
                     f"{best['during']:.2f}", f"{best['max_step'] * 1000:.0f}"))
    return rows


def throughput_rows(tok: SpeechTokenizer, size: str, n_files: int, batch_size: int) -> list[tuple]:
    """Many utterances of mixed length (1.5..12 s): official list batching, per-file calls, length-sorted pools."""
    g = torch.Generator().manual_seed(1)
    lengths = (1.5 + 10.5 * torch.rand(n_files, generator=g)).tolist()
    source = speech(40.0)
    wavs = [source[: int(s * SR)] for s in lengths]
    audio_s = sum(lengths)
    rows = []
    for mode, kw in (("list (official)", {}), ("per-file", {"batched": False}), ("sorted", {"sort": True})):
        _, dt = timed(tok, lambda kw=kw: tok.encode(wavs, batch_size=batch_size, **kw))
        rows.append((size, mode, str(n_files), f"{audio_s:.0f}", str(batch_size), f"{dt:.2f}", f"{audio_s / dt:.1f}"))
    return rows


def table(header: tuple, rows: list[tuple]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda r: "| " + " | ".join(str(x).rjust(w) for x, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,full")
    ap.add_argument("--lengths", default="3,10", help="utterance lengths in seconds")
    ap.add_argument("--layers", type=int, default=None, help="encoder layers to build (default: the config's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (on a loaded machine 1 avoids waiting for descheduled OpenMP threads)")
    ap.add_argument("--step-ms", type=float, default=80.0, help="audio per streaming step")
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement (the best is reported)")
    ap.add_argument("--batch-files", type=int, default=16, help="utterances in the throughput test (0: skip)")
    ap.add_argument("--batch-size", type=int, default=8, help="30 s chunks per forward in the throughput test")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"step {args.step_ms:g} ms, layers {args.layers or 'as configured'}")
    lat, thr = [], []
    for size in args.sizes.split(","):
        t = time.perf_counter()
        tok = build(size, args.device, args.layers)
        n_params = sum(p.numel() for p in tok.model.parameters())
        tok.encode([speech(1.0)])  # warm-up: first-call allocations and kernel selection
        print(f"{size}: {n_params / 1e6:.1f} M parameters, {len(tok.model.layers)} layers, "
              f"block {tok.cfg.quantize_causal_block_size} positions, built in {time.perf_counter() - t:.1f} s",
              flush=True)
        for seconds in map(float, args.lengths.split(",")):
            lat += latency_rows(tok, size, seconds, args.step_ms, args.repeat)
            print(table(LAT_HEADER, lat[-2:]), flush=True)
        if args.batch_files:
            thr += throughput_rows(tok, size, args.batch_files, args.batch_size)
        del tok
    print("\nEnd-of-speech tokenization latency (ms; paper latency stage 1)")
    print(table(LAT_HEADER, lat))
    if thr:
        print("\nBatch encoding throughput (audio seconds per compute second)")
        print(table(("size", "batching", "files", "audio s", "batch", "compute s", "audio s/s"), thr))


LAT_HEADER = ("size", "utterance", "ending", "offline ms", "stream finish ms", "positions at end", "recompute",
              "during speech s", "max step ms")

if __name__ == "__main__":
    main()
