"""GLM-4-Voice language model: config, model, loader, text tokenizer, prompt, sampling, generation."""

from glm4voice.lm.config import GLMConfig
from glm4voice.lm.generate import Generator, KVCache, generate
from glm4voice.lm.load import load_lm, save_pretrained
from glm4voice.lm.model import GLM
from glm4voice.lm.routing import AudioCode, Other, Router, Stop, TextPiece, route_stream
from glm4voice.lm.sampling import SamplingParams
from glm4voice.lm.text_tokenizer import TextTokenizer

__all__ = ["GLM", "AudioCode", "GLMConfig", "Generator", "KVCache", "Other", "Router", "SamplingParams", "Stop",
           "TextPiece", "TextTokenizer", "generate", "load_lm", "route_stream", "save_pretrained"]
