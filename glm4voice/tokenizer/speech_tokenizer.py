"""``SpeechTokenizer``: audio -> 12.5 Hz speech codes, offline (batched like the official extractor) and streaming.

Offline follows ``speech_tokenizer/utils.py: extract_speech_token`` (SPEC §1.4): each audio is cut into 30 s
chunks; chunks are batched (at most 128 per forward), right-padded with zeros to the longest chunk rounded up to
1280 samples; features and encoder run on the padded batch; the codes at valid positions (1280 * t < n) of each
chunk are concatenated per audio. Two batching modes:

- ``batched=True``: all chunks of all audios in one call (the official call with a list of files);
- ``batched=False``: one call per audio (the official call with one file), as the CLI's ``--per-file``.

Padding changes only float32 rounding of valid positions (about 1e-6; SPEC §1.4 item 8), so the two modes give
the same codes except on a knife-edge; both reproduce the reference vectors exactly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from glm4voice.audio import MAX_AUDIO_SECONDS, load_audio, log_mel_whisper, split_chunks
from glm4voice.constants import MAX_TOKENIZER_BATCH, MEL_HOP, TOKEN_HOP_SAMPLES, TOKENIZER_SAMPLE_RATE
from glm4voice.tokenizer.model import WhisperVQEncoder
from glm4voice.tokenizer.stream import REFRESH_SECONDS, StreamingEncoder, TokenizerStreamState


class SpeechTokenizer:
    def __init__(self, model: WhisperVQEncoder, *, max_seconds: float | None = MAX_AUDIO_SECONDS):
        self.model = model
        self.cfg = model.cfg
        self.max_seconds = max_seconds
        self.streaming = StreamingEncoder(model)  # stateless driver; per-stream data lives in the state objects

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike | None = None, *, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, max_seconds: float | None = MAX_AUDIO_SECONDS,
                        ) -> SpeechTokenizer:
        """Load a checkpoint folder, ``"official"``, a hub id, or (None) the embedded default model."""
        from glm4voice.checkpoints import resolve
        from glm4voice.tokenizer.load import load_encoder

        folder = resolve(path_or_id, "tokenizer")
        return cls(load_encoder(folder, device=device, dtype=dtype), max_seconds=max_seconds)

    @property
    def device(self) -> torch.device:
        return self.model.codebook.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.codebook.weight.dtype

    # -- input -----------------------------------------------------------------------------------------------
    def load(self, audio) -> Tensor:
        """One input as 16 kHz mono float32: a path or encoded bytes (any rate, channel 0 kept), a
        ``(samples, rate)`` tuple like the official code accepts, or samples already at 16 kHz."""
        if isinstance(audio, tuple) and len(audio) == 2:
            return load_audio(audio[0], source_rate=audio[1], max_seconds=self.max_seconds)
        if isinstance(audio, (str, os.PathLike, bytes, bytearray, memoryview)):
            return load_audio(audio, max_seconds=self.max_seconds)
        return load_audio(audio, source_rate=TOKENIZER_SAMPLE_RATE, max_seconds=self.max_seconds)

    # -- offline ---------------------------------------------------------------------------------------------
    def encode(self, audios: Sequence, *, batched: bool = True,
               batch_size: int = MAX_TOKENIZER_BATCH) -> list[list[int]]:
        """Codes of each audio (see ``load`` for the accepted inputs); one list per input, in order."""
        return [ids for ids, _ in self.encode_detailed(audios, batched=batched, batch_size=batch_size)]

    def encode_detailed(self, audios: Sequence, *, batched: bool = True, batch_size: int = MAX_TOKENIZER_BATCH,
                        ) -> list[tuple[list[int], Tensor]]:
        """As ``encode``, with the pre-quantisation hidden states of the kept positions, (n_codes, d) float32."""
        if isinstance(audios, (str, os.PathLike)):
            audios = [audios]
        wavs = [self.load(a) for a in audios]
        groups = [list(range(len(wavs)))] if batched else [[i] for i in range(len(wavs))]
        ids: list[list[int]] = [[] for _ in wavs]
        hidden: list[list[Tensor]] = [[] for _ in wavs]
        for group in groups:
            chunks = [(i, c) for i in group for c in split_chunks(wavs[i])]
            for start in range(0, len(chunks), batch_size):
                part = chunks[start: start + batch_size]
                for (i, _), (code, h) in zip(part, self.encode_chunks([c for _, c in part]), strict=True):
                    ids[i].extend(code.tolist())
                    hidden[i].append(h.float().cpu())
        return [(ids[i], torch.cat(hidden[i])) for i in range(len(wavs))]

    @torch.inference_mode()
    def encode_chunks(self, chunks: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """One forward over chunks (each <= 30 s of 16 kHz samples) padded together; (codes, hidden) per chunk."""
        lengths = torch.tensor([c.shape[-1] for c in chunks])
        padded_len = math.ceil(int(lengths.max()) / TOKEN_HOP_SAMPLES) * TOKEN_HOP_SAMPLES
        batch = torch.zeros(len(chunks), padded_len)
        for row, c in enumerate(chunks):
            batch[row, : c.shape[-1]] = c
        feats = log_mel_whisper(batch.to(self.device))  # fp32 features whatever the model dtype
        frames = torch.arange(feats.shape[-1]) * MEL_HOP
        frame_mask = (frames[None] < lengths[:, None]).to(self.device)
        codes, h = self.model(feats.to(self.dtype), frame_mask)
        keep = frame_mask[:, :: 2 * self.cfg.pooling_kernel_size]
        return [(codes[b][keep[b]].cpu(), h[b][keep[b]]) for b in range(len(chunks))]

    # -- streaming (tokenizer/stream.py) ---------------------------------------------------------------------
    def init_state(self, *, emit: str = "final", refresh_s: float | None = REFRESH_SECONDS) -> TokenizerStreamState:
        """A new stream's state (one per stream; see ``StreamingEncoder.init_state``)."""
        return self.streaming.init_state(emit=emit, refresh_s=refresh_s)

    def step(self, pcm: Tensor, state: TokenizerStreamState) -> tuple[list[int], TokenizerStreamState]:
        """Feed 16 kHz mono samples (n,) of any length; returns (codes that became final, state)."""
        return self.streaming.step(pcm, state)

    def finish(self, state: TokenizerStreamState) -> list[int]:
        """End of speech: computes the unfinished part and returns the remaining codes."""
        return self.streaming.finish(state)
