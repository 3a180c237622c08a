"""Exception types. Every error a user can cause is one of these, with a message they can act on."""


class Glm4VoiceError(Exception):
    """Base class of all glm4voice errors."""


class AudioError(Glm4VoiceError, ValueError):
    """Audio that cannot be read or used: empty, corrupt, unsupported, non-finite, too long."""


class CheckpointError(Glm4VoiceError):
    """A checkpoint that is missing, unsafe, or does not match the model (names the key)."""


class ConfigError(Glm4VoiceError, ValueError):
    """A configuration file with unknown fields or invalid values."""


class TokenError(Glm4VoiceError, ValueError):
    """Token ids or codes outside the vocabulary / codebook, or an empty token list."""


class ContextLengthError(Glm4VoiceError, ValueError):
    """A prompt or conversation longer than the model's context."""
