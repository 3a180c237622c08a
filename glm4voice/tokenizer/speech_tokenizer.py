"""``SpeechTokenizer``: audio -> 12.5 Hz speech codes, offline (batched like the official extractor) and streaming.

Offline follows ``speech_tokenizer/utils.py: extract_speech_token`` (SPEC §1.4): each audio is cut into 30 s
chunks; chunks are batched (at most 128 per forward), right-padded with zeros to the longest chunk rounded up to
1280 samples; features and encoder run on the padded batch; the codes at valid positions (1280 * t < n) of each
chunk are concatenated per audio. Batching modes:

- ``batched=True``: all chunks of all audios in one call (the official call with a list of files);
- ``batched=False``: one call per audio (the official call with one file), as the CLI's ``--per-file``;
- ``sort=True``: chunks grouped by length within pools of SORT_POOL_BATCHES batches (less padding, faster for
  many files of mixed length; not an official mode).

Padding changes only float32 rounding of valid positions (about 1e-6; SPEC §1.4 item 8), so the modes give the
same codes except on a knife edge; both official modes reproduce the reference vectors exactly. Audios are
loaded lazily, one batch at a time, so a list of thousands of files needs the memory of one batch.

Streaming (``init_state`` / ``step`` / ``finish``) lives in ``tokenizer/stream.py``; its codes equal the
``batched=False`` codes.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from glm4voice.audio import MAX_AUDIO_SECONDS, load_audio, log_mel_whisper, split_chunks
from glm4voice.constants import MAX_TOKENIZER_BATCH, MEL_HOP, TOKEN_HOP_SAMPLES, TOKENIZER_SAMPLE_RATE
from glm4voice.errors import AudioError
from glm4voice.tokenizer.model import WhisperVQEncoder
from glm4voice.tokenizer.stream import REFRESH_SECONDS, StreamingEncoder, TokenizerStreamState

log = logging.getLogger("glm4voice.tokenizer")

SORT_POOL_BATCHES = 8  # sort=True: chunks are length-sorted within pools of this many batches


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
    def load(self, audio, *, channel: int | str = 0) -> Tensor:
        """One input as 16 kHz mono float32: a path or encoded bytes (any rate; channel 0 kept as the official
        code, or ``channel=`` another index / ``"mix"``), a ``(samples, rate)`` tuple like the official code
        accepts, or samples already at 16 kHz."""
        kw = dict(max_seconds=self.max_seconds, channel=channel)
        if isinstance(audio, tuple) and len(audio) == 2:
            return load_audio(audio[0], source_rate=audio[1], **kw)
        if isinstance(audio, (str, os.PathLike, bytes, bytearray, memoryview)):
            return load_audio(audio, **kw)
        return load_audio(audio, source_rate=TOKENIZER_SAMPLE_RATE, **kw)

    # -- offline ---------------------------------------------------------------------------------------------
    def encode(self, audios: Sequence, *, batched: bool = True, batch_size: int = MAX_TOKENIZER_BATCH,
               sort: bool = False, channel: int | str = 0, errors: str | Callable[[int, AudioError], None] = "raise",
               progress: bool = False) -> list[list[int] | None]:
        """Codes of each audio (see ``load`` for the accepted inputs); one list per input, in order.

        batched: True = all chunks of all inputs batched together (the official call with a list of files),
            False = one call per input (the official call with one file). See the module doc.
        batch_size: chunks per forward (official 128); audios are loaded lazily, so memory holds one batch.
        sort: group chunks of similar length (faster on mixed lengths; float rounding then differs from the
            official batching by ~1e-6, which can flip a code only on a knife edge). Only with batched=True.
        errors: "raise" (AudioError naming the input), "skip" (that input's entry is None, a warning is logged),
            or a function ``f(index, error)`` called for each unusable input, which is then skipped.
        """
        return [None if r is None else r[0] for r in self._encode(audios, batched, batch_size, sort, channel,
                                                                  errors, progress, keep_hidden=False)]

    def encode_detailed(self, audios: Sequence, *, batched: bool = True, batch_size: int = MAX_TOKENIZER_BATCH,
                        channel: int | str = 0) -> list[tuple[list[int], Tensor]]:
        """As ``encode``, with the pre-quantisation hidden states of the kept positions, (n_codes, d) float32."""
        return self._encode(audios, batched, batch_size, False, channel, "raise", False, keep_hidden=True)

    def _encode(self, audios, batched, batch_size, sort, channel, errors, progress, *, keep_hidden):
        if isinstance(audios, (str, os.PathLike)):
            audios = [audios]
        if not (errors in ("raise", "skip") or callable(errors)):
            raise ValueError(f"errors must be 'raise', 'skip' or a function, got {errors!r}")
        if batch_size < 1 or (sort and not batched):
            raise ValueError(f"need batch_size >= 1 (got {batch_size}) and sort only with batched=True")
        audios = list(audios)
        failed: set[int] = set()
        pieces: list[list[tuple[int, list[int], Tensor | None]]] = [[] for _ in audios]  # (chunk no, codes, h)
        chunks = self._chunks(audios, channel, errors, failed, progress)
        for part in _batches(chunks, batch_size, batched, sort):
            for (i, k, _), (code, h) in zip(part, self.encode_chunks([c for _, _, c in part]), strict=True):
                pieces[i].append((k, code.tolist(), h.float().cpu() if keep_hidden else None))
        out = []
        for i, chunk_results in enumerate(pieces):
            chunk_results.sort(key=lambda r: r[0])  # sorted batching may encode an audio's chunks out of order
            codes = [c for _, chunk_codes, _ in chunk_results for c in chunk_codes]
            h = torch.cat([r[2] for r in chunk_results]) if keep_hidden else None
            out.append(None if i in failed else (codes, h))
        return out

    def _chunks(self, audios: list, channel, errors, failed: set[int], progress: bool):
        """Load the audios one at a time (memory holds one batch) and yield (audio index, chunk no, samples)."""
        with tqdm(total=len(audios), desc="encode", unit="audio", disable=not progress) as bar:
            for i, audio in enumerate(audios):
                try:
                    wav = self.load(audio, channel=channel)
                except AudioError as e:
                    if errors == "raise":
                        raise
                    failed.add(i)
                    if callable(errors):
                        errors(i, e)
                    else:
                        log.warning("skipping input %d: %s", i, e)
                    continue
                finally:
                    bar.update()
                for k, chunk in enumerate(split_chunks(wav)):
                    yield i, k, chunk

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


def _batches(chunks: Iterator, batch_size: int, batched: bool, sort: bool) -> Iterator[list]:
    """Group (audio, chunk no, samples) into forwards: in order across audios (official list call), per audio
    (official single-file calls), or length-sorted within pools of SORT_POOL_BATCHES batches (less padding)."""
    if not batched:
        for _, group in itertools.groupby(chunks, key=lambda c: c[0]):
            yield from _pieces(iter(list(group)), batch_size)
    elif not sort:
        yield from _pieces(chunks, batch_size)
    else:
        for pool in _pieces(chunks, batch_size * SORT_POOL_BATCHES):
            pool.sort(key=lambda c: c[2].shape[-1], reverse=True)
            yield from _pieces(iter(pool), batch_size)


def _pieces(it: Iterator, n: int) -> Iterator[list]:
    while part := list(itertools.islice(it, n)):
        yield part
