"""Speech tokenizer: 16 kHz speech -> 12.5 Hz codes (WhisperVQ encoder), offline and streaming."""

from glm4voice.tokenizer.config import TokenizerConfig
from glm4voice.tokenizer.model import WhisperVQEncoder
from glm4voice.tokenizer.speech_tokenizer import SpeechTokenizer

__all__ = ["SpeechTokenizer", "TokenizerConfig", "WhisperVQEncoder"]
