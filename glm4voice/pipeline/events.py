"""Typed events yielded by the voice-chat pipeline, in the order a listener would experience them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer's text, as soon as it is decoded."""

    text: str


@dataclass(frozen=True)
class AudioChunk:
    """PCM of the answer, float32 mono in [-1, 1] at ``sample_rate`` (22,050 Hz for the decoder)."""

    pcm: np.ndarray
    sample_rate: int


@dataclass(frozen=True)
class Timing:
    """A measured latency stage in seconds.

    stage is one of "tokenize", "lm_prefill", "lm_first_audio_block", "speech_decode",
    "time_to_first_audio", "total".
    """

    stage: str
    seconds: float


@dataclass(frozen=True)
class TurnEnd:
    """The answer is complete (or was cancelled); ``reason`` says why it ended."""

    reason: str  # "stop_token", "max_tokens", "cancelled"
    text: str = ""
    audio_codes: tuple[int, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ErrorEvent:
    """A problem the listener should see; the session stays usable."""

    message: str
    code: str = "error"


Event = TextDelta | AudioChunk | Timing | TurnEnd | ErrorEvent
