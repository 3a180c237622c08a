"""The WebSocket protocol (docs/protocol.md): message types, parsing and the mapping of errors to codes.

Client -> server: JSON text messages (below) and binary messages holding microphone audio as 16-bit
little-endian mono PCM at 16 kHz. Server -> client: JSON text messages and binary messages holding the answer's
audio as 16-bit little-endian mono PCM at 22,050 Hz.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import numpy as np

from glm4voice.constants import DECODER_SAMPLE_RATE, TOKENIZER_SAMPLE_RATE
from glm4voice.errors import AudioError, ContextLengthError, Glm4VoiceError
from glm4voice.pipeline.lm_backend import BackendError, BusyError

INPUT_SAMPLE_RATE = TOKENIZER_SAMPLE_RATE  # Hz, binary client audio
OUTPUT_SAMPLE_RATE = DECODER_SAMPLE_RATE  # Hz, binary server audio
PCM_FORMAT = "pcm_s16le"
PCM_SCALE = 32768.0

CLIENT_TYPES = ("session.update", "input_audio", "input_audio.commit", "input_audio.clear", "input_text", "cancel",
                "reset", "ping")

# error codes sent in {"type": "error", "code": ...}
BAD_MESSAGE = "bad_message"  # not JSON, not an object, unknown type, missing or wrong fields
BAD_SETTINGS = "bad_settings"
BAD_AUDIO = "bad_audio"  # undecodable, unsupported format, odd byte count, too short/long
TOO_LARGE = "too_large"
BUSY = "busy"
UNAUTHORIZED = "unauthorized"
CONTEXT_LENGTH = "context_length"
IDLE_TIMEOUT = "idle_timeout"
LM_UNAVAILABLE = "lm_unavailable"
INTERNAL = "internal"

# WebSocket close codes (4000-4999 are free for applications)
CLOSE_UNAUTHORIZED = 4401
CLOSE_IDLE = 4408
CLOSE_BUSY = 1013  # standard "try again later"


class ProtocolError(Exception):
    """A client mistake answered with an error message; the connection stays usable."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def error(code: str, message: str) -> dict:
    return {"type": "error", "code": code, "message": message}


def error_code(e: BaseException) -> str:
    """The protocol code of a pipeline exception."""
    if isinstance(e, ProtocolError):
        return e.code
    if isinstance(e, BusyError):
        return BUSY
    if isinstance(e, ContextLengthError):
        return CONTEXT_LENGTH
    if isinstance(e, AudioError):
        return BAD_AUDIO
    if isinstance(e, BackendError):
        return LM_UNAVAILABLE
    if isinstance(e, ValueError | Glm4VoiceError):
        return BAD_MESSAGE
    return INTERNAL


def parse_text(data: str) -> dict:
    """A client JSON message, checked for shape (fields are checked by the handler of its type)."""
    try:
        msg = json.loads(data)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError(BAD_MESSAGE, f"message is not valid JSON ({e})") from None
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_MESSAGE, "message must be a JSON object with a 'type'")
    kind = msg.get("type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(BAD_MESSAGE, f"unknown message type {kind!r}; expected one of {', '.join(CLIENT_TYPES)}")
    return msg


def field(msg: dict, name: str, kind: type | tuple, *, default=None, required: bool = False):
    if name not in msg or msg[name] is None:
        if required:
            raise ProtocolError(BAD_MESSAGE, f"{msg['type']}: missing field {name!r}")
        return default
    value = msg[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ProtocolError(BAD_MESSAGE, f"{msg['type']}: field {name!r} has the wrong type "
                                         f"({type(value).__name__})")
    return value


def pcm_from_bytes(data: bytes) -> np.ndarray:
    """Binary client audio -> float32 samples in [-1, 1)."""
    if len(data) % 2:
        raise ProtocolError(BAD_AUDIO, f"binary audio must be 16-bit PCM (an even number of bytes), got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / PCM_SCALE


def pcm_to_bytes(pcm: np.ndarray) -> bytes:
    """float samples -> 16-bit little-endian PCM (clipped)."""
    return (np.clip(pcm, -1.0, 32767 / PCM_SCALE) * PCM_SCALE).round().astype("<i2").tobytes()


def b64decode(data: str, what: str = "audio") -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError(BAD_AUDIO, f"{what} is not valid base64 ({e})") from None


@dataclass(frozen=True)
class InputSettings:
    """How the server treats the client's microphone stream."""

    vad: bool = True  # hands-free: the server detects the end of the user's turn
    silence_ms: float = 700.0  # silence that ends the turn
    barge_in: bool = True  # speech heard while answering cancels the answer

    def updated(self, raw: dict) -> InputSettings:
        if not isinstance(raw, dict):
            raise ProtocolError(BAD_SETTINGS, "session.update: 'input' must be an object")
        unknown = sorted(set(raw) - {"vad", "silence_ms", "barge_in"})
        if unknown:
            raise ProtocolError(BAD_SETTINGS, f"unknown input setting(s) {', '.join(unknown)}")
        vad, barge = raw.get("vad", self.vad), raw.get("barge_in", self.barge_in)
        silence = raw.get("silence_ms", self.silence_ms)
        if not isinstance(vad, bool) or not isinstance(barge, bool):
            raise ProtocolError(BAD_SETTINGS, "input.vad and input.barge_in must be true or false")
        if isinstance(silence, bool) or not isinstance(silence, int | float) or not 100 <= silence <= 10_000:
            raise ProtocolError(BAD_SETTINGS, f"input.silence_ms must be a number in [100, 10000], got {silence!r}")
        return InputSettings(vad, float(silence), barge)

    def as_dict(self) -> dict:
        return {"vad": self.vad, "silence_ms": self.silence_ms, "barge_in": self.barge_in}
