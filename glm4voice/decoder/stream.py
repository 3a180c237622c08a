"""Streaming synthesis with an explicit state object.

    sd = StreamingDecoder(dec, mode="official" | "low_latency")
    state = sd.init_state()
    pcm, state = sd.step(codes, state)   # feed codes as the LM produces them; pcm may be empty
    pcm = sd.finish(state)               # end of generation, for ANY reason: flushes everything left

The state is a plain object owned by the caller: the decoder keeps nothing per stream, so abandoning a stream
is dropping its state (no uuid-keyed dicts, nothing to leak).

``official`` reproduces ``web_demo.py`` + ``AudioDecoder.token2wav`` (SPEC §4): blocks of 25, 50, 100, 150,
200, 200, … tokens; each block re-runs the flow on ALL earlier tokens with ALL earlier returned mels as prompt;
34-frame Hamming cross-fade computed in float64; a 1-frame / 256-sample HiFT cache; the returned mel includes
the cache frame (the duplicated-frame drift). Differences from the official code, none of which changes a
parity vector: a block is decoded as soon as it is complete (the demo waits for the next LM id), and ``finish``
also flushes the held 34 mel frames when no codes are pending (the demo loses them, SPEC §4.3).

``low_latency`` (our design; measurements in docs/decoder.md and benchmarks/decoder.py):
- first audio after the first 10-token block (the encoder's block size), then blocks per ``schedule``;
- bounded left context: each block runs the flow on at most ``context_tokens`` earlier tokens + the block, with
  the final mel of those tokens as prompt, so the cost per block is constant (linear total cost, not quadratic);
- exact frame accounting: the window's frame count is M(n) − M(s) with M(n) = feat_len(n), so frames stay
  aligned to the global token grid, no frame is duplicated, and the stream is exactly as long as offline;
- mel cross-fade of ``overlap_frames`` regenerated frames (Hamming, float64, as official);
- vocoder continuity: ``voc_context`` earlier mel frames (and their source samples) as left context, the NSF
  harmonic phases continued across calls, and the last ``voc_holdback`` frames of audio held back and
  cross-faded with their re-synthesis (raised cosine) once right context exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from glm4voice.constants import HIFT_CACHE_FRAMES, HIFT_CACHE_SAMPLES, MEL_OVERLAP_FRAMES, OFFICIAL_STREAM_BLOCKS
from glm4voice.decoder.hift import SourceNoise
from glm4voice.decoder.model import SpeechDecoder, new_generator

MODES = ("official", "low_latency")


@dataclass(frozen=True)
class LowLatencySchedule:
    """Parameters of the low-latency mode (defaults chosen by the measurements in docs/decoder.md)."""

    blocks: tuple[int, ...] = (10, 10, 20)  # tokens per block; the last entry repeats. Multiples of 10.
    context_tokens: int = 30  # earlier tokens given to the flow as prompt (multiple of 10)
    overlap_frames: int = 17  # regenerated mel frames cross-faded between blocks
    voc_context: int = 12  # mel frames of vocoder left context
    voc_holdback: int = 2  # mel frames of audio held back and cross-faded

    def __post_init__(self):
        if any(b <= 0 or b % 10 for b in self.blocks) or self.context_tokens % 10 or self.context_tokens < 0:
            raise ValueError("blocks and context_tokens must be positive multiples of the 10-token encoder block")
        if self.context_tokens * 441 // 64 < self.overlap_frames:
            raise ValueError("context_tokens must cover at least overlap_frames mel frames")
        if self.voc_context < self.voc_holdback:
            raise ValueError("voc_context must be >= voc_holdback")


def hamming_fade(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Official fade_in_out: new[:, :, :n]·w[:n] + old[:, :, -n:]·w[n:], w = np.hamming(2n), in float64."""
    n = old.shape[-1]
    w = torch.from_numpy(np.hamming(2 * n))
    mixed = new[:, :, :n].cpu().double() * w[:n] + old[:, :, -n:].cpu().double() * w[n:]
    out = new.clone()
    out[:, :, :n] = mixed.to(new.dtype).to(new.device)
    return out


def _block_size(blocks: tuple[int, ...], index: int) -> int:
    return blocks[min(index, len(blocks) - 1)]


@dataclass
class OfficialState:
    tokens: list[int] = field(default_factory=list)  # codes already decoded (prompt of later blocks)
    pending: list[int] = field(default_factory=list)
    block_index: int = 0
    returned_mels: list[torch.Tensor] = field(default_factory=list)  # official prompt_feat pieces
    overlap: torch.Tensor | None = None  # (1, 80, 34) held mel frames
    cache_mel: torch.Tensor | None = None  # (1, 80, 1)
    cache_source: torch.Tensor | None = None  # (1, 1, 256)
    finished: bool = False
    trace: list[dict] | None = None  # per block: speech and returned mel (for parity tests)


@dataclass
class VocoderState:
    ctx_mel: torch.Tensor | None = None  # (1, 80, <= voc_context) last final frames already vocoded
    ctx_source: torch.Tensor | None = None  # (1, 1, 256 · frames of ctx_mel)
    phase_end: torch.Tensor | None = None  # (1, H+1) NSF harmonic phases (cycles) at the end of ctx
    rand_phase: torch.Tensor | None = None  # (1, H+1, 1) random initial phases, drawn once per stream
    tail: torch.Tensor | None = None  # (n,) held-back audio of the last voc_holdback frames


@dataclass
class LowLatencyState:
    tokens: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    block_index: int = 0
    final_mel: torch.Tensor | None = None  # (1, 80, k) final frames [mel_start, final_frames)
    mel_start: int = 0
    final_frames: int = 0  # global index of the first frame not yet final
    overlap: torch.Tensor | None = None  # (1, 80, overlap_frames) provisional frames
    voc: VocoderState = field(default_factory=VocoderState)
    finished: bool = False
    trace: list[dict] | None = None


@dataclass
class _Job:
    """One block ready for the flow: what to run (tokens, prompt, frames) and where the result goes."""

    state: OfficialState | LowLatencyState
    block: list[int]
    final: bool
    tokens: torch.Tensor  # (1, T) prompt tokens + block
    prompt: torch.Tensor | None  # (1, 80, F_p)
    frames: int  # total frames of the flow call (prompt + new)
    generator: torch.Generator

    @property
    def shape_key(self) -> tuple[int, int, int]:
        return self.tokens.shape[1], 0 if self.prompt is None else self.prompt.shape[-1], self.frames


class StreamingDecoder:
    """Stateless driver: all per-stream data lives in the state objects it returns."""

    def __init__(self, dec: SpeechDecoder, mode: str = "low_latency", *, blocks: tuple[int, ...] | None = None,
                 schedule: LowLatencySchedule | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.dec, self.mode = dec, mode
        self.blocks = tuple(blocks) if blocks else OFFICIAL_STREAM_BLOCKS  # official mode only
        self.schedule = schedule or LowLatencySchedule()
        self.hop = dec.samples_per_frame()

    def init_state(self, *, trace: bool = False) -> OfficialState | LowLatencyState:
        state = OfficialState() if self.mode == "official" else LowLatencyState()
        state.trace = [] if trace else None
        return state

    def _empty(self) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.float32, device=self.dec.device)

    def step(self, codes, state):
        """Feed speech codes; returns (pcm (n,) float32 — possibly empty, state)."""
        return self.step_many([(codes, state)])[0]

    def step_many(self, items: list[tuple]) -> list[tuple[torch.Tensor, OfficialState | LowLatencyState]]:
        """``step`` for several streams at once: blocks of different streams whose flow calls have the same
        shapes run as one batch (each row keeps its own noise, so results equal separate calls up to float
        rounding). Returns [(pcm, state)] in the order given."""
        for _, state in items:
            if state.finished:
                raise RuntimeError("this stream is finished; call init_state() for a new one")
        new_codes = [self.dec.codes_tensor(codes, allow_empty=True)[0].tolist() for codes, _ in items]
        for codes, (_, state) in zip(new_codes, items, strict=True):
            state.pending.extend(codes)
        blocks = self.blocks if self.mode == "official" else self.schedule.blocks
        outs: list[list[torch.Tensor]] = [[] for _ in items]
        while True:
            jobs = []
            for i, (_, st) in enumerate(items):
                size = _block_size(blocks, st.block_index)
                if len(st.pending) >= size:
                    block, st.pending = st.pending[:size], st.pending[size:]
                    jobs.append((i, self._plan(block, st, final=False)))
            if not jobs:
                break
            for i, pcm in self._run(jobs):
                outs[i].append(pcm)
        return [(torch.cat(o) if o else self._empty(), st) for o, (_, st) in zip(outs, items, strict=True)]

    def finish(self, state) -> torch.Tensor:
        """End of generation (``<|user|>``, ``<|endoftext|>``, max tokens, error…): synthesise everything left."""
        if state.finished:
            return self._empty()
        try:
            if state.pending:
                block, state.pending = state.pending, []
                return self._run([(0, self._plan(block, state, final=True))])[0][1]
            if state.overlap is not None:
                return self._flush_overlap(state)
            return self._empty()
        finally:
            state.finished = True

    def _run(self, jobs: list[tuple[int, _Job]]) -> list[tuple[int, torch.Tensor]]:
        """Run the flow for same-shaped jobs as one batch, then commit each job in order."""
        groups: dict[tuple, list[tuple[int, _Job]]] = {}
        for item in jobs:
            groups.setdefault(item[1].shape_key, []).append(item)
        mels: dict[int, torch.Tensor] = {}
        for group in groups.values():
            tokens = torch.cat([j.tokens for _, j in group])
            prompt = None if group[0][1].prompt is None else torch.cat([j.prompt for _, j in group])
            mel = self.dec.flow_mel_batch(tokens, prompt, [j.generator for _, j in group], group[0][1].frames)
            for row, (_, job) in enumerate(group):
                mels[id(job)] = mel[row:row + 1]
        return [(i, self._commit(job, mels[id(job)])) for i, job in jobs]

    def _plan(self, block: list[int], st, final: bool) -> _Job:
        st.block_index += 1
        dec = self.dec
        if self.mode == "official":
            tokens = st.tokens + block
            prompt = torch.cat(st.returned_mels, dim=2) if st.returned_mels else None
            frames = dec.frames(len(tokens))
        else:
            s = max(0, len(st.tokens) - self.schedule.context_tokens)
            tokens = st.tokens[s:] + block
            f_s = dec.frames(s)
            prompt = None if st.final_mel is None else st.final_mel[:, :, f_s - st.mel_start:]
            frames = dec.frames(len(st.tokens) + len(block)) - f_s  # exact global frame grid, no drift
        t = torch.tensor([tokens], dtype=torch.long, device=dec.device)
        return _Job(st, block, final, t, prompt, frames, new_generator())

    def _commit(self, job: _Job, mel: torch.Tensor) -> torch.Tensor:
        st = job.state
        if st.overlap is not None:
            mel = hamming_fade(mel, st.overlap)
            st.overlap = None
        if self.mode == "official":
            speech = self._official_vocode(mel, st, job.generator, job.final)
            st.tokens += job.block
            return speech
        sch, dec = self.schedule, self.dec
        if not job.final:
            st.overlap, mel = mel[:, :, -sch.overlap_frames:], mel[:, :, :-sch.overlap_frames]
        st.tokens += job.block
        # keep only the final frames later prompts can use: from feat_len(n - context) on
        keep_from = dec.frames(max(0, len(st.tokens) - sch.context_tokens))
        full = mel if st.final_mel is None else torch.cat([st.final_mel, mel], dim=2)
        st.final_mel, st.mel_start = full[:, :, keep_from - st.mel_start:], keep_from
        st.final_frames += mel.shape[-1]
        return self._vocode_ll(mel, st, job.generator, job.final)

    # --- official ------------------------------------------------------------------------------------------
    def _official_vocode(self, mel: torch.Tensor, st: OfficialState, gen: torch.Generator, final: bool):
        cache_source = None
        if st.cache_mel is not None:
            mel, cache_source = torch.cat([st.cache_mel, mel], dim=2), st.cache_source
        if not final:
            st.overlap, mel = mel[:, :, -MEL_OVERLAP_FRAMES:], mel[:, :, :-MEL_OVERLAP_FRAMES]
        speech, source = self.dec.vocode(mel, gen, cache_source)
        if not final:
            st.cache_mel, st.cache_source = mel[:, :, -HIFT_CACHE_FRAMES:], source[:, :, -HIFT_CACHE_SAMPLES:]
            speech = speech[:, :-HIFT_CACHE_SAMPLES]
        else:
            st.overlap = st.cache_mel = st.cache_source = None
        st.returned_mels.append(mel)  # the HiFT input: includes the cache frame (official drift)
        if st.trace is not None:
            st.trace.append({"speech": speech, "mel_returned": mel})
        return speech[0].float()

    def _flush_overlap(self, st) -> torch.Tensor:
        mel, st.overlap = st.overlap, None
        if self.mode == "official":
            return self._official_vocode(mel, st, new_generator(), final=True)
        st.final_frames += mel.shape[-1]
        return self._vocode_ll(mel, st, new_generator(), final=True)

    # --- low latency -----------------------------------------------------------------------------------------
    def _vocode_ll(self, mel: torch.Tensor, st: LowLatencyState, gen: torch.Generator, final: bool) -> torch.Tensor:
        """Vocode new final frames with left context, continuous NSF phase and a cross-faded held-back tail."""
        hift, sch, hop, vs = self.dec.hift, self.schedule, self.hop, st.voc
        with torch.inference_mode():
            c = 0 if vs.ctx_mel is None else vs.ctx_mel.shape[-1]
            mel_in = mel if c == 0 else torch.cat([vs.ctx_mel, mel], dim=2)
            if vs.rand_phase is None:
                vs.rand_phase = hift.draw_noise(0, gen).phase
            noise = torch.randn(1, hift.cfg.nb_harmonics + 1, mel.shape[-1] * hop, generator=gen)
            f0 = hift.f0_predictor(mel_in)
            s_new, vs.phase_end = hift.source(f0[:, c:], SourceNoise(vs.rand_phase, noise), vs.phase_end)
            s = s_new if c == 0 else torch.cat([vs.ctx_source, s_new], dim=2)
            speech = hift.decode(mel_in, s)[0].float()
        tail = vs.tail if vs.tail is not None else speech[:0]
        out = speech[c * hop - tail.numel():].clone()
        if tail.numel():
            fade_in = torch.sin(0.5 * math.pi * (torch.arange(tail.numel(), device=out.device) + 0.5)
                                / tail.numel()) ** 2
            out[: tail.numel()] = out[: tail.numel()] * fade_in + tail * (1 - fade_in)
        vs.tail = None
        if not final and sch.voc_holdback:
            vs.tail, out = out[-sch.voc_holdback * hop:], out[: -sch.voc_holdback * hop]
        if sch.voc_context:
            vs.ctx_mel, vs.ctx_source = mel_in[:, :, -sch.voc_context:], s[:, :, -sch.voc_context * hop:]
        if st.trace is not None:
            st.trace.append({"speech": out, "mel": mel})
        return out


def seam_jumps(chunks: list[torch.Tensor]) -> dict[str, float]:
    """Seam quality of a chunked waveform: the largest sample-to-sample jump |x[i+1] − x[i]| across chunk
    boundaries, against the largest and the 99.9th percentile of jumps inside chunks."""
    chunks = [c.detach().float().cpu() for c in chunks if c.numel()]
    x = torch.cat(chunks)
    jumps = (x[1:] - x[:-1]).abs()
    ends = torch.tensor([c.numel() for c in chunks]).cumsum(0)[:-1] - 1  # index of the jump across each seam
    inside = torch.ones_like(jumps, dtype=torch.bool)
    inside[ends] = False
    boundary = jumps[ends].max().item() if ends.numel() else 0.0
    return {"boundary_max": boundary, "within_max": jumps[inside].max().item(),
            "within_p999": torch.quantile(jumps[inside], 0.999).item(), "seams": int(ends.numel())}
