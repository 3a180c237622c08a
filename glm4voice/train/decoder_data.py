"""Training data of the speech decoder: speech tokens, 80-bin mel and waveform of one target voice at 22.05 kHz.

Alignment. A 12.5 Hz token covers 1764 samples at 22.05 kHz; the flow turns T tokens into
``feat_len(T) = floor(T · 441/64)`` mel frames of 256 samples (SPEC §3.2.5, the length regulator's target). An
utterance with T tokens is therefore padded with silence (or trimmed) to exactly ``feat_len(T) · 256`` samples,
so that its mel has exactly ``feat_len(T)`` frames and frame i is the audio [256 i, 256 (i+1)) that HiFT makes
from it. A training window of tokens [s, s + L) uses the mel frames [feat_len(s), feat_len(s) + feat_len(L)):
the frame count the flow produces for L tokens, placed on the utterance's global frame grid (for s = 0 this is
exactly what an offline or official-stream call computes; for block-aligned s it is the low-latency stream's
window, within one frame).

Mel. ``decoder_mel`` is the CosyVoice / Matcha-TTS feature the official decoder was trained on (SPEC §3.7):
reflect padding of 384, |STFT| (n_fft 1024, hop 256, periodic Hann 1024, no centring), Slaney mel 0-8 kHz,
natural log floored at 1e-5. The mel basis is ``audio.mel_filters`` (the librosa values) at 22.05 kHz.

Every batch is a pure function of (seed, step, rank): windows, prompt lengths, guidance dropout, flow time and
noise are all drawn here, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from glm4voice.audio import mel_filters
from glm4voice.constants import DECODER_HOP, DECODER_MEL_BINS, DECODER_SAMPLE_RATE, FLOW_BLOCK_TOKENS, TOKEN_RATE_HZ
from glm4voice.decoder.flow import feat_len
from glm4voice.decoder.hift import SourceNoise
from glm4voice.errors import AudioError

log = logging.getLogger("glm4voice.train.decoder")

# --- decoder mel (SPEC §3.7; CosyVoice-300M feat_extractor = Matcha mel_spectrogram) ------------------------------
MEL_N_FFT = 1024  # samples
MEL_WIN = 1024  # samples, periodic Hann
MEL_FMIN = 0.0  # Hz
MEL_FMAX = 8000.0  # Hz
MEL_LOG_FLOOR = 1e-5  # natural log of clamp(magnitude mel, min=1e-5)
MEL_PAD = (MEL_N_FFT - DECODER_HOP) // 2  # 384 samples of reflect padding on both sides (center=False)
SAMPLES_PER_TOKEN = round(DECODER_SAMPLE_RATE / TOKEN_RATE_HZ)  # 1764 samples at 22.05 kHz per 12.5 Hz token

# --- F0 targets of the vocoder's F0 predictor ---------------------------------------------------------------------
F0_MIN, F0_MAX = 60.0, 600.0  # Hz, search range (covers the target voices with their +-4 semitone styles)
VOICING_NCCF = 0.5  # normalised autocorrelation peak above which a frame is voiced
VOICING_FLOOR_DB = -40.0  # frames quieter than this relative to the utterance's loudest frame are unvoiced


def decoder_mel(wav: torch.Tensor) -> torch.Tensor:
    """Log-mel of the decoder: wav (..., n) float at 22.05 kHz -> (..., 80, n // 256). Differentiable."""
    if wav.shape[-1] <= MEL_PAD:
        raise AudioError(f"need more than {MEL_PAD} samples for the decoder mel, got {wav.shape[-1]}")
    shape = wav.shape[:-1]
    x = torch.nn.functional.pad(wav.reshape(-1, 1, wav.shape[-1]), (MEL_PAD, MEL_PAD), mode="reflect").squeeze(1)
    window = torch.hann_window(MEL_WIN, periodic=True, device=wav.device, dtype=wav.dtype)
    spec = torch.view_as_real(torch.stft(x, MEL_N_FFT, DECODER_HOP, MEL_WIN, window, center=False,
                                         return_complex=True))
    mag = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)
    basis = mel_filters(DECODER_SAMPLE_RATE, MEL_N_FFT, DECODER_MEL_BINS, MEL_FMIN, MEL_FMAX).to(wav.device, wav.dtype)
    mel = torch.log(torch.clamp(basis @ mag, min=MEL_LOG_FLOOR))
    return mel.reshape(*shape, DECODER_MEL_BINS, mel.shape[-1])


def f0_track(wav: torch.Tensor, frames: int) -> torch.Tensor:
    """F0 in Hz per mel frame (0 = unvoiced), frames framed like ``decoder_mel``: wav (n,) -> (frames,).

    Normalised autocorrelation (NCCF) over the 1024-sample frame; the period is the peak of the first run of lags
    whose NCCF is within 10 % of the best in [1/F0_MAX, 1/F0_MIN] (avoids octave-down errors), refined by a
    parabola through its neighbours; voiced if the best NCCF exceeds
    ``VOICING_NCCF`` and the frame is within 40 dB of the loudest. Targets for the F0 predictor only.
    """
    x = torch.nn.functional.pad(wav.reshape(1, 1, -1).float(), (MEL_PAD, MEL_PAD), mode="reflect").flatten()
    fr = x.unfold(0, MEL_N_FFT, DECODER_HOP)[:frames]
    fr = fr - fr.mean(dim=1, keepdim=True)
    n = MEL_N_FFT
    ac = torch.fft.irfft(torch.fft.rfft(fr, 2 * n).abs().pow(2), 2 * n)[:, :n]
    e = torch.cumsum(fr.pow(2), dim=1)  # e[k] = sum_{t <= k} x_t^2
    total = e[:, -1:]
    head = e.flip(1)  # head[lag] = sum_{t < n - lag} x_t^2 (the first part of the product)
    tail = total - torch.cat([torch.zeros_like(total), e[:, :-1]], dim=1)  # tail[lag] = sum_{t >= lag} x_t^2
    nccf = ac / torch.sqrt(head * tail).clamp_min(1e-12)
    lo, hi = int(DECODER_SAMPLE_RATE / F0_MAX), int(math.ceil(DECODER_SAMPLE_RATE / F0_MIN))
    r = nccf[:, lo: hi + 1]
    best = r.max(dim=1).values
    near = r >= 0.9 * best[:, None]
    first_run = near & ~(torch.cumsum((torch.cumsum(near, 1) > 0) & ~near, 1) > 0)  # first run of lags near best
    peak = torch.where(first_run, r, torch.full_like(r, -2.0)).argmax(dim=1).clamp(1, r.shape[1] - 2)
    y0, y1, y2 = (r.gather(1, (peak + d)[:, None]).squeeze(1) for d in (-1, 0, 1))
    shift = (0.5 * (y0 - y2) / (y0 - 2 * y1 + y2).clamp_max(-1e-9)).clamp(-0.5, 0.5)  # parabolic refinement
    f0 = DECODER_SAMPLE_RATE / (peak + lo + shift)
    rms = total.squeeze(1).div(n).sqrt()
    loud = 20 * torch.log10(rms.clamp_min(1e-9) / rms.max().clamp_min(1e-9)) > VOICING_FLOOR_DB
    voiced = (best > VOICING_NCCF) & loud
    out = torch.zeros(frames)
    out[: f0.shape[0]] = torch.where(voiced, f0, torch.zeros_like(f0))
    return out


# --- corpus ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecoderUtterance:
    """One answer of the target voice: its 22.05 kHz file and its speech tokens (None: vocoder-only use)."""

    id: str
    path: str  # absolute path of the 22.05 kHz audio
    tokens: np.ndarray | None  # (T,) int64
    n_tokens: int  # len(tokens), or the 12.5 Hz token count of the audio when there are no tokens

    @property
    def frames(self) -> int:
        return feat_len(self.n_tokens)


def load_decoder_corpus(corpus_dir: str, *, split: str = "train", vocab_size: int, voice: str | None = None,
                        max_token_mismatch: float = 2.0, need_tokens: bool = True, tokens: str = "tokens",
                        ) -> tuple[list[DecoderUtterance], Counter]:
    """Target-voice rows (answers, and "speech" rows of decoder-only corpora; ``voice`` picks one voice) with a
    22.05 kHz file and a token file.

    A row is skipped, and counted by reason, when its tokens are missing, empty, out of ``[0, vocab_size)``, or
    their count disagrees with the audio duration by more than ``max_token_mismatch`` tokens (a stale token file).
    ``need_tokens=False`` (the vocoder alone, which can train before the tokenizer exists) keeps rows without a
    token file, framed on ceil(duration · 12.5) tokens. ``tokens`` names the corpus's token subfolder (another
    tokenizer's codes, ``glm4voice data tokens --out``). Returns (utterances, skipped reasons).
    """
    from glm4voice.train.corpus import TARGET_ROLES, load_manifest, token_path

    tokens_dir = os.path.join(corpus_dir, tokens)
    check = load_manifest(corpus_dir, split=split, role=TARGET_ROLES)
    skipped = Counter(reason.split(":")[0] for _, reason in check.problems)
    out = []
    for r in check.rows:
        if "path_22k" not in r or (voice is not None and r["voice"] != voice):
            continue
        path, tp = os.path.join(corpus_dir, r["path_22k"]), token_path(corpus_dir, r["id"], tokens_dir=tokens_dir)
        if not os.path.exists(tp):
            if need_tokens:
                skipped["no tokens"] += 1
            else:
                out.append(DecoderUtterance(r["id"], path, None, max(1, math.ceil(r["duration"] * TOKEN_RATE_HZ))))
            continue
        codes = np.load(tp, allow_pickle=False).astype(np.int64).reshape(-1)
        if codes.size == 0:
            skipped["empty tokens"] += 1
        elif codes.min() < 0 or codes.max() >= vocab_size:
            skipped[f"token outside [0, {vocab_size})"] += 1
        elif abs(codes.size - r["duration"] * TOKEN_RATE_HZ) > max_token_mismatch:
            skipped["token count != duration"] += 1
        else:
            out.append(DecoderUtterance(r["id"], path, codes, codes.size))
    if skipped:
        log.warning("decoder corpus %s (%s): skipped %s", corpus_dir, split, dict(skipped))
    return out, skipped


def aligned_audio(wav: np.ndarray | torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Pad with silence / trim to feat_len(n_tokens) · 256 samples (see the module docstring)."""
    wav = torch.as_tensor(wav, dtype=torch.float32).flatten()
    n = feat_len(n_tokens) * DECODER_HOP
    return torch.nn.functional.pad(wav, (0, max(0, n - wav.numel())))[:n]


class FeatureCache:
    """(mel (80, F), audio (256 F,), f0 (F,)) of each utterance, computed on first use; a bounded LRU cache.

    Computing one is cheap (~4 ms CPU for a 2.5 s answer, FLAC decoding included), so the cache stays small
    (~0.3 MB per answer) rather than holding the corpus in memory.
    """

    def __init__(self, utts: list[DecoderUtterance], max_items: int = 256):
        self.utts = utts
        self.get = lru_cache(maxsize=max_items)(self._compute)

    def _compute(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import soundfile as sf

        u = self.utts[index]
        wav, sr = sf.read(u.path, dtype="float32", always_2d=True)
        if sr != DECODER_SAMPLE_RATE:
            raise AudioError(f"{u.path}: {sr} Hz, the decoder trains on {DECODER_SAMPLE_RATE} Hz audio")
        wav = wav.mean(axis=1)
        peak = float(np.abs(wav).max()) if wav.size else 0.0
        if peak > 1.0:  # as CosyVoice's processor: only audio that would clip is normalised
            wav = wav / peak
        audio = aligned_audio(wav, u.n_tokens)
        return decoder_mel(audio), audio, f0_track(audio, u.frames)


# --- flow batches ---------------------------------------------------------------------------------------------------
@dataclass
class FlowBatch:
    """One flow-matching batch; every random choice of the loss is in here.

    tokens (B, L) int64; mel (B, 80, F) with F = feat_len(L); prompt (B,) frames given as the prompt condition
    (and left out of the loss); drop (B,) bool, guidance dropout (mu, speaker and prompt zeroed); t (B,) in
    [0, 1) before the cosine warp; z (B, 80, F) the noise.
    """

    tokens: torch.Tensor
    mel: torch.Tensor
    prompt: torch.Tensor
    drop: torch.Tensor
    t: torch.Tensor
    z: torch.Tensor

    def to(self, device: torch.device | str) -> FlowBatch:
        return FlowBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def batch_rng(seed: int, step: int, rank: int) -> tuple[np.random.Generator, torch.Generator]:
    """Independent generators for one (seed, step, rank)."""
    rng = np.random.default_rng([seed, step, rank])
    return rng, torch.Generator().manual_seed(int(rng.integers(2**62)))


class FlowBatches:
    """``batch(step, rank, world) -> FlowBatch``: windows of L tokens (L drawn per step, the same in the batch).

    Windows: with probability ``p_prefix`` a prefix [0, L) (offline decoding and the official stream, which
    decodes growing prefixes), else [s, s + L) with s a multiple of the encoder's 10-token block (the low-latency
    stream's windows). L is drawn uniformly in [min_tokens, max_tokens], so most windows end mid-utterance: the
    flow learns to finish a block without right context, which is what block-wise streaming asks of it.
    Prompt: with probability ``p_prompt`` the first U[0, max_prompt · F] frames are the prompt condition.
    Guidance dropout: with probability ``p_drop`` (0.2 in the released config) the conditions are zeroed.
    """

    def __init__(self, utts: list[DecoderUtterance], features: FeatureCache, batch_size: int, seed: int, *,
                 min_tokens: int = 10, max_tokens: int = 100, p_prefix: float = 0.5, p_prompt: float = 0.5,
                 max_prompt: float = 0.8, p_drop: float = 0.2):
        if not utts or any(u.tokens is None for u in utts):
            raise ValueError("the flow trains on utterances with speech tokens")
        self.utts, self.features, self.batch_size, self.seed = utts, features, batch_size, seed
        self.order = sorted(range(len(utts)), key=lambda i: len(utts[i].tokens))
        self.lengths = np.array([len(utts[i].tokens) for i in self.order])
        self.min_tokens, self.max_tokens = min_tokens, min(max_tokens, int(self.lengths[-1]))
        self.p_prefix, self.p_prompt, self.max_prompt, self.p_drop = p_prefix, p_prompt, max_prompt, p_drop

    def __call__(self, step: int, rank: int = 0, world: int = 1) -> FlowBatch:
        rng, gen = batch_rng(self.seed, step, rank)
        n = int(rng.integers(min(self.min_tokens, self.max_tokens), self.max_tokens + 1))
        first = int(np.searchsorted(self.lengths, n))  # utterances with at least n tokens
        picks = [self.order[int(i)] for i in rng.integers(first, len(self.order), self.batch_size)]
        f = feat_len(n)
        tokens, mels, prompts = [], [], []
        drop = rng.random(self.batch_size) < self.p_drop
        for b, i in enumerate(picks):
            u = self.utts[i]
            blocks = (len(u.tokens) - n) // FLOW_BLOCK_TOKENS
            s = 0 if rng.random() < self.p_prefix else FLOW_BLOCK_TOKENS * int(rng.integers(0, blocks + 1))
            mel = self.features.get(i)[0]
            tokens.append(torch.from_numpy(u.tokens[s: s + n]))
            mels.append(mel[:, feat_len(s): feat_len(s) + f])
            give = not drop[b] and rng.random() < self.p_prompt
            prompts.append(int(rng.integers(0, int(self.max_prompt * f) + 1)) if give else 0)
        t = torch.from_numpy(rng.random(self.batch_size)).float()
        z = torch.randn(self.batch_size, DECODER_MEL_BINS, f, generator=gen)
        return FlowBatch(torch.stack(tokens), torch.stack(mels), torch.tensor(prompts), torch.from_numpy(drop), t, z)


class FlowMelCache:
    """The flow's offline mel (80, feat_len(T)) of each utterance's reference tokens, made by a frozen decoder: the
    kind of mel the vocoder gets at inference. It lies on the utterance's frame grid like ``FeatureCache``'s real mel,
    so a crop of it pairs with the same crop of the real audio. Deterministic per utterance (its noise is seeded by
    the seed and the utterance's index), so resumed runs stay exact; a bounded LRU cache (~0.3 MB per answer)."""

    def __init__(self, utts: list[DecoderUtterance], decoder, *, seed: int = 0, max_items: int = 256):
        self.utts, self.decoder, self.seed = utts, decoder, seed
        self.get = lru_cache(maxsize=max_items)(self._compute)

    def _compute(self, index: int) -> torch.Tensor:
        u = self.utts[index]
        if u.tokens is None:
            raise ValueError(f"{u.id}: flow mels need the utterance's speech tokens (run `glm4voice data tokens`)")
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        mel = self.decoder.flow_mel(self.decoder.codes_tensor(u.tokens.tolist()), None, gen)
        return mel[0].float().cpu().clone()  # a normal tensor (flow_mel runs in inference mode)


# --- vocoder batches ------------------------------------------------------------------------------------------------
@dataclass
class VocoderBatch:
    """mel (B, 80, K) of real audio, audio (B, 256 K), f0 (B, K) targets in Hz (0 unvoiced), source noise."""

    mel: torch.Tensor
    audio: torch.Tensor
    f0: torch.Tensor
    noise: SourceNoise

    def to(self, device: torch.device | str) -> VocoderBatch:
        return VocoderBatch(self.mel.to(device), self.audio.to(device), self.f0.to(device),
                            SourceNoise(self.noise.phase.to(device), self.noise.noise.to(device)))


class VocoderBatches:
    """``batch(step, rank, world) -> VocoderBatch``: random crops of ``frames`` mel frames of real speech. With
    ``flow_mels``, a share ``p_flow`` of the crops takes its input mel from the flow's rendering of the utterance
    (``FlowMelCache``) instead of the real audio's; the targets (audio, F0) stay real."""

    def __init__(self, utts: list[DecoderUtterance], features: FeatureCache, batch_size: int, seed: int, *,
                 frames: int = 32, harmonics: int = 8, flow_mels: FlowMelCache | None = None, p_flow: float = 0.0):
        if not 0.0 <= p_flow <= 1.0:
            raise ValueError(f"p_flow must be in [0, 1], got {p_flow}")
        self.flow_mels, self.p_flow = flow_mels, p_flow
        self.utts = [i for i, u in enumerate(utts) if u.frames >= frames]
        if not self.utts:
            raise ValueError(f"no utterance has {frames} mel frames for vocoder crops")
        self.features, self.batch_size, self.seed, self.frames = features, batch_size, seed, frames
        self.harmonics = harmonics

    def __call__(self, step: int, rank: int = 0, world: int = 1) -> VocoderBatch:
        rng, gen = batch_rng(self.seed, step, rank)
        k = self.frames
        mels, audios, f0s = [], [], []
        for i in rng.integers(0, len(self.utts), self.batch_size):
            mel, audio, f0 = self.features.get(self.utts[int(i)])
            a = int(rng.integers(0, mel.shape[-1] - k + 1))
            if self.flow_mels is not None and rng.random() < self.p_flow:  # no draw without: old runs resume exactly
                mel = self.flow_mels.get(self.utts[int(i)])
            mels.append(mel[:, a: a + k])
            audios.append(audio[a * DECODER_HOP: (a + k) * DECODER_HOP])
            f0s.append(f0[a: a + k])
        h = self.harmonics + 1
        phase = (torch.rand(self.batch_size, h, 1, generator=gen) * 2 - 1) * math.pi
        noise = torch.randn(self.batch_size, h, k * DECODER_HOP, generator=gen)
        return VocoderBatch(torch.stack(mels), torch.stack(audios), torch.stack(f0s), SourceNoise(phase, noise))
