"""Speech decoder performance: RTF offline / streaming, time to first audio, growth with length, schedule choice.

    python benchmarks/decoder.py                       # tiny size, CPU, default lengths
    python benchmarks/decoder.py --sizes full --device cuda --lengths 50,100,200,400
    python benchmarks/decoder.py --schedules           # low-latency schedule variants (seams, deviation, FLOPs)
    python benchmarks/decoder.py --streams 1,2,4       # several streams: separate steps vs step_many
    python benchmarks/decoder.py --sizes "" --flow-steps 10,6,4   # the embedded decoder with fewer flow steps

Weights are random (timing only; the tiny size loads the reference checkpoint when it is found, so the seam and
deviation numbers come from a fixed model). Timings on a shared machine are noisy: compare ratios within one run.
RTF = compute seconds / audio seconds (< 1 is faster than real time). "first audio" is the compute time from the
arrival of the token that completes the first block to the first PCM chunk; the tokens needed before that are
listed separately (25 for the official schedule, 10 for low latency; at 12.5 tokens/s of LM output that is 2.0 s
vs 0.8 s of generation).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from glm4voice.decoder import DecoderConfig, SpeechDecoder
from glm4voice.decoder.model import frame_noise
from glm4voice.decoder.stream import LowLatencySchedule, StreamingDecoder, seam_jumps

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "decoder"


def build(size: str, device: str) -> SpeechDecoder:
    if size == "tiny" and (REFERENCE / "config.yaml").is_file():
        return SpeechDecoder.from_pretrained(REFERENCE, device=device)
    cfg = DecoderConfig.small(vocab_size=256) if size == "tiny" else DecoderConfig()
    return SpeechDecoder.from_config(cfg, device=device, seed=0)


def sync(dec: SpeechDecoder) -> None:
    if dec.device.type == "cuda":
        torch.cuda.synchronize()


def timed(dec, fn):
    sync(dec)
    t = time.perf_counter()
    out = fn()
    sync(dec)
    return time.perf_counter() - t, out


def codes(n: int, vocab: int) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(n)).tolist()


def stream(dec, mode, toks, schedule=None):
    """Feed one code at a time; returns (total compute s, first-chunk compute s, chunks, state)."""
    sd = StreamingDecoder(dec, mode, schedule=schedule)
    state, chunks, total, first = sd.init_state(trace=True), [], 0.0, None
    for c in toks:
        dt, (pcm, state) = timed(dec, lambda c=c, state=state: sd.step([c], state))
        total += dt
        if pcm.numel():
            chunks.append(pcm)
            first = dt if first is None else first
    dt, pcm = timed(dec, lambda: sd.finish(state))
    chunks.append(pcm)
    return total + dt, (first if first is not None else total + dt), chunks, state


def table(title, header, rows):
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in r) + " |")


def bench_size(size: str, device: str, lengths: list[int]) -> None:
    dec = build(size, device)
    vocab, sr = dec.cfg.flow.vocab_size, dec.sample_rate
    dec.decode(codes(10, vocab))  # warm-up
    rows = []
    for n in lengths:
        toks = codes(n, vocab)
        audio = dec.frames(n) * dec.samples_per_frame() / sr
        t_off, _ = timed(dec, lambda toks=toks: dec.decode(toks))
        dec.cfg_batched = False
        t_seq, _ = timed(dec, lambda toks=toks: dec.decode(toks))
        dec.cfg_batched = True
        t_off_s, first_off, _, _ = stream(dec, "official", toks)
        t_ll, first_ll, _, _ = stream(dec, "low_latency", toks)
        rows.append([n, audio, t_off / audio, t_seq / t_off, t_off_s / audio, t_ll / audio, first_off, first_ll,
                     t_off_s / t_off, t_ll / t_off])
    table(f"{size} size on {device} (threads {torch.get_num_threads()})",
          ["tokens", "audio s", "RTF offline", "CFG seq/batched", "RTF official stream", "RTF low-latency",
           "first chunk s official (25 tok)", "first chunk s low-lat (10 tok)", "official stream / offline",
           "low-lat / offline"], rows)


class WorkCounter:
    """Records every flow call (tokens T, total frames F, batch) and vocoder call (frames, batch) of a run."""

    def __init__(self, dec: SpeechDecoder):
        self.flow_calls: list[tuple[int, int, int]] = []
        self.voc_calls: list[tuple[int, int]] = []
        flow_batch, hift_decode = dec.flow_mel_batch, dec.hift.decode

        def counted_flow(tokens, prompt, gens, frames=None, trace=None, z=None):
            f = dec.frames(tokens.shape[1]) if frames is None else frames
            self.flow_calls.append((tokens.shape[1], f, tokens.shape[0]))
            return flow_batch(tokens, prompt, gens, frames, trace, z)

        def counted_hift(mel, s):
            self.voc_calls.append((mel.shape[-1], mel.shape[0]))
            return hift_decode(mel, s)

        dec.flow_mel_batch, dec.hift.decode = counted_flow, counted_hift

    @property
    def flow_frames(self) -> int:
        return sum(f * b for _, f, b in self.flow_calls)

    @property
    def voc_frames(self) -> int:
        return sum(f * b for f, b in self.voc_calls)


class FullSizeFlops:
    """FLOPs of the released-size flow and HiFT for given shapes, counted with torch's FlopCounterMode on the meta
    device (no weights, no machine noise); cached per shape."""

    def __init__(self):
        from glm4voice.decoder.load import build_meta
        self.cfg = DecoderConfig()
        self.flow, self.hift = build_meta(self.cfg)
        self._cache: dict[tuple, int] = {}

    def _count(self, key, fn) -> int:
        from torch.utils.flop_counter import FlopCounterMode
        if key not in self._cache:
            with FlopCounterMode(display=False) as fc:
                try:
                    fn()
                except NotImplementedError:  # istft has no meta kernel; it is last and costs ~nothing
                    pass
            self._cache[key] = fc.get_total_flops()
        return self._cache[key]

    def flow_call(self, t: int, f: int) -> int:
        """Encoder on t tokens + regulator to f frames + n_timesteps x 2 CFG passes of the U-Net on f frames."""
        m, fl = "meta", self.flow

        def front():
            fl.length_regulator(fl.encode(torch.zeros(1, t, dtype=torch.long, device=m)), f)

        def est():
            x = torch.zeros(1, 80, f, device=m)
            fl.decoder.estimator(x, torch.ones(1, 1, f, device=m), x, torch.zeros((), device=m),
                                 torch.zeros(1, 80, device=m), x)
        steps = 2 * self.cfg.flow.cfm.n_timesteps
        return self._count(("front", t, f), front) + steps * self._count(("est", f), est)

    def voc_call(self, f: int) -> int:
        def run():
            mel = torch.zeros(1, 80, f, device="meta")
            self.hift.f0_predictor(mel)
            self.hift.decode(mel, torch.zeros(1, 1, f * self.cfg.hift.upsample_factor, device="meta"))
        return self._count(("voc", f), run)

    def of(self, work: WorkCounter) -> float:
        """GFLOP of all calls a run recorded."""
        flops = sum(b * self.flow_call(t, f) for t, f, b in work.flow_calls)
        return (flops + sum(b * self.voc_call(f) for f, b in work.voc_calls)) / 1e9


PREVIOUS = LowLatencySchedule(blocks=(10, 10, 20), voc_holdback=2, normalized_fade=False)  # commit 0806881


def per_block_noise(start: int, stop: int, channels: int = 80) -> torch.Tensor:
    """The previous low-latency noise: every block window drew fresh noise from a generator seeded 42."""
    from glm4voice.decoder.model import new_generator
    return torch.randn(1, channels, stop - start, generator=new_generator())


def mel_seams(mel: torch.Tensor, ref: torch.Tensor, bounds: list[int], width: int) -> tuple[float, float]:
    """RMS deviation of the streamed mel from the offline mel within ±width frames of block joins, and elsewhere."""
    near = torch.zeros(mel.shape[-1], dtype=torch.bool)
    for b in bounds:
        near[max(0, b - width): b + width] = True
    d = (mel - ref)[0].pow(2).mean(0)
    return d[near].mean().sqrt().item(), d[~near].mean().sqrt().item()


def bench_schedules(device: str, n: int) -> None:
    """Deterministic comparison on the tiny reference model: first audio, work (frames through flow / vocoder, and
    the GFLOP the same calls cost at the released size), seams, and the mel deviation from an offline decode that
    uses the same frame-anchored noise (overall, and near block joins)."""
    import json

    from glm4voice.decoder import stream as stream_mod
    dec = build("tiny", device)
    toks = codes(n, dec.cfg.flow.vocab_size)
    if (REFERENCE / "config.yaml").is_file():
        toks = json.loads((REFERENCE / "expected.json").read_text())["web_demo_streaming"]["tokens"][:n]
    t = dec.codes_tensor(toks)
    f_total = dec.frames(n)
    offline_mel = dec.flow_mel_batch(t, None, [], z=frame_noise(0, f_total))
    flops = FullSizeFlops()
    offline_work = WorkCounter(dec)
    dec.decode(toks)
    del dec.flow_mel_batch, dec.hift.decode
    offline_gflop = flops.of(offline_work)
    base = LowLatencySchedule()
    variants: dict[str, tuple[LowLatencySchedule | None, bool]] = {
        "official (web_demo)": (None, True), "previous low-latency (10,10,20; hold 2; per-block noise)":
        (PREVIOUS, False), "default": (base, True), "default, per-block noise": (base, False),
        "default, official fade weights": (dataclasses.replace(base, normalized_fade=False), True),
    }
    for name, kw in {"blocks 10": {"blocks": (10,)}, "blocks 10,10,20": {"blocks": (10, 10, 20)},
                     "blocks 10,20,40": {"blocks": (10, 20, 40)}, "context 10": {"context_tokens": 10},
                     "context 60": {"context_tokens": 60}, "overlap 8": {"overlap_frames": 8},
                     "overlap 34": {"overlap_frames": 34}, "voc holdback 2": {"voc_holdback": 2},
                     "no voc ctx/holdback": {"voc_context": 1, "voc_holdback": 0}}.items():
        variants[name] = (dataclasses.replace(base, **kw), True)
    rows = []
    for name, (sch, anchored) in variants.items():
        mode = "official" if sch is None else "low_latency"
        work = WorkCounter(dec)
        if not anchored:
            stream_mod.frame_noise = per_block_noise
        try:
            _, _, chunks, state = stream(dec, mode, toks, sch)
        finally:
            stream_mod.frame_noise = frame_noise
            del dec.flow_mel_batch, dec.hift.decode  # drop the counting wrappers
        s = seam_jumps(chunks)
        if sch is None:  # official: final frames = block 0's returned mel + later ones without the cache frame
            pieces = [tr["mel_returned"][:, :, (1 if i else 0):] for i, tr in enumerate(state.trace)]
        else:
            pieces = [tr["mel"] for tr in state.trace]
        mel = torch.cat(pieces, dim=2)
        bounds = torch.tensor([p.shape[-1] for p in pieces]).cumsum(0)[:-1].tolist()
        m = min(mel.shape[-1], f_total)
        near, far = mel_seams(mel[..., :m], offline_mel[..., :m], [b for b in bounds if b < m], 8)
        n_first = sch.blocks[0] if sch else 25
        first_work = WorkCounter(dec)  # the first block alone: what the listener waits for
        sd = StreamingDecoder(dec, mode, schedule=sch)
        sd.step(toks[:n_first], sd.init_state())
        del dec.flow_mel_batch, dec.hift.decode
        rows.append([name, n_first, chunks[0].numel() / dec.sample_rate, flops.of(first_work),
                     work.flow_frames / f_total, work.voc_frames / f_total, flops.of(work) / offline_gflop,
                     s["boundary_max"] / s["within_p999"], s["seams"], near, far,
                     sum(c.numel() for c in chunks) - f_total * dec.samples_per_frame()])
    table(f"streaming schedules ({n} tokens = {f_total} frames; tiny reference model, deterministic; GFLOP for "
          f"the released size, offline decode = {offline_gflop:.0f} GFLOP)",
          ["schedule", "tokens before 1st audio", "1st chunk audio s", "1st chunk GFLOP (full size)",
           "flow frames / offline", "vocoder frames / offline", "GFLOP / offline (full size)",
           "seam jump / within p99.9", "seams", "mel RMS dev. near joins", "mel RMS dev. elsewhere",
           "samples vs offline"], rows)
    print(f"\n(mel std of the offline decode: {offline_mel.std().item():.3f}; mel deviation is against an offline "
          "decode with the same frame-anchored noise, so per-block noise shows up as deviation everywhere)")


def _lockstep(sd: StreamingDecoder, streams: list[list[int]], n: int):
    def run(batched: bool) -> None:
        states = [sd.init_state() for _ in streams]
        for j in range(n):
            if batched:
                sd.step_many([([s[j]], st) for s, st in zip(streams, states, strict=True)])
            else:
                for s, st in zip(streams, states, strict=True):
                    sd.step([s[j]], st)
        for st in states:
            sd.finish(st)
    return run


def bench_multistream(size: str, device: str, n: int, counts: list[int], repeats: int) -> None:
    """k streams fed one code per step in lockstep: k separate ``step`` calls vs one ``step_many`` call."""
    dec = build(size, device)
    rows = []
    for mode in ("low_latency", "official"):
        sd = StreamingDecoder(dec, mode)
        for k in counts:
            streams = [codes(n + i, dec.cfg.flow.vocab_size)[:n] for i in range(k)]

            run = _lockstep(sd, streams, n)
            t_sep = min(timed(dec, lambda run=run: run(False))[0] for _ in range(repeats))
            t_bat = min(timed(dec, lambda run=run: run(True))[0] for _ in range(repeats))
            audio = k * dec.frames(n) * dec.samples_per_frame() / dec.sample_rate
            rows.append([mode, k, audio, t_sep / audio, t_bat / audio, t_sep / t_bat])
    table(f"several streams in lockstep, {n} codes each ({size} size on {device}, best of {repeats})",
          ["mode", "streams", "audio s (all)", "RTF separate steps", "RTF step_many", "speed-up"], rows)


def flow_work(mode: str, n: int, frames, schedule: LowLatencySchedule | None = None) -> int:
    """Mel frames pushed through the flow (x 10 steps x 2 CFG passes) to stream n tokens (no model needed)."""
    from glm4voice.constants import OFFICIAL_STREAM_BLOCKS
    sch = schedule or LowLatencySchedule()
    blocks = OFFICIAL_STREAM_BLOCKS if mode == "official" else sch.blocks
    done, work, i = 0, 0, 0
    while done < n:
        b = min(blocks[min(i, len(blocks) - 1)], n - done)
        start = 0 if mode == "official" else max(0, done - sch.context_tokens)
        work += frames(done + b) - frames(start)
        done, i = done + b, i + 1
    return work


def work_table(lengths: list[int]) -> None:
    from glm4voice.decoder.flow import feat_len
    rows = []
    for n in lengths:
        off = feat_len(n)
        official, low = flow_work("official", n, feat_len), flow_work("low_latency", n, feat_len)
        prev = flow_work("low_latency", n, feat_len, PREVIOUS)
        rows.append([n, n / 12.5, official / off, prev / off, low / off])
    table("flow work to stream n tokens, relative to one offline decode (frames x steps; any model size)",
          ["tokens", "audio s", "official web_demo schedule", "low latency, previous (10,10,20)",
           "low latency, default (10,10,20,40)"], rows)


def bench_vocoder_seams(device: str, n: int) -> None:
    """Vocoder seams in isolation: stream n tokens (low latency), then vocode the stream's own final mel in ONE
    call (same initial phases, sine noise off) and compare the streamed waveform with it near chunk seams
    (+-512 samples) and elsewhere. The streamed audio includes sine noise, hence the floor elsewhere."""
    import json

    from glm4voice.decoder.hift import SourceNoise
    from glm4voice.decoder.model import new_generator
    dec = build("tiny", device)
    toks = codes(n, dec.cfg.flow.vocab_size)
    if (REFERENCE / "config.yaml").is_file():
        toks = json.loads((REFERENCE / "expected.json").read_text())["web_demo_streaming"]["tokens"][:n]
    rows = []
    base = LowLatencySchedule()
    for ctx, hold in ((1, 0), (12, 0), (4, 2), (12, 2), (12, 4)):
        sch = dataclasses.replace(base, voc_context=ctx, voc_holdback=hold)
        _, _, chunks, state = stream(dec, "low_latency", toks, sch)
        x = torch.cat(chunks)
        mel = torch.cat([tr["mel"] for tr in state.trace], dim=2)
        with torch.inference_mode():
            phase = dec.hift.draw_noise(0, new_generator()).phase
            f0 = dec.hift.f0_predictor(mel)
            src, _ = dec.hift.source(f0, SourceNoise(phase, torch.zeros(1, phase.shape[1], x.numel())))
            y = dec.hift.decode(mel, src)[0]
        err = (x - y).abs().cpu()
        near = torch.zeros_like(err, dtype=torch.bool)
        for e in torch.tensor([c.numel() for c in chunks if c.numel()]).cumsum(0)[:-1].tolist():
            near[max(0, e - 512): e + 512] = True
        rows.append([ctx, hold, err[near].max().item(), err[near].pow(2).mean().sqrt().item(),
                     err[~near].max().item(), err[~near].pow(2).mean().sqrt().item()])
    table(f"vocoder seams: streamed vs one-call vocoding of the same mel ({n} tokens, tiny reference model)",
          ["voc_context", "voc_holdback", "max err near seams", "RMS near seams", "max err elsewhere",
           "RMS elsewhere"], rows)


def bench_flow_steps(folder: str, device: str, steps: list[int], n: int, repeats: int) -> None:
    """A decoder folder (default: the embedded one) with each flow step count: first low-latency chunk, stream and
    offline RTF. The step counts alternate within every repeat (medians), so machine noise hits them alike."""
    import statistics

    from glm4voice.checkpoints import embedded_dir

    dec = SpeechDecoder.from_pretrained(folder or embedded_dir("decoder"), device=device)
    base = dec.cfg.flow.cfm.n_timesteps
    toks = codes(n, dec.cfg.flow.vocab_size)
    audio = dec.frames(n) * dec.samples_per_frame() / dec.sample_rate
    dec.decode(codes(10, dec.cfg.flow.vocab_size))  # warm-up
    got: dict[int, list[tuple[float, float, float]]] = {k: [] for k in steps}
    for _ in range(repeats):
        for k in steps:
            dec.set_flow_steps(k)
            t_off, _ = timed(dec, lambda: dec.decode(toks))
            t_ll, first_ll, _, _ = stream(dec, "low_latency", toks)
            got[k].append((first_ll, t_ll / audio, t_off / audio))
    dec.set_flow_steps(base)
    rows = []
    for k in steps:
        first, rtf_ll, rtf_off = (statistics.median(x[i] for x in got[k]) for i in range(3))
        first0 = statistics.median(x[0] for x in got[steps[0]])
        rows.append([k, first, first / first0, rtf_ll, rtf_off])
    table(f"flow steps, {folder or 'embedded decoder'}, {n} tokens ({audio:.1f} s), {device}, threads "
          f"{torch.get_num_threads()}, median of {repeats}",
          ["flow steps", "first chunk s (low latency, 10 tok)", f"first chunk / {steps[0]} steps",
           "RTF low-latency stream", "RTF offline"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny", help="comma list of tiny, full (full on CPU takes many minutes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lengths", default="25,50,100")
    ap.add_argument("--schedules", action="store_true", help="compare low-latency schedule variants")
    ap.add_argument("--schedule-tokens", type=int, default=130)
    ap.add_argument("--streams", default="", help="comma list of stream counts for the step_many table, e.g. 1,4")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--flow-steps", default="", help="comma list of flow step counts to time on --decoder, e.g. 10,4")
    ap.add_argument("--decoder", default="", help="decoder folder for --flow-steps (default: the embedded one)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    lengths = [int(x) for x in args.lengths.split(",")]
    work_table([25, 50, 100, 200, 400, 800, 1600])
    for size in filter(None, args.sizes.split(",")):
        bench_size(size, args.device, lengths)
    if args.streams:
        bench_multistream("tiny", args.device, 60, [int(x) for x in args.streams.split(",")], args.repeats)
    if args.flow_steps:
        bench_flow_steps(args.decoder, args.device, [int(x) for x in args.flow_steps.split(",")], 100,
                         max(3, args.repeats))
    if args.schedules:
        bench_schedules(args.device, args.schedule_tokens)
        bench_vocoder_seams(args.device, args.schedule_tokens)


if __name__ == "__main__":
    main()
