"""Speech decoder: 12.5 Hz speech codes -> 22.05 kHz speech (flow matching + HiFT), offline and streaming."""

from glm4voice.decoder.config import DecoderConfig
from glm4voice.decoder.model import SpeechDecoder

__all__ = ["DecoderConfig", "SpeechDecoder"]
