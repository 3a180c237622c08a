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

    stage is one of
    - "tokenize": speech tokenizer time for the user's audio (for streamed input: the part left after the
      end of speech, since earlier blocks were tokenized while the user spoke);
    - "lm_prefill": from the start of the LM call to its first generated token (prompt prefill, cached
      turns excluded);
    - "lm_first_audio_block": LM decoding after the prefill until the tokens of the first audio block exist;
    - "speech_decode": decoder time that turned the first audio block into the first audio chunk;
    - "time_to_first_audio": from the end of the user's input to the first ``AudioChunk``;
    - "time_to_first_text": from the end of the user's input to the first ``TextDelta``;
    - "total": the whole turn.
    """

    stage: str
    seconds: float


@dataclass(frozen=True)
class TurnEnd:
    """The answer is complete (or was cancelled); ``reason`` says why it ended."""

    reason: str  # "stop_token", "max_tokens", "cancelled", "error"
    text: str = ""
    audio_codes: tuple[int, ...] = field(default_factory=tuple)
    audio_seconds: float = 0.0  # seconds of answer audio produced (after a cancel: what was kept as spoken)
    tokens: int = 0  # ids the LM generated in this turn


@dataclass(frozen=True)
class ErrorEvent:
    """A problem the listener should see; the session stays usable."""

    message: str
    code: str = "internal"  # "lm_unavailable" (remote LM failed) or "internal"


@dataclass(frozen=True)
class SpeechStarted:
    """Streaming input: the voice-activity detector heard the user start speaking (``seconds`` into the stream)."""

    seconds: float


@dataclass(frozen=True)
class UserTurn:
    """Streaming input: the user's turn is complete (end of speech after the silence, or an explicit commit).

    ``codes`` are the speech codes of the whole turn; ``tokenize_seconds`` the tokenizer time spent after the end
    of speech; ``ended_at`` a ``time.perf_counter()`` stamp of the moment the turn was known to be over.
    """

    codes: tuple[int, ...]
    audio_seconds: float
    tokenize_seconds: float
    ended_at: float


Event = TextDelta | AudioChunk | Timing | TurnEnd | ErrorEvent | SpeechStarted | UserTurn
