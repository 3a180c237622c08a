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
        if state.finished:
            raise RuntimeError("this stream is finished; call init_state() for a new one")
        state.pending.extend(self.dec.codes_tensor(codes, allow_empty=True)[0].tolist())
        blocks = self.blocks if self.mode == "official" else self.schedule.blocks
        out = []
        while len(state.pending) >= (size := _block_size(blocks, state.block_index)):
            block, state.pending = state.pending[:size], state.pending[size:]
            out.append(self._block(block, state, final=False))
        return (torch.cat(out) if out else self._empty()), state

    def finish(self, state) -> torch.Tensor:
        """End of generation (``<|user|>``, ``<|endoftext|>``, max tokens, error…): synthesise everything left."""
        if state.finished:
            return self._empty()
        try:
            if state.pending:
                block, state.pending = state.pending, []
                return self._block(block, state, final=True)
            if state.overlap is not None:
                return self._flush_overlap(state)
            return self._empty()
        finally:
            state.finished = True

    def _block(self, block: list[int], state, final: bool) -> torch.Tensor:
        state.block_index += 1
        if self.mode == "official":
            return self._official_block(block, state, final)
        return self._low_latency_block(block, state, final)

    # --- official ------------------------------------------------------------------------------------------
    def _official_block(self, block: list[int], st: OfficialState, final: bool) -> torch.Tensor:
        dec = self.dec
        gen = new_generator()
        tokens = torch.tensor([st.tokens + block], dtype=torch.long, device=dec.device)
        prompt = torch.cat(st.returned_mels, dim=2) if st.returned_mels else None
        mel = dec.flow_mel(tokens, prompt, gen)
        if st.overlap is not None:
            mel = hamming_fade(mel, st.overlap)
        speech = self._official_vocode(mel, st, gen, final)
        st.tokens += block
        return speech

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
        if self.mode == "official":
            mel, st.overlap = st.overlap, None
            return self._official_vocode(mel, st, new_generator(), final=True)
        mel, st.overlap = st.overlap, None
        st.final_frames += mel.shape[-1]
        return self._vocode_ll(mel, st, new_generator(), final=True)

    # --- low latency -----------------------------------------------------------------------------------------
    def _low_latency_block(self, block: list[int], st: LowLatencyState, final: bool) -> torch.Tensor:
        dec, sch = self.dec, self.schedule
        n_prev, n = len(st.tokens), len(st.tokens) + len(block)
        s = max(0, n_prev - sch.context_tokens)
        f_s, f_n = dec.frames(s), dec.frames(n)
        prompt = None
        if st.final_mel is not None:
            prompt = st.final_mel[:, :, f_s - st.mel_start:]
        tokens = torch.tensor([st.tokens[s:] + block], dtype=torch.long, device=dec.device)
        gen = new_generator()
        mel = dec.flow_mel(tokens, prompt, gen, frames=f_n - f_s)  # frames [final_frames, f_n)
        if st.overlap is not None:
            mel = hamming_fade(mel, st.overlap)
        st.overlap = None
        if not final:
            st.overlap, mel = mel[:, :, -sch.overlap_frames:], mel[:, :, :-sch.overlap_frames]
        st.tokens += block
        # keep only the final frames later prompts can use: from feat_len(n - context) on
        keep_from = dec.frames(max(0, n - sch.context_tokens))
        full = mel if st.final_mel is None else torch.cat([st.final_mel, mel], dim=2)
        st.final_mel, st.mel_start = full[:, :, keep_from - st.mel_start:], keep_from
        st.final_frames += mel.shape[-1]
        return self._vocode_ll(mel, st, gen, final)

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
        vs.ctx_mel, vs.ctx_source = mel_in[:, :, -sch.voc_context:], s[:, :, -sch.voc_context * hop:]
        if st.trace is not None:
            st.trace.append({"speech": out, "mel": mel})
        return out
