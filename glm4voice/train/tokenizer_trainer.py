"""Train the speech tokenizer (WhisperVQ) on ASR with a VQ bottleneck (paper §2.1, SPEC §1.6).

The model is the inference encoder (causal convolutions, block-causal attention, average pooling to 12.5 Hz)
followed, during training only, by the EMA vector quantiser (``train/vq.py``), ``post_layers`` more encoder
layers at 12.5 Hz over the quantised vectors, and an ASR head that must transcribe the utterance from them. The
codes therefore keep what the transcript needs. Two heads:

- ``ctc`` (default): the 12.5 Hz states upsampled 4x (repeat + convolution) and a CTC classifier over UTF-8 bytes.
  It needs no learned alignment and trains in a few hundred CPU steps;
- ``attention``: a small Whisper-style text decoder (``train/asr_head.py``), as the paper describes. Measured on
  our corpus (runs/tokenizer_v1, batch 24, 2-core CPU): after 400 steps its cross-attention had not aligned (the
  same hypothesis for every input, loss stuck at the text prior), so it suits long GPU runs, not our budget.

Data: a corpus made by ``glm4voice data synth`` (16 kHz FLAC + manifest.jsonl). Transcripts are UTF-8 bytes
(vocabulary 256 + BOS + EOS), which serves English and Chinese alike. Batches are drawn from duration-sorted
neighbours (little padding) and are a pure function of (seed, step, rank), so runs resume exactly.

Output: ``--export`` folder in the official layout (``config.json`` + ``model.safetensors`` with the EMA
buffers, loadable by ``SpeechTokenizer.from_pretrained``) plus ``asr_branch.safetensors`` / ``asr_branch.json``
(post-VQ layers and the text decoder) so the evaluation can measure ASR error through the tokens.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from glm4voice.audio import log_mel_whisper
from glm4voice.constants import MEL_HOP, TOKEN_HOP_SAMPLES, TOKENIZER_SAMPLE_RATE
from glm4voice.tokenizer.config import TokenizerConfig
from glm4voice.tokenizer.model import EncoderLayer, WhisperVQEncoder, block_causal_mask
from glm4voice.train.asr_head import ASRHead, ASRHeadConfig
from glm4voice.train.vq import EMAVectorQuantizer, VQConfig

log = logging.getLogger("glm4voice.train.tokenizer")

BOS, EOS = 256, 257  # byte-level transcript vocabulary: bytes 0..255, then BOS, EOS
ASR_VOCAB = 258
ASR_BRANCH_WEIGHTS = "asr_branch.safetensors"
ASR_BRANCH_CONFIG = "asr_branch.json"
FRAMES_PER_TOKEN = TOKEN_HOP_SAMPLES // MEL_HOP  # 8 mel frames per 12.5 Hz code


@dataclass(frozen=True)
class TokenizerTrainSpec:
    """Sizes of a tokenizer to train; the defaults are the embedded model's."""

    d_model: int = 256
    heads: int = 4
    ffn: int = 1024
    layers: int = 4  # encoder layers before pooling + VQ (quantize_position)
    post_layers: int = 2  # training-only layers after the VQ
    codebook: int = 1024
    block: int = 100  # block-causal attention block, 50 Hz positions (2 s)
    asr_dim: int = 256
    asr_layers: int = 2
    asr_heads: int = 4
    ctc: int = 1  # 1: CTC head over bytes (default); 0: attention text decoder
    vq_warmup: int = 200  # training steps without quantisation before the codebook is initialised from data
    # Weight of the commitment loss is vq_loss_scale x 0.25. The official 10 (weight 2.5) let the commitment term
    # (~1.0) outweigh the CTC loss of this small model after the VQ came on, and the ASR branch lost what it had
    # learned (CTC 1.2 -> 2.4 per byte, docs/model_card.md); 1.0 gives the usual VQ-VAE weight 0.25.
    vq_loss_scale: float = 10.0
    # Auxiliary CTC target: espeak-ng phonemes of the transcript (train/phonemes.py), read by a second head from
    # the same post-VQ states, weighted by phone_weight (0: off). ``phones`` is the size of the run's phoneme
    # inventory (set from the corpus, saved in the run folder's phones.json).
    phone_weight: float = 0.0
    phones: int = 0
    # 1: the training-only post-VQ layers attend over the whole utterance instead of the encoder's 2 s blocks (an
    # ASR reader of the codes may look ahead; the codes themselves stay block-causal); ``tokenizer-asr --post-full``
    post_full: int = 0

    def tokenizer_config(self) -> TokenizerConfig:
        cfg = TokenizerConfig(d_model=self.d_model, encoder_attention_heads=self.heads, encoder_ffn_dim=self.ffn,
                              encoder_layers=self.layers + self.post_layers, pooling_position=self.layers,
                              quantize_position=self.layers, quantize_vocab_size=self.codebook,
                              quantize_causal_block_size=self.block)
        cfg.validate("tokenizer spec")
        return cfg

    def asr_config(self) -> ASRHeadConfig:
        return ASRHeadConfig(vocab_size=ASR_VOCAB, dim=self.asr_dim, layers=self.asr_layers, heads=self.asr_heads,
                             bos_id=BOS, eos_id=EOS)


class TokenizerTrainModel(nn.Module):
    """Encoder -> EMA VQ -> post-VQ layers -> ASR text decoder."""

    def __init__(self, spec: TokenizerTrainSpec, vq: VQConfig | None = None):
        super().__init__()
        self.spec = spec
        self.cfg = spec.tokenizer_config()
        self.encoder = WhisperVQEncoder(self.cfg)
        self.encoder.codebook.weight.requires_grad_(False)  # the VQ's codebook is the one that trains (EMA)
        self.vq = EMAVectorQuantizer(vq or VQConfig(codebook_size=spec.codebook, dim=spec.d_model,
                                                    loss_scale=spec.vq_loss_scale,
                                                    restart_interval=20, restart_threshold=0.03))
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self.post = nn.ModuleList(EncoderLayer(self.cfg) for _ in range(spec.post_layers))
        self.post_ln = nn.LayerNorm(spec.d_model)
        self.asr = CTCHead(spec.d_model, self.cfg.pooling_kernel_size) if spec.ctc else \
            ASRHead(spec.asr_config(), spec.d_model)
        self.pieces: list[bytes] | None = None  # None: the head writes UTF-8 bytes
        self.phone = CTCHead(spec.d_model, self.cfg.pooling_kernel_size, spec.phones + 1) if spec.phones else None
        # where the codebook comes from when the warm-up ends: None = the states of that step's batch
        # (``EMAVectorQuantizer.init_from``); a callable (model -> (N, d) states, e.g. ``codebook_states``) = k-means
        # over them (``init_kmeans``, ``kmeans_iters`` Lloyd iterations)
        self.codebook_source = None
        self.kmeans_iters = 20
        self._codebook_fitted = False  # by init_codebook in this process (a resumed run knows by vq.updates > 0)

    def use_pieces(self, pieces: list[bytes]) -> None:
        """Replace the ASR head by a fresh one over word pieces (``pieces[i]`` = the bytes of label i): a CTC head
        (``spec.ctc`` = 1; label ``len(pieces)`` is the blank) or the attention decoder (``spec.ctc`` = 0; ids
        ``len(pieces)`` and ``len(pieces) + 1`` are its BOS and EOS)."""
        n = len(pieces)
        if self.spec.ctc:
            self.asr = CTCHead(self.spec.d_model, self.cfg.pooling_kernel_size, n + 1)
        else:
            self.asr = ASRHead(replace(self.spec.asr_config(), vocab_size=n + 2, bos_id=n, eos_id=n + 1),
                               self.spec.d_model)
        self.pieces = list(pieces)

    def encode(self, feats: Tensor, frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Pre-VQ hidden states (B, N/8, d) and their validity (B, N/8), as the inference encoder computes. The
        batches are made on the CPU; they move to the model's device here (a CUDA run failed without, session 13)."""
        enc = self.encoder
        feats, frame_mask = feats.to(enc.conv1.weight.device), frame_mask.to(enc.conv1.weight.device)
        x = enc.add_positions(enc.conv_front(feats, at_start=True), 0)
        mask = block_causal_mask(frame_mask[:, ::2], 0, x.shape[1], self.cfg.quantize_causal_block_size, x.dtype)
        x, _ = enc.run_layers(x, mask)
        return enc.pool(x), frame_mask[:, ::FRAMES_PER_TOKEN].bool()

    def memory(self, q: Tensor, valid: Tensor) -> Tensor:
        """Post-VQ layers over the quantised vectors (positions from ``embed_positions2``, as official)."""
        x = q + self.encoder.embed_positions2.weight[: q.shape[1]].to(q.dtype)
        block = x.shape[1] if self.spec.post_full else \
            self.cfg.quantize_causal_block_size // self.cfg.pooling_kernel_size
        mask = block_causal_mask(valid, 0, x.shape[1], block, x.dtype)
        for layer in self.post:
            x, _ = layer(x, mask)
        return self.post_ln(x)

    def forward(self, feats: Tensor, frame_mask: Tensor, targets: list[list[int]],
                phone_targets: list[list[int]] | None = None) -> tuple[Tensor, dict]:
        h, valid = self.encode(feats, frame_mask)
        warm_up = self.training and not self.quantizing  # warm-up: no bottleneck yet
        if self.training:
            self.steps_seen += 1
            if self.quantizing and int(self.vq.updates) == 0 and not self._codebook_fitted:
                # the last warm-up step, or a run resumed with --vq-warmup at or below its step (the warm-up "ended"
                # while it was stopped): a codebook never fitted nor updated is fitted to these states
                self.init_codebook(h.detach().float()[valid])
        if warm_up:
            q, vq_loss, stats = h, h.new_zeros(()), {"vq_loss": 0.0, "codes_used": 0}
        else:
            q, _, vq_loss, stats = self.vq(h.float(), valid)
        memory = self.memory(q.to(h.dtype), valid)
        # rows without an ASR target (None: a language the head does not transcribe) are left out of its loss; an
        # empty CTC target instead would cost every frame of the row, unnormalised, and swamp the loss (session 18)
        rows = [i for i, t in enumerate(targets) if t is not None]
        if len(rows) == len(targets):
            asr_loss = self.asr.loss(memory, valid, [t[:250] for t in targets])
        elif rows:
            asr_loss = self.asr.loss(memory[rows], valid[rows], [targets[i][:250] for i in rows])
        else:
            asr_loss = memory.float().sum() * 0.0
        stats.update(asr_loss=float(asr_loss.detach()))
        loss = asr_loss + vq_loss
        if self.phone is not None and phone_targets is not None and self.spec.phone_weight > 0:
            phone_loss = self.phone.loss(memory, valid, [t[:250] for t in phone_targets])
            stats.update(phone_loss=float(phone_loss.detach()))
            loss = loss + self.spec.phone_weight * phone_loss
        return loss, stats

    @torch.no_grad()
    def init_codebook(self, batch_states: Tensor) -> None:
        """Fit the codebook when the warm-up ends: k-means over ``codebook_source``'s states when one is set, else
        ``init_from`` this batch's states."""
        self._codebook_fitted = True
        if self.codebook_source is None:
            self.vq.init_from(batch_states)
            return
        states = self.codebook_source(self)
        stats = self.vq.init_kmeans(states, iters=self.kmeans_iters, generator=torch.Generator().manual_seed(0))
        log.info("codebook: k-means over %d states (%d iterations): squared error per dim %.4f -> %.4f, "
                 "%d empty clusters re-seeded", states.shape[0], self.kmeans_iters, stats["mse_start"],
                 stats["mse"], stats["reseeded"])

    @property
    def quantizing(self) -> bool:
        """Whether training has passed the VQ warm-up (before it, the codebook is not fitted to the states)."""
        return int(self.steps_seen) >= self.spec.vq_warmup

    @torch.no_grad()
    def transcribe(self, feats: Tensor, frame_mask: Tensor, *, quantize: bool = True
                   ) -> tuple[list[str], list[list[int]]]:
        """Transcripts through the codes (``quantize``, what inference sees), or through the unquantised states
        (what the ASR branch was trained on during the VQ warm-up); the codes are returned either way."""
        texts, codes, _ = self.transcribe_all(feats, frame_mask, quantize=quantize, phones=False)
        return texts, codes

    @torch.no_grad()
    def transcribe_all(self, feats: Tensor, frame_mask: Tensor, *, quantize: bool = True, phones: bool = True
                       ) -> tuple[list[str], list[list[int]], list[list[int]] | None]:
        """``transcribe`` plus the phoneme labels of the auxiliary head (None when ``phones`` is False), from one
        pass through the encoder."""
        if phones and self.phone is None:
            raise ValueError("this model has no phoneme head (spec.phones = 0)")
        memory, valid, ids = self.read(feats, frame_mask, quantize=quantize)
        texts = self.greedy_text(memory, valid)
        codes = [ids[i][valid[i]].tolist() for i in range(ids.shape[0])]
        return texts, codes, self.phone.greedy(memory, valid) if phones else None

    def read(self, feats: Tensor, frame_mask: Tensor, *, quantize: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Post-VQ memory the heads read, its validity, and the codes (B, N/8)."""
        h, valid = self.encode(feats, frame_mask)
        ids = self.vq.nearest(h.reshape(-1, h.shape[-1]).float()).view(h.shape[:2])
        q = self.vq.codebook(ids).to(h.dtype) if quantize else h
        return self.memory(q, valid), valid, ids

    def greedy_text(self, memory: Tensor, valid: Tensor) -> list[str]:
        """The ASR head's greedy transcripts of post-VQ ``memory``; an attention decoder over word pieces stops at
        one piece per code (+7), over bytes at four."""
        stop = {} if isinstance(self.asr, CTCHead) else {"per_position": 4.0 if self.pieces is None else 1.0}
        return [self.decode_text(row) for row in self.asr.greedy(memory, valid, **stop)]

    def decode_text(self, ids: list[int]) -> str:
        """ASR head output -> text: UTF-8 bytes, or the byte strings of ``pieces`` (a refitted word-piece head)."""
        if self.pieces is None:
            data = bytes(b for b in ids if b < 256)
        else:
            data = b"".join(self.pieces[i] for i in ids if 0 <= i < len(self.pieces))
        return data.decode("utf-8", errors="replace")


class CTCHead(nn.Module):
    """12.5 Hz states -> ``up``x repeat -> conv (k 5) + GELU -> CTC logits over ``classes - 1`` labels + blank (the
    last id): 256 UTF-8 bytes by default, or the word pieces of a refitted branch (``train/tokenizer_asr.py``)."""

    BLANK = 256  # of the byte head

    def __init__(self, dim: int, up: int, classes: int = 257):
        super().__init__()
        self.up = up
        self.blank = classes - 1
        self.conv = nn.Conv1d(dim, dim, 5, padding=2)
        self.out = nn.Linear(dim, classes)

    def logits(self, memory: Tensor) -> Tensor:
        x = memory.repeat_interleave(self.up, dim=1).transpose(1, 2)
        return self.out(torch.nn.functional.gelu(self.conv(x)).transpose(1, 2))  # (B, T*up, classes)

    def loss(self, memory: Tensor, valid: Tensor, targets: list[list[int]]) -> Tensor:
        logp = self.logits(memory).float().log_softmax(-1).transpose(0, 1)  # (T, B, C)
        in_len = valid.sum(1) * self.up
        tgt = torch.tensor([b for t in targets for b in t], dtype=torch.long, device=memory.device)
        tgt_len = torch.tensor([len(t) for t in targets])
        return torch.nn.functional.ctc_loss(logp, tgt, in_len.cpu(), tgt_len, blank=self.blank, zero_infinity=True)

    @torch.no_grad()
    def greedy(self, memory: Tensor, valid: Tensor) -> list[list[int]]:
        best = self.logits(memory).argmax(-1)
        out = []
        for row, n in zip(best.tolist(), (valid.sum(1) * self.up).tolist(), strict=True):
            seq, prev = [], None
            for c in row[:n]:
                if c != prev and c != self.blank:
                    seq.append(c)
                prev = c
            out.append(seq)
        return out


# ---- data ------------------------------------------------------------------------------------------------
@dataclass
class Utterance:
    id: str
    text: str
    language: str
    voice: str
    pcm: np.ndarray  # int16 at 16 kHz
    phones: list[int] | None = None  # phoneme labels (auxiliary target), when the run uses them


def load_corpus(corpus_dir: str, *, split: str, max_seconds: float, limit: int | None = None,
                seed: int = 0, voices: set[str] | frozenset[str] | None = None,
                per_voice: int | None = None) -> list[Utterance]:
    """The corpus's utterances of ``split`` (train / heldout) up to ``max_seconds``, audio in memory (int16);
    only those of ``voices`` when given; at most ``limit`` in all and ``per_voice`` of each voice, drawn with
    ``seed``."""
    import soundfile as sf
    from tqdm import tqdm

    from glm4voice.train.corpus import load_manifest

    rows = [r for r in load_manifest(corpus_dir).rows if r["split"] == split and r["duration"] <= max_seconds
            and (voices is None or r["voice"] in voices)]
    if per_voice is not None:
        by_voice: dict[str, list[dict]] = {}
        for r in rows:
            by_voice.setdefault(r["voice"], []).append(r)
        rng = random.Random(seed)
        rows = [r for v in sorted(by_voice) for r in
                (rng.sample(by_voice[v], per_voice) if len(by_voice[v]) > per_voice else by_voice[v])]
    if limit is not None and len(rows) > limit:
        rows = random.Random(seed).sample(rows, limit)
    out = []
    for r in tqdm(rows, desc=f"loading {split} audio", disable=len(rows) < 200):
        pcm, sr = sf.read(os.path.join(corpus_dir, r["path"]), dtype="int16")
        if sr != TOKENIZER_SAMPLE_RATE:
            raise ValueError(f"{r['path']}: {sr} Hz, expected {TOKENIZER_SAMPLE_RATE}")
        out.append(Utterance(r["id"], r["text"], r["language"], r["voice"], pcm))
    return out


def manifest_languages(corpus_dir: str) -> set[str]:
    """The languages of a corpus's manifest rows, read without opening any audio."""
    from glm4voice.train.corpus import MANIFEST, read_jsonl

    path = os.path.join(corpus_dir, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{corpus_dir} has no {MANIFEST}: not a corpus folder")
    return {r["language"] for r in read_jsonl(path)[0] if "language" in r}  # load_manifest reports the bad rows


def featurize(pcms: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Whisper features of a batch padded to a multiple of 1280 samples, and the valid-frame mask (B, N)."""
    n = max(1, math.ceil(max(len(p) for p in pcms) / TOKEN_HOP_SAMPLES)) * TOKEN_HOP_SAMPLES
    batch = torch.zeros(len(pcms), n)
    for i, p in enumerate(pcms):
        batch[i, : len(p)] = torch.from_numpy(p.astype(np.float32) / 32768.0)
    feats = log_mel_whisper(batch)
    lengths = torch.tensor([len(p) for p in pcms])
    frame_mask = (torch.arange(feats.shape[-1]) * MEL_HOP)[None] < lengths[:, None]
    return feats, frame_mask


def vtlp_warp(feats: Tensor, alpha: float, *, knee: float = 0.85) -> Tensor:
    """Vocal-tract-length perturbation of log-mel features (n_mels, frames), done on the mel axis.

    The warp of Jaitly & Hinton (2013, "Vocal Tract Length Perturbation improves speech recognition"): a frequency
    f becomes alpha * f below a knee, then a straight line that keeps the band edge (8 kHz) in place. Each output
    bin reads the input at the source frequency of its centre, interpolated linearly between neighbouring bins, so
    alpha > 1 moves formants up (a shorter vocal tract), alpha < 1 down. alpha = 1 returns the input unchanged."""
    from glm4voice.audio import mel_centres

    if alpha == 1.0:
        return feats
    n = feats.shape[0]
    centres = mel_centres(n)
    top = float(centres[-1])
    k = knee * top * min(1.0, 1.0 / alpha)  # source knee: alpha * k stays below the edge
    src = np.where(centres <= alpha * k, centres / alpha,
                   k + (centres - alpha * k) * (top - k) / (top - alpha * k))
    pos = torch.from_numpy(np.interp(src, centres, np.arange(n, dtype=np.float64))).to(feats.dtype)
    lo = pos.floor().long().clamp(0, n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo.to(pos.dtype))[:, None].to(feats.device)
    return feats[lo] * (1 - w) + feats[hi] * w


def shifted_features(pcm: np.ndarray, semitones: float, frames: int) -> Tensor:
    """Features (n_mels, ``frames``) of ``pcm`` with every frequency scaled by 2^(semitones/12), at the original
    tempo. Resampling the audio scales frequency and duration together (a speaker with a shorter or longer vocal
    tract and a higher or lower voice); the features' valid frames are then stretched back to ``frames`` (the clean
    utterance's valid frame count), so they line up with the clean utterance's frame by frame."""
    r = 2.0 ** (semitones / 12.0)
    x = pcm.astype(np.float32)
    if r != 1.0 and len(x) >= 2:
        n = max(2, round(len(x) / r))
        x = np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x)
    feats, mask = featurize([x])
    m = max(1, int(mask[0].sum()))
    part = feats[:, :, :m]
    if m != frames:
        part = torch.nn.functional.interpolate(part, size=frames, mode="linear", align_corners=True)
    return part[0]


def tilt(feats: Tensor, db: float) -> Tensor:
    """``feats`` (n_mels, frames; Whisper log-mel, 1 unit = 40 dB) with a spectral slope of ``db`` dB from the
    lowest to the highest band (positive: brighter)."""
    n = feats.shape[0]
    return feats + (db / 40.0) * torch.linspace(-0.5, 0.5, n, dtype=feats.dtype)[:, None]


ASR_LANGUAGES = ("en", "zh")  # what the ASR head transcribes; other languages' rows train the phoneme head only


def codebook_states(utts: list[Utterance], frames: int, *, batch_size: int = 16, seed: int = 0):
    """A ``TokenizerTrainModel.codebook_source``: the model's pre-VQ states of about ``frames`` 12.5 Hz positions
    from a seeded sample of ``utts`` (clean features, no augmentation), computed when called."""
    if frames <= 0 or not utts:
        raise ValueError("codebook_states needs frames > 0 and utterances")

    def states(model: TokenizerTrainModel) -> Tensor:
        order = random.Random(seed).sample(range(len(utts)), len(utts))
        out, total = [], 0
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for i in range(0, len(order), batch_size):
                    h, valid = model.encode(*featurize([utts[j].pcm for j in order[i: i + batch_size]]))
                    out.append(h.float()[valid].cpu())
                    total += out[-1].shape[0]
                    if total >= frames:
                        break
        finally:
            model.train(was_training)
        log.info("codebook: %d pre-VQ states from %d utterances", min(total, frames), min(i + batch_size, len(order)))
        return torch.cat(out)[:frames].to(model.vq.codebook.weight.device)

    return states


def text_ids(text: str) -> list[int]:
    """ASR targets: UTF-8 bytes of the lower-cased transcript."""
    return list(text.lower().encode("utf-8"))


def asr_targets(u: Utterance) -> list[int] | None:
    """``u``'s ASR targets: its transcript's bytes, or None for a language the head does not transcribe (a
    speaker-variety row, ``glm4voice data variety``): the ASR loss leaves such a row out, and it trains the encoder
    through the phoneme head only."""
    return text_ids(u.text) if u.language in ASR_LANGUAGES else None


class Batches:
    """batch(step, rank, world): ``batch_size`` duration-neighbours starting at a seeded random position.

    Augmentation for unseen speakers (off by default; every draw comes from the step's RNG, so a resumed run sees
    the same batches): ``speed`` resamples each utterance by a factor in [1 - speed, 1 + speed] (tempo and pitch
    change together, Kaldi-style speed perturbation); ``vtlp`` warps each utterance's mel axis by a factor in
    [1 - vtlp, 1 + vtlp] (``vtlp_warp``: formants move, pitch and tempo do not); ``spec_masks`` masks that many
    frequency bands (up to 12 mel bins) and time spans (up to 0.25 s) of each utterance's features with its mean
    (SpecAugment)."""

    def __init__(self, utts: list[Utterance], batch_size: int, seed: int, *, speed: float = 0.0,
                 spec_masks: int = 0, vtlp: float = 0.0, pitch: float = 0.0, tilt: float = 0.0):
        if pitch < 0 or tilt < 0:
            raise ValueError(f"pitch and tilt ranges must be >= 0, not {pitch}, {tilt}")
        if not 0.0 <= speed < 0.5 or spec_masks < 0 or not 0.0 <= vtlp < 0.5:
            raise ValueError(f"speed perturbation and VTLP must be in [0, 0.5) and spec masks >= 0, not {speed}, "
                             f"{vtlp}, {spec_masks}")
        self.utts = sorted(utts, key=lambda u: len(u.pcm))
        self.batch_size, self.seed = batch_size, seed
        self.speed, self.spec_masks, self.vtlp = speed, spec_masks, vtlp
        self.pitch, self.tilt = pitch, tilt

    def __call__(self, step: int, rank: int, world: int):
        part, rng = self.pick(step, rank)
        feats, mask = self.features(part, rng)
        if part and all(u.phones is not None for u in part):
            return feats, mask, [asr_targets(u) for u in part], [u.phones for u in part]
        return feats, mask, [asr_targets(u) for u in part]

    def pick(self, step: int, rank: int) -> tuple[list[Utterance], random.Random]:
        """The step's utterances and the RNG that draws their augmentation."""
        rng = random.Random((self.seed * 1_000_003 + step) * 997 + rank)
        start = rng.randrange(max(1, len(self.utts) - self.batch_size + 1))
        return self.utts[start: start + self.batch_size], rng

    def features(self, part: list[Utterance], rng: random.Random) -> tuple[Tensor, Tensor]:
        """Augmented features of ``part`` and their valid-frame mask."""
        pcms = [self._perturb(u.pcm, rng) for u in part]
        feats, mask = featurize(pcms)
        self.augment(feats, mask, pcms, rng)
        return feats, mask

    def augment(self, feats: Tensor, mask: Tensor, pcms: list[np.ndarray], rng: random.Random,
                rows: list[int] | None = None) -> None:
        """Pitch, VTLP and tilt on ``rows`` of ``feats`` (default: all; ``pcms`` their audio), then spec masks on
        every row, in place. Each option draws in its own pass, in the order the options were added, so runs
        without the newer options keep their batches."""
        rows = list(range(feats.shape[0])) if rows is None else rows
        if self.pitch:
            for b in rows:
                frames = int(mask[b].sum())
                feats[b, :, :frames] = shifted_features(pcms[b], rng.uniform(-self.pitch, self.pitch), frames)
        if self.vtlp:
            for b in rows:
                feats[b] = vtlp_warp(feats[b], rng.uniform(1 - self.vtlp, 1 + self.vtlp))
        if self.tilt:
            for b in rows:
                frames = int(mask[b].sum())
                feats[b, :, :frames] = tilt(feats[b, :, :frames], rng.uniform(-self.tilt, self.tilt))
        if self.spec_masks:
            self._mask(feats, mask, rng)

    def _perturb(self, pcm: np.ndarray, rng: random.Random) -> np.ndarray:
        if not self.speed or len(pcm) < 2:
            return pcm
        n = max(2, round(len(pcm) / rng.uniform(1 - self.speed, 1 + self.speed)))
        return np.interp(np.linspace(0, len(pcm) - 1, n), np.arange(len(pcm)), pcm.astype(np.float32))

    def _mask(self, feats: Tensor, mask: Tensor, rng: random.Random) -> None:
        n_mels = feats.shape[1]
        for b in range(feats.shape[0]):
            frames = int(mask[b].sum())
            fill = feats[b, :, :frames].mean()
            for _ in range(self.spec_masks):
                w = rng.randint(0, min(12, n_mels // 4))
                f0 = rng.randint(0, n_mels - w)
                feats[b, f0:f0 + w, :frames] = fill
                t = rng.randint(0, min(25, frames // 5))
                t0 = rng.randint(0, max(0, frames - t))
                feats[b, :, t0:t0 + t] = fill


def error_rates(refs: list[str], hyps: list[str], languages: list[str]) -> dict:
    """Word error rate over English references, character error rate over the others (Chinese), with the
    evaluation harness's normalisation (``glm4voice.eval.metrics``), so training and ``glm4voice eval`` agree."""
    from glm4voice.eval.metrics import corpus_error_rate

    out = {}
    for key, is_en in (("wer_en", True), ("cer_zh", False)):
        rows = [(r, h, lang) for r, h, lang in zip(refs, hyps, languages, strict=True) if (lang == "en") == is_en]
        if rows:
            out[key] = corpus_error_rate(*map(list, zip(*rows, strict=True)))
    return out


def edit_distance(ref: list[int], hyp: list[int]) -> int:
    """Levenshtein distance (unit costs, no transpositions) between two label sequences."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def sequence_error_rate(refs: list[list[int]], hyps: list[list[int]]) -> float:
    """Edit distance over label sequences, summed, divided by the total reference length (phoneme error rate)."""
    pairs = list(zip(refs, hyps, strict=True))
    return sum(edit_distance(r, h) for r, h in pairs) / max(1, sum(len(r) for r, _ in pairs))


def make_eval(utts: list[Utterance], batch_size: int = 16, features=None):
    """The held-out evaluation: ASR error, code use and (with phonemes) phoneme error of ``utts``; ``features``
    replaces ``featurize`` (a diagnostic may warp the features, scripts/formant_probe.py)."""
    features = features or featurize

    def evaluate(model: TokenizerTrainModel) -> dict:
        # During the VQ warm-up the codebook does not fit the states yet (on a resumed run it may hold codes of
        # older states): score the ASR branch on what it is trained on, and say so (``quantized`` 0).
        quantize = model.quantizing
        hyps, codes, phone_hyps = [], [], []
        with_phones = model.phone is not None and all(u.phones is not None for u in utts)
        for i in range(0, len(utts), batch_size):
            part = utts[i: i + batch_size]
            texts, ids, phone_ids = model.transcribe_all(*features([u.pcm for u in part]), quantize=quantize,
                                                         phones=with_phones)
            hyps += texts
            codes += ids
            phone_hyps += phone_ids or []
        flat = torch.tensor([c for row in codes for c in row])
        p = torch.bincount(flat, minlength=model.spec.codebook).float()
        p = p[p > 0] / p.sum()
        res = error_rates([u.text for u in utts], hyps, [u.language for u in utts])
        res.update(code_perplexity=float(torch.exp(-(p * p.log()).sum())), codes_used=int(p.numel()),
                   quantized=int(quantize))
        if with_phones:
            res.update(phone_error=sequence_error_rate([u.phones for u in utts], phone_hyps))
        for u, h in list(zip(utts, hyps, strict=True))[:3]:
            log.info("ref: %s | hyp: %s", u.text, h)
        return res

    return evaluate


def with_voice_evals(evaluate, by_voice: list[Utterance], batch_size: int = 16):
    """``evaluate`` plus each voice of ``by_voice`` scored alone: its phoneme error (word / character error when
    the run has no phoneme head) as ``KEY@VOICE``. The held-out voices' own curves are what an A/B of augmentations
    for unseen speakers compares (``glm4voice train compare``); the mixed held-out set hides them."""
    groups: dict[str, list[Utterance]] = {}
    for u in by_voice:
        groups.setdefault(u.voice, []).append(u)
    per_voice = {v: make_eval(us, batch_size) for v, us in sorted(groups.items())}

    def evaluate_all(model: TokenizerTrainModel) -> dict:
        res = evaluate(model) if evaluate is not None else {}
        for voice, ev in per_voice.items():
            r = ev(model)
            keys = ["phone_error"] if "phone_error" in r else [k for k in ("wer_en", "cer_zh") if k in r]
            res.update({f"{k}@{voice}": r[k] for k in keys})
        return res

    return evaluate_all


# ---- export ----------------------------------------------------------------------------------------------
def export(model: TokenizerTrainModel, folder: str | Path) -> Path:
    """Write the inference tokenizer (official layout) and the ASR branch into ``folder``."""
    from glm4voice.tokenizer.load import save_pretrained

    enc = model.encoder
    enc.codebook.weight.data.copy_(model.vq.codebook.weight.detach().to(enc.codebook.weight.dtype))
    folder = save_pretrained(enc, folder, ema_count=model.vq.ema_count.detach().float(),
                             ema_weight=model.vq.ema_weight.detach().float())
    return export_branch(model, folder)


def export_branch(model: TokenizerTrainModel, folder: str | Path) -> Path:
    """Write the ASR branch (post-VQ layers + head, and its text vocabulary) beside a tokenizer in ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    branch = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()
              if k.split(".")[0] in ("post", "post_ln", "asr")}
    save_file(branch, str(folder / ASR_BRANCH_WEIGHTS))
    # the phoneme head is a training aid and is not exported: the branch's spec says so
    meta = {"spec": asdict(replace(model.spec, phones=0, phone_weight=0.0)), "text": "utf-8 bytes", "bos": BOS,
            "eos": EOS}
    if model.pieces is not None:
        meta.update(text="pieces", pieces=[p.hex() for p in model.pieces])
    (folder / ASR_BRANCH_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def load_for_asr(folder: str | Path, *, device: str = "cpu") -> TokenizerTrainModel:
    """A tokenizer folder with its ASR branch, ready for ``transcribe`` (evaluation of ASR through the codes)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from glm4voice.errors import CheckpointError
    from glm4voice.int8_weights import unpack
    from glm4voice.tokenizer.load import load_encoder

    folder = Path(folder)
    if not (folder / ASR_BRANCH_CONFIG).is_file():
        raise CheckpointError(f"{folder} has no {ASR_BRANCH_CONFIG}: only glm4voice-trained tokenizers carry an "
                              f"ASR branch (the official release does not)")
    meta = json.loads((folder / ASR_BRANCH_CONFIG).read_text())
    spec = TokenizerTrainSpec(**meta["spec"])
    model = TokenizerTrainModel(spec)
    if meta.get("text") == "pieces":
        model.use_pieces([bytes.fromhex(p) for p in meta["pieces"]])
    enc = load_encoder(folder)
    model.encoder.load_state_dict(enc.state_dict())
    model.vq.codebook.weight.data.copy_(enc.codebook.weight)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:  # the EMA state, so an export keeps it
        for key in ("ema_count", "ema_weight"):
            if key in f.keys():
                getattr(model.vq, key).copy_(f.get_tensor(key))
    branch = unpack(load_file(str(folder / ASR_BRANCH_WEIGHTS)), name=str(folder / ASR_BRANCH_WEIGHTS))
    missing, unexpected = model.load_state_dict(branch, strict=False)
    bad = [k for k in missing if k.split(".")[0] in ("post", "post_ln", "asr")] + list(unexpected)
    if bad:
        raise CheckpointError(f"{folder / ASR_BRANCH_WEIGHTS}: key mismatch {bad[:8]}")
    return model.to(device).eval()


# ---- entry point -----------------------------------------------------------------------------------------
def add_args(parser: argparse.ArgumentParser) -> None:
    from glm4voice.train.engine import add_train_args

    parser.add_argument("--corpus", required=True, help="corpus folder made by `glm4voice data synth`")
    parser.add_argument("--export", default=None,
                        help="write the trained tokenizer folder here at the end (or at --until), once the VQ is on")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="skip longer utterances")
    parser.add_argument("--eval-size", type=int, default=96, help="held-out utterances evaluated")
    parser.add_argument("--until", type=int, default=None, help="stop at this step (continue later)")
    parser.add_argument("--speed-perturb", type=float, default=0.0,
                        help="resample each training utterance by a random factor in [1-x, 1+x] (e.g. 0.1)")
    parser.add_argument("--vtlp", type=float, default=0.0,
                        help="vocal-tract-length perturbation: warp each training utterance's mel axis by a random "
                             "factor in [1-x, 1+x] (e.g. 0.1; formants move, pitch and tempo do not)")
    parser.add_argument("--spec-masks", type=int, default=0,
                        help="SpecAugment: frequency and time masks per training utterance (e.g. 2)")
    parser.add_argument("--pitch", type=float, default=0.0,
                        help="scale every frequency of each training utterance by 2^(s/12), s random in [-x, x] "
                             "semitones, at the same tempo (pitch and formants: another speaker; e.g. 4)")
    parser.add_argument("--tilt", type=float, default=0.0,
                        help="a random spectral slope of up to +-x dB across the band per training utterance")
    parser.add_argument("--oversample", default="",
                        help="repeat the training utterances of some voices, ENGINE_OR_VOICE=TIMES,... (e.g. "
                             "'flite=3,festival=3': the few natural-sounding voices among many espeak ones)")
    for f in TokenizerTrainSpec.__dataclass_fields__.values():
        if f.name != "phones":  # the inventory size comes from the corpus
            parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    parser.add_argument("--phone-jobs", type=int, default=2, help="espeak-ng processes making phoneme targets")
    parser.add_argument("--extra-corpus", action="append", default=[], metavar="DIR",
                        help="also train on the training rows of this corpus (repeatable), e.g. a speaker-variety "
                             "corpus of other languages (glm4voice data variety); rows in a language outside "
                             f"{'/'.join(ASR_LANGUAGES)} train the phoneme head only")
    parser.add_argument("--vq-init-frames", type=int, default=0, metavar="N",
                        help="when the VQ warm-up ends, fit the codebook by k-means over the pre-VQ states of about N "
                             "positions of training utterances (e.g. 50000); 0: the states of that step's batch")
    parser.add_argument("--kmeans-iters", type=int, default=20, help="Lloyd iterations of --vq-init-frames")
    parser.add_argument("--eval-voices", type=int, default=0, metavar="N",
                        help="also score each held-out voice alone on N of its held-out utterances, logged as "
                             "phone_error@VOICE (wer_en@VOICE without a phoneme head); 0: off")
    parser.add_argument("--init-whisper", nargs="?", const="judge", default=None, metavar="CT2",
                        help="start the encoder (and the post-VQ layers) from a pretrained Whisper encoder in "
                             "CTranslate2 format (a folder or model.bin; bare flag: the judge's Whisper base): sizes "
                             "come from it, --layers picks how many of its layers feed the VQ (train/whisper_init.py)")
    parser.add_argument("--init-lr-scale", type=float, default=0.1,
                        help="with --init-whisper: the pretrained layers train at this fraction of --lr")
    add_train_args(parser, lr=1e-3, steps=3000, batch_size=24, warmup=200, eval_every=250, save_every=100)


def oversample(utts: list[Utterance], spec: str) -> list[Utterance]:
    """``utts`` with the utterances of some voices repeated: ``spec`` is ``KEY=TIMES,...`` where KEY is an engine
    (``flite``) or a full voice name (``flite:rms``); a voice name wins over its engine. The repeats share audio."""
    from glm4voice.errors import ConfigError

    times: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, _, n = part.partition("=")
        try:
            times[key.strip()] = int(n)
        except ValueError:
            raise ConfigError(f"--oversample: {part!r} is not KEY=TIMES") from None
        if times[key.strip()] < 1:
            raise ConfigError(f"--oversample: {part!r}: TIMES must be >= 1")
    if not times:
        return utts
    unknown = set(times) - {u.voice for u in utts} - {u.voice.partition(":")[0] for u in utts}
    if unknown:
        raise ConfigError(f"--oversample: no training utterances of {', '.join(sorted(unknown))}")
    out = []
    for u in utts:
        out += [u] * times.get(u.voice, times.get(u.voice.partition(":")[0], 1))
    log.info("oversampled: %d -> %d training utterances (%s)", len(utts), len(out), spec)
    return out


def attach_phones(corpus_dir: str, out_dir: str, train: list[Utterance], held: list[Utterance], *,
                  jobs: int = 2) -> list[str]:
    """Set ``phones`` of every utterance from espeak-ng (cached in the corpus) and return the run's phoneme
    inventory: the training transcripts' symbols, or the one saved in ``out_dir/phones.json`` by an earlier start
    of the run (a resumed run keeps its labels)."""
    from glm4voice.train import phonemes

    table = phonemes.cached_phonemes(corpus_dir, [(u.language, u.text) for u in train + held], jobs=jobs)
    saved = Path(out_dir) / "phones.json"
    if saved.is_file():
        symbols = json.loads(saved.read_text(encoding="utf-8"))
    else:
        symbols = phonemes.inventory(table[(u.language, u.text)] for u in train)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(symbols, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    index = {s: i for i, s in enumerate(symbols)}
    for u in train + held:
        u.phones = phonemes.encode(table[(u.language, u.text)], index)
    log.info("phoneme targets: %d symbols", len(symbols))
    return symbols


def main(args: argparse.Namespace) -> int:
    from glm4voice.errors import ConfigError
    from glm4voice.train.engine import Trainer, config_from_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = config_from_args(args)
    spec = TokenizerTrainSpec(**{k: getattr(args, k) for k in TokenizerTrainSpec.__dataclass_fields__
                                 if k != "phones"})
    whisper_vars = None
    if args.init_whisper:
        from glm4voice.train import whisper_init

        whisper_file = whisper_init.resolve_file(args.init_whisper)
        whisper_vars = whisper_init.read_ct2(whisper_file, "encoder/")
        sizes = whisper_init.encoder_sizes(whisper_vars)
        spec = replace(spec, d_model=sizes["d_model"], heads=sizes["heads"], ffn=sizes["ffn"])
        if spec.layers > sizes["layers"]:
            raise ConfigError(f"--layers {spec.layers}: {whisper_file} has {sizes['layers']} encoder layers")
    if spec.phone_weight <= 0:  # checked before any audio is loaded (minutes for a large corpus)
        for extra in args.extra_corpus:
            foreign = sorted(manifest_languages(extra) - set(ASR_LANGUAGES))
            if foreign:
                raise ConfigError(f"{extra} has rows in {', '.join(foreign)}: they need the phoneme head "
                                  "(--phone-weight > 0), since the ASR head does not learn from them")
    train = load_corpus(args.corpus, split="train", max_seconds=args.max_seconds)
    for extra in args.extra_corpus:
        rows = load_corpus(extra, split="train", max_seconds=args.max_seconds)
        log.info("%s: %d training utterances (%s)", extra, len(rows),
                 ", ".join(f"{k} {v}" for k, v in sorted(collections.Counter(u.language for u in rows).items())))
        train += rows
    held = load_corpus(args.corpus, split="heldout", max_seconds=args.max_seconds, limit=args.eval_size, seed=1)
    unseen: list[Utterance] = []
    if args.eval_voices > 0:
        from glm4voice.train.voices import HELDOUT_VOICE_NAMES

        unseen = load_corpus(args.corpus, split="heldout", max_seconds=args.max_seconds, seed=2,
                             voices=HELDOUT_VOICE_NAMES, per_voice=args.eval_voices)
        if not unseen:
            log.warning("--eval-voices: %s has no held-out voice rows", args.corpus)
    if spec.phone_weight > 0:
        spec = replace(spec, phones=len(attach_phones(args.corpus, cfg.out_dir, train, held + unseen,
                                                      jobs=args.phone_jobs)))
    torch.manual_seed(cfg.seed)
    model = TokenizerTrainModel(spec)
    groups = None
    if whisper_vars is not None:
        copied = whisper_init.load_into(model, whisper_vars)
        log.info("encoder from Whisper %s: %d layers before the VQ, %d post-VQ layers, mel axis %d -> %d bins; "
                 "pretrained layers at %.3g x lr", whisper_file, copied["encoder_layers"], copied["post_layers"],
                 copied["mel_bins"], model.cfg.num_mel_bins, args.init_lr_scale)
        groups = whisper_init.param_groups(model, copied, cfg.weight_decay, args.init_lr_scale)
    log.info("tokenizer: %d train / %d held-out utterances, %.1fM parameters", len(train), len(held),
             sum(p.numel() for p in model.parameters()) / 1e6)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out_dir) / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
    if args.vq_init_frames > 0:
        model.codebook_source = codebook_states(train, args.vq_init_frames, seed=cfg.seed)
        model.kmeans_iters = args.kmeans_iters
    train = oversample(train, args.oversample)
    eval_fn = make_eval(held) if held else None
    if unseen:
        eval_fn = with_voice_evals(eval_fn, unseen)
    trainer = Trainer(cfg, model, batch_fn=Batches(train, cfg.batch_size, cfg.seed, speed=args.speed_perturb,
                                                       spec_masks=args.spec_masks, vtlp=args.vtlp, pitch=args.pitch,
                                                       tilt=args.tilt),
                      loss_fn=lambda m, b: m(*b), eval_fn=eval_fn, param_groups=groups)
    trainer.fit(until=args.until)
    if args.export and trainer.step >= min(cfg.steps, args.until or cfg.steps):
        if not trainer.model.quantizing:  # the codebook does not fit the states before the warm-up ends
            log.warning("not exported: step %d is still in the VQ warm-up (--vq-warmup %d), so the codebook does "
                        "not fit the encoder", trainer.step, spec.vq_warmup)
        else:
            export(trainer.model, args.export)
            log.info("exported the tokenizer at step %d to %s", trainer.step, args.export)
    return 0
