"""The system under test: which checkpoints, loaded through the same loaders as inference, and one reply per question.

``ModelSpec`` says where each component comes from (``--model`` for all three, ``--tokenizer/--lm/--decoder`` to
override one): ``embedded`` (default), ``official`` (the THUDM checkpoints), a hub id, or a folder. A ``--model``
folder holds ``tokenizer/``, ``lm/`` and ``decoder/`` sub-folders (the embedded model's layout).

Suites talk to the whole pipeline through ``Responder.reply(audio=... | text=...) -> Reply``: the pipeline's
``Session.respond`` events (docs/INTERFACES.md) gathered into the answer's text, audio and timings, with the time to
first audio also measured from outside. A fresh session answers every question (no history leaks between items).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from glm4voice.errors import ConfigError, Glm4VoiceError

COMPONENTS = ("tokenizer", "lm", "decoder")


@dataclass(frozen=True)
class ModelSpec:
    tokenizer: str | None = None  # None: embedded
    lm: str | None = None
    decoder: str | None = None

    @classmethod
    def from_args(cls, model: str | None = None, *, tokenizer: str | None = None, lm: str | None = None,
                  decoder: str | None = None) -> ModelSpec:
        base = {c: None for c in COMPONENTS}
        if model is not None:
            if model in ("embedded", "official") or not Path(model).expanduser().is_dir():
                base = {c: model for c in COMPONENTS}  # a keyword or a hub id: resolved per component later
            else:
                root = Path(model).expanduser()
                missing = [c for c in COMPONENTS if not (root / c).is_dir()]
                if missing:
                    raise ConfigError(f"--model {model}: a model folder needs sub-folders {', '.join(COMPONENTS)} "
                                      f"(missing {', '.join(missing)}); or pass --tokenizer/--lm/--decoder")
                base = {c: str(root / c) for c in COMPONENTS}
        given = {"tokenizer": tokenizer, "lm": lm, "decoder": decoder}
        return cls(**{c: given[c] if given[c] is not None else base[c] for c in COMPONENTS})

    def describe(self) -> dict[str, str]:
        return {c: getattr(self, c) or "embedded" for c in COMPONENTS}


@dataclass
class Reply:
    """One answer. ``pcm`` float32 at ``sample_rate`` (None for text-only replies)."""

    text: str
    pcm: np.ndarray | None = None
    sample_rate: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # the pipeline's Timing events, seconds
    wall_first_audio: float | None = None  # seconds from the call to the first AudioChunk, measured outside
    wall_first_text: float | None = None
    wall_total: float = 0.0
    end_reason: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def audio_seconds(self) -> float:
        return 0.0 if self.pcm is None or not self.sample_rate else len(self.pcm) / self.sample_rate


def collect(events: Iterable, t0: float | None = None) -> Reply:
    """Gather pipeline events (TextDelta, AudioChunk, Timing, TurnEnd, ErrorEvent) into a ``Reply``.

    ``t0`` is the ``time.perf_counter()`` of the request (default: now, before the first event is pulled).
    """
    from glm4voice.pipeline.events import AudioChunk, ErrorEvent, TextDelta, Timing, TurnEnd

    t0 = time.perf_counter() if t0 is None else t0
    text, chunks, rates = [], [], set()
    reply = Reply("")
    for ev in events:
        now = time.perf_counter() - t0
        if isinstance(ev, TextDelta):
            text.append(ev.text)
            if reply.wall_first_text is None:
                reply.wall_first_text = now
        elif isinstance(ev, AudioChunk):
            if len(ev.pcm) and reply.wall_first_audio is None:
                reply.wall_first_audio = now
            chunks.append(np.asarray(ev.pcm, dtype=np.float32).reshape(-1))
            rates.add(int(ev.sample_rate))
        elif isinstance(ev, Timing):
            reply.timings[ev.stage] = float(ev.seconds)
        elif isinstance(ev, TurnEnd):
            reply.end_reason = ev.reason
        elif isinstance(ev, ErrorEvent):
            reply.errors.append(ev.message)
    reply.wall_total = time.perf_counter() - t0
    reply.text = "".join(text)
    if len(rates) > 1:
        raise Glm4VoiceError(f"audio chunks of one answer came at different sample rates {sorted(rates)}")
    if chunks:
        reply.pcm = np.concatenate(chunks)
        reply.sample_rate = rates.pop()
    return reply


class Responder(Protocol):
    def reply(self, *, audio=None, text: str | None = None, audio_out: bool = True,
              instruction: str = "") -> Reply: ...


@dataclass(frozen=True)
class Generation:
    """Decoding options of the evaluation (greedy by default: the embedded model's answers are exact)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 1000
    seed: int = 0
    text_first: bool = True  # ChatSettings.text_first


class PipelineResponder:
    """The real system: ``VoiceChat`` from the pipeline, one fresh ``Session`` per question."""

    def __init__(self, chat, generation: Generation | None = None):
        self.chat = chat
        self.generation = generation or Generation()

    @classmethod
    def load(cls, spec: ModelSpec, *, device: str = "cpu", dtype=None,
             generation: Generation | None = None) -> PipelineResponder:
        return cls(open_chat(spec, device=device, dtype=dtype), generation)

    def settings(self, *, audio_out: bool, instruction: str, language: str | None = None):
        from glm4voice.pipeline.session import ChatSettings

        g = self.generation
        return ChatSettings(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                            max_new_tokens=g.max_new_tokens, seed=g.seed, instruction=instruction,
                            output="audio" if audio_out else "text", language=language, text_first=g.text_first)

    def reply(self, *, audio=None, text: str | None = None, audio_out: bool = True, instruction: str = "") -> Reply:
        settings = self.settings(audio_out=audio_out, instruction=instruction)
        with self.chat.session(settings) as session:
            t0 = time.perf_counter()
            return collect(session.respond(user_audio=audio, user_text=text), t0)


def open_chat(spec: ModelSpec, *, device: str = "cpu", dtype=None):
    """The pipeline's ``VoiceChat`` over the three components of ``spec`` (same loaders as ``glm4voice chat``)."""
    import torch

    try:
        from glm4voice.pipeline.voice_chat import VoiceChat
    except ImportError as e:
        raise Glm4VoiceError(f"this installation has no voice-chat pipeline ({e}); the tokenizer suite and folders "
                             f"of audio still work") from e
    return VoiceChat.from_pretrained(tokenizer=spec.tokenizer, lm=spec.lm, decoder=spec.decoder, device=device,
                                     dtype=dtype or torch.float32)


def load_audio16k(path: str | os.PathLike) -> np.ndarray:
    """A question's audio as the pipeline receives it: float32 mono at 16 kHz."""
    from glm4voice.audio import load_audio

    return load_audio(str(path)).numpy()

