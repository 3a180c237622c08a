"""Streaming speech tokenizer: 16 kHz PCM in chunks of any size -> codes as soon as they are final.

What makes a code final (SPEC §1.4-1.5):

- A log-mel frame j (window of samples 160j-200 .. 160j+199, reflect-padded at a chunk start) depends only on
  those samples: it is computed once, after they have arrived, and kept *before* the floor (``raw``). Frames are
  computed lazily, when a block needs them or at a floor check, so most small steps only copy samples.
- The causal convolutions read frames <= 2t for 50 Hz position t; attention is block-causal in blocks of
  ``quantize_causal_block_size`` positions (200 = 4 s, 50 codes): a block's layers can run once its last
  position's frames are in (after 64000 (b+1) - 120 samples of the chunk); the keys/values of finished blocks
  never change, so they are cached per layer and later blocks attend to them.
- The official extractor restarts every 30 s (480,000 samples): positions, floor and cache restart with it.
- The per-chunk floor (max - 8 over the whole chunk, SPEC §1.4) depends on the future: a louder frame later in
  the chunk raises it and changes the clamped features of earlier frames, hence possibly their codes. So a code
  is provably final only when its 30 s chunk closes or speech ends. We still run every block as soon as it is
  complete (the work happens while the user speaks), keeping the running maximum; when it has risen in a way
  that changes a feature a cached block used, the chunk's cached blocks are recomputed in one pass before the
  next block, so the cache always matches what offline would compute with the floor known so far. The same
  refresh also runs during speech (``refresh_s``, default every 0.5 s of audio at most) so that a floor rise
  early in the unfinished block is absorbed before the end of speech: with the trailing silence an endpointer
  needs, ``finish`` then only runs the unfinished block.
- ``emit="final"`` (default, exact): ``step`` returns codes only when they are final (at a 30 s chunk close);
  ``finish`` returns the rest. At end of speech only the unfinished block runs, unless the floor rose since the
  cached blocks ran (then the chunk so far is recomputed). Codes equal the offline per-file codes.
- ``emit="block"`` (early): ``step`` returns a block's codes as soon as the block is complete. If the floor rises
  later, codes already returned may differ from offline: ``state.revised`` counts them when the chunk closes.
- At end of speech (``finish``) the chunk is zero-padded to a multiple of 1280 samples as the per-file offline
  call pads it, and the remaining frames and the final floor are computed before the last block runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from glm4voice.audio import LOG_MEL_DYNAMIC_RANGE, finish_log_mel, raw_log_mel
from glm4voice.constants import CHUNK_SAMPLES, MEL_HOP, MEL_N_FFT, TOKEN_HOP_SAMPLES
from glm4voice.constants import TOKENIZER_SAMPLE_RATE as SAMPLE_RATE
from glm4voice.errors import AudioError
from glm4voice.tokenizer.model import KV, WhisperVQEncoder, block_causal_mask

REFRESH_SECONDS = 0.5  # default minimum audio between two eager cache refreshes
HALF_WINDOW = MEL_N_FFT // 2  # 200 samples of centre padding / look-ahead per frame
POSITION_HOP = 2 * MEL_HOP  # samples per 50 Hz encoder position (conv2 stride 2)


@dataclass
class TokenizerStreamState:
    """Everything one stream needs between calls; one per stream, nothing shared."""

    samples: Tensor  # (CHUNK_SAMPLES,) samples of the current 30 s chunk (preallocated)
    raw: Tensor  # (mels, frames per chunk) log10 mel of the final frames, before the floor
    emit: str = "final"  # "final": return codes once provably final; "block": as each block completes
    refresh_samples: int | None = None  # check the floor (and refresh the cache) this often during speech
    checked_at: int = 0  # ``filled`` at the last floor check
    filled: int = 0  # samples of the current chunk received
    frames: int = 0  # final frames in ``raw``
    peak: float = -math.inf  # max of raw[:, :frames]
    blocks: int = 0  # finished attention blocks of the current chunk
    kv: list[KV] | None = None  # per layer (keys, values) buffers; positions < blocks * block are the finished ones
    kv_peak: float = -math.inf  # the maximum the cached blocks were computed with
    chunk_codes: list[int] = field(default_factory=list)  # codes computed for the current chunk so far
    chunk_returned: list[int] = field(default_factory=list)  # what step() returned for this chunk (emit="block")
    chunks_done: int = 0
    total_samples: int = 0
    revised: int = 0  # codes returned early that differ from the final (offline) codes; 0 with emit="final"
    recomputes: int = 0  # times the cached blocks were recomputed after a floor change
    finished: bool = False


class StreamingEncoder:
    """Stateless driver of a ``WhisperVQEncoder``; all per-stream data lives in ``TokenizerStreamState``."""

    def __init__(self, model: WhisperVQEncoder):
        self.model = model
        self.cfg = model.cfg
        self.block = model.cfg.quantize_causal_block_size
        self.positions_per_chunk = CHUNK_SAMPLES // POSITION_HOP  # 1500
        self.frames_per_chunk = CHUNK_SAMPLES // MEL_HOP  # 3000

    @property
    def device(self) -> torch.device:
        return self.model.codebook.weight.device

    def init_state(self, *, emit: str = "final", refresh_s: float | None = REFRESH_SECONDS) -> TokenizerStreamState:
        """A new stream. emit: "final" or "block" (see the module doc); refresh_s: at most how often (seconds of
        audio) cached blocks are recomputed during speech after a floor rise; None: only when a block completes."""
        if emit not in ("final", "block"):
            raise ValueError(f"emit must be 'final' or 'block', got {emit!r}")
        if refresh_s is not None and not refresh_s >= 0:
            raise ValueError(f"refresh_s must be >= 0 seconds or None, got {refresh_s!r}")
        return TokenizerStreamState(samples=torch.zeros(CHUNK_SAMPLES, device=self.device),
                                    raw=torch.zeros(self.cfg.num_mel_bins, self.frames_per_chunk, device=self.device),
                                    emit=emit,
                                    refresh_samples=None if refresh_s is None else round(refresh_s * SAMPLE_RATE))

    # -- public ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, pcm, state: TokenizerStreamState) -> tuple[list[int], TokenizerStreamState]:
        """Append 16 kHz mono samples (n,); return the codes that became final and the state."""
        if state.finished:
            raise AudioError("this stream has finished; start a new one with init_state()")
        pcm = _as_pcm(pcm).to(self.device)
        out: list[int] = []
        while pcm.numel():
            take = min(CHUNK_SAMPLES - state.filled, pcm.numel())
            state.samples[state.filled: state.filled + take] = pcm[:take]
            state.filled += take
            state.total_samples += take
            pcm = pcm[take:]
            if state.filled == CHUNK_SAMPLES:  # 30 s: the official extractor starts a new chunk here
                out += self._close_chunk(state)
            else:
                self._advance(state)
                if state.emit == "block":
                    out += self._take(state)
        return out, state

    @torch.inference_mode()
    def finish(self, state: TokenizerStreamState) -> list[int]:
        """End of speech: compute what is left (the unfinished block) and return its codes."""
        if state.finished:
            raise AudioError("this stream has already finished")
        out = self._close_chunk(state) if state.filled else []
        state.finished = True
        return out

    # -- mel frames ------------------------------------------------------------------------------------------
    @staticmethod
    def _final_frames(filled: int) -> int:
        """Frames whose 400-sample window lies inside the samples received (frame 0 reflects x[1..200])."""
        if filled <= HALF_WINDOW:
            return 0
        return (filled - HALF_WINDOW) // MEL_HOP + 1

    def _add_frames(self, state: TokenizerStreamState, upto: int, signal: Tensor | None = None) -> None:
        """Compute raw log-mel frames state.frames..upto-1 from ``signal`` (default: the samples so far)."""
        j0 = state.frames
        if upto <= j0:
            return
        x = state.samples[: state.filled] if signal is None else signal
        start, end = MEL_HOP * j0 - HALF_WINDOW, MEL_HOP * (upto - 1) + HALF_WINDOW
        piece = x[max(start, 0): min(end, x.shape[0])]
        if start < 0:  # reflect padding at the chunk start: sample -m is sample m
            piece = torch.cat([x[1: 1 - start].flip(0), piece])
        if end > x.shape[0]:  # reflect padding at the end of a closed chunk: sample L-1+m is sample L-1-m
            piece = torch.cat([piece, x[2 * x.shape[0] - end - 1: x.shape[0] - 1].flip(0)])
        raw = raw_log_mel(piece[None])[0]
        state.raw[:, j0:upto] = raw
        state.peak = max(state.peak, float(raw.max()))
        state.frames = upto

    # -- encoder blocks --------------------------------------------------------------------------------------
    @staticmethod
    def _take(state: TokenizerStreamState) -> list[int]:
        out = state.chunk_codes[len(state.chunk_returned):]
        state.chunk_returned += out
        return out

    def _run_finished_blocks(self, state: TokenizerStreamState) -> None:
        while True:
            t1 = (state.blocks + 1) * self.block
            if t1 >= self.positions_per_chunk or state.frames < 2 * t1 - 1:
                return  # the chunk's last block always waits for the chunk to close
            self._run_block(state, t1, valid_samples=None)

    def _advance(self, state: TokenizerStreamState) -> None:
        """Bring frames up to date, run complete blocks, refresh a stale cache -- only when there is work.

        Frames are computed lazily (when a block is complete, or every refresh_samples to check the floor), so
        a 20 ms step usually only copies samples; at most refresh_samples of frames are left for ``finish``.
        """
        final = self._final_frames(state.filled)
        t1 = (state.blocks + 1) * self.block
        block_ready = t1 < self.positions_per_chunk and final >= 2 * t1 - 1
        check_due = state.refresh_samples is not None and state.filled - state.checked_at >= state.refresh_samples
        if not (block_ready or check_due):
            return
        self._add_frames(state, final)
        self._run_finished_blocks(state)
        if check_due:
            state.checked_at = state.filled
            if self._stale(state):
                self._run_block(state, state.blocks * self.block, valid_samples=None)  # t0 = 0: the whole cache

    def _close_chunk(self, state: TokenizerStreamState) -> list[int]:
        """Pad the chunk as the offline extractor does, finish its frames and floor, run its last block."""
        n = state.filled
        padded_len = math.ceil(n / TOKEN_HOP_SAMPLES) * TOKEN_HOP_SAMPLES
        signal = F.pad(state.samples[:n], (0, padded_len - n))
        self._add_frames(state, padded_len // MEL_HOP, signal)
        state.filled = padded_len
        self._run_block(state, padded_len // POSITION_HOP, valid_samples=n)
        early = state.chunk_returned
        state.revised += sum(a != b for a, b in zip(early, state.chunk_codes, strict=False))
        out = self._take(state)
        state.chunks_done += 1
        state.samples.zero_()
        state.filled = state.frames = state.blocks = state.checked_at = 0
        state.peak = state.kv_peak = -math.inf  # the key/value buffers are kept for the next chunk
        state.chunk_codes, state.chunk_returned = [], []
        return out

    def _stale(self, state: TokenizerStreamState) -> bool:
        """Did the floor rise in a way that changes a feature the cached blocks used?"""
        if state.blocks == 0 or state.peak == state.kv_peak:
            return False
        used = 2 * state.blocks * self.block - 1
        return bool((state.raw[:, :used] < state.peak - LOG_MEL_DYNAMIC_RANGE).any())

    def _run_block(self, state: TokenizerStreamState, t1: int, valid_samples: int | None) -> None:
        """Run positions [first unfinished block, t1) -- from 0 after a floor change -- into state.chunk_codes."""
        recompute = self._stale(state)
        t0 = 0 if recompute else state.blocks * self.block
        if t0 >= t1:
            return
        feats = self._features(state, t0, t1)
        x = self.model.add_positions(self.model.conv_front(feats, at_start=t0 == 0), t0)
        key_valid = torch.ones(1, t1, dtype=torch.bool, device=self.device)
        if valid_samples is not None:  # last block of a closed chunk: positions past the samples are padding
            key_valid[0] = torch.arange(t1, device=self.device) * POSITION_HOP < valid_samples
        mask = block_causal_mask(key_valid, t0, t1 - t0, self.block, x.dtype)
        self._reserve(state, t1)
        x, _ = self.model.run_layers(x, mask, state.kv, start=t0)
        state.kv_peak = state.peak
        state.blocks = math.ceil(t1 / self.block)
        codes = self.model.quantize(self.model.pool(x))[0].tolist()
        if valid_samples is not None:
            codes = codes[: math.ceil(valid_samples / TOKEN_HOP_SAMPLES) - t0 // self.cfg.pooling_kernel_size]
        state.recomputes += recompute
        state.chunk_codes = codes if recompute else state.chunk_codes + codes

    def _reserve(self, state: TokenizerStreamState, positions: int) -> None:
        """Make the key/value buffers hold ``positions``: allocated on first use, doubled when full (at most a
        30 s chunk), kept across chunks; the finished blocks are copied over when they grow."""
        capacity = 0 if state.kv is None else state.kv[0][0].shape[2]
        if positions <= capacity:
            return
        new = self.model.new_cache(1, min(self.positions_per_chunk, max(positions, 2 * capacity, 2 * self.block)))
        keep = state.blocks * self.block
        for (k, v), (old_k, old_v) in zip(new, state.kv or [], strict=False):
            k[:, :, :keep] = old_k[:, :, :keep]
            v[:, :, :keep] = old_v[:, :, :keep]
        state.kv = new

    def _features(self, state: TokenizerStreamState, t0: int, t1: int) -> Tensor:
        """Floored features of the frames positions t0..t1-1 read: 2*t0 - 4 .. 2*t1 - 2 (from 0 at t0 = 0)."""
        lo = 0 if t0 == 0 else 2 * t0 - 4
        raw = state.raw[None, :, lo: 2 * t1 - 1]
        return finish_log_mel(raw, state.peak).to(self.model.codebook.weight.dtype)


def _as_pcm(pcm) -> Tensor:
    x = pcm if isinstance(pcm, Tensor) else torch.as_tensor(np.asarray(pcm))
    if x.dim() != 1 or not x.is_floating_point():
        raise AudioError(f"stream input must be float 16 kHz mono samples of shape (n,), got {x.dtype} "
                         f"{tuple(x.shape)}")
    x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise AudioError("stream input holds NaN/Inf samples")
    return x
