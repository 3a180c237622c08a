"""glm4voice: a PyTorch implementation of the GLM-4-Voice spoken chatbot."""

__version__ = "0.1.0"

from glm4voice.errors import (  # noqa: F401
    AudioError,
    CheckpointError,
    ConfigError,
    ContextLengthError,
    Glm4VoiceError,
    TokenError,
)
