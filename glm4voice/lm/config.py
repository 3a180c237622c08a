"""GLM-4-Voice-9B language model configuration, read from the official ChatGLM ``config.json`` (SPEC §2.2).

The official file is a transformers ``ChatGLMConfig``. We keep the fields that shape the model, accept the other
known official fields when they hold the only value our model implements (dropouts, fused-kernel switches and
the like do not change inference), and reject anything else, so that a typo or a different architecture cannot
load silently. ``to_json`` writes the same layout back, so checkpoints we train load in the official code too.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from glm4voice.errors import ConfigError

# SPEC §8.1: the released config's seq_length was not seen. GLM-4-9B base uses 8192 (chat: 131072). It only bounds
# the context (the official RoPE table has seq_length rows); override with from_json(..., seq_length=N).
DEFAULT_SEQ_LENGTH = 8192

# Official fields we do not hold, with the value our model implements. A different value raises ConfigError;
# None means "any value is fine" (bookkeeping or inference-irrelevant switches). SPEC §2.2-2.3.
_FIXED_FIELDS = {
    "model_type": "chatglm",
    "rmsnorm": True,
    "add_bias_linear": False,
    "apply_residual_connection_post_layernorm": False,
    "post_layer_norm": True,
    "tie_word_embeddings": False,
    "fp32_residual_connection": False,
    "architectures": None, "auto_map": None, "_name_or_path": None, "transformers_version": None,
    "use_cache": None, "original_rope": None,  # not read by the forward pass (SPEC §2.2)
    "apply_query_key_layer_scaling": None,  # mathematically identical to the plain 1/sqrt(d) scale (SPEC §2.3)
    "attention_softmax_in_fp32": None, "bias_dropout_fusion": None,
    "hidden_dropout": None, "attention_dropout": None, "classifier_dropout": None,  # 0 in the release; inference
    "pre_seq_len": None, "prefix_projection": None,  # p-tuning switches of ChatGLMConfig; unused
    "num_hidden_layers": None, "vocab_size": None,  # aliases, checked against num_layers / padded_vocab_size
    "bos_token_id": None, "is_encoder_decoder": None, "output_attentions": None, "return_dict": None,
}

# What to_json writes for the fields above (the released values, SPEC §2.2).
_OFFICIAL_EXTRA = {
    "model_type": "chatglm",
    "architectures": ["ChatGLMForConditionalGeneration"],
    "auto_map": {
        "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
    },
    "add_bias_linear": False, "apply_query_key_layer_scaling": True, "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0, "attention_softmax_in_fp32": True, "bias_dropout_fusion": True,
    "classifier_dropout": None, "fp32_residual_connection": False, "hidden_dropout": 0.0, "original_rope": True,
    "post_layer_norm": True, "rmsnorm": True, "tie_word_embeddings": False, "use_cache": True,
    "transformers_version": "4.44.1",
}
_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class GLMConfig:
    """Shape of the GLM; defaults equal THUDM/glm-4-voice-9b ``config.json`` (SPEC §2.2)."""

    hidden_size: int = 4096
    num_layers: int = 40
    num_attention_heads: int = 32
    kv_channels: int = 128  # head dim
    multi_query_attention: bool = True
    multi_query_group_num: int = 2  # KV heads when multi_query_attention
    ffn_hidden_size: int = 13696
    padded_vocab_size: int = 168960
    layernorm_epsilon: float = 3.90625e-08
    rope_ratio: float = 1.0  # RoPE base = 10000 * rope_ratio
    seq_length: int = DEFAULT_SEQ_LENGTH  # longest context (positions 0..seq_length-1)
    add_qkv_bias: bool = True
    torch_dtype: str = "bfloat16"
    eos_token_id: tuple[int, ...] = (151329, 151336, 151338)  # <|endoftext|>, <|user|>, <|observation|>
    pad_token_id: int = 151329

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "num_attention_heads", "kv_channels", "ffn_hidden_size",
                     "padded_vocab_size", "seq_length", "multi_query_group_num"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigError(f"LM config: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.num_attention_heads % self.num_kv_heads:
            raise ConfigError(f"LM config: {self.num_attention_heads} query heads are not a multiple of "
                              f"{self.num_kv_heads} KV groups")
        if self.kv_channels % 4:
            raise ConfigError(f"LM config: kv_channels {self.kv_channels} must be a multiple of 4 (rotary pairs)")
        if self.torch_dtype not in _DTYPES:
            raise ConfigError(f"LM config: torch_dtype {self.torch_dtype!r} is not one of {_DTYPES}")

    @property
    def num_kv_heads(self) -> int:
        return self.multi_query_group_num if self.multi_query_attention else self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.kv_channels

    @property
    def rotary_dim(self) -> int:
        """Rotated dims per head: the first half (RotaryEmbedding is built with kv_channels // 2, SPEC §2.3)."""
        return self.kv_channels // 2

    @property
    def rope_base(self) -> float:
        return 10000.0 * self.rope_ratio

    @property
    def qkv_size(self) -> int:
        return (self.num_attention_heads + 2 * self.num_kv_heads) * self.kv_channels

    @classmethod
    def from_json(cls, path: str | os.PathLike, *, seq_length: int | None = None) -> GLMConfig:
        """Read ``config.json`` (a file, or a folder holding one); ``seq_length`` overrides the file's value."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read LM config {path}: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(raw, source=str(path), seq_length=seq_length)

    @classmethod
    def from_dict(cls, raw: dict, *, source: str = "LM config", seq_length: int | None = None) -> GLMConfig:
        own = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in raw if k not in own and k not in _FIXED_FIELDS)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)} (not a ChatGLM / GLM-4 config?)")
        for key, want in _FIXED_FIELDS.items():
            if want is not None and key in raw and raw[key] != want:
                raise ConfigError(f"{source}: {key}={raw[key]!r} is not supported (this model implements {want!r})")
        for alias, name in (("num_hidden_layers", "num_layers"), ("vocab_size", "padded_vocab_size")):
            if alias in raw and name in raw and raw[alias] != raw[name]:
                raise ConfigError(f"{source}: {alias}={raw[alias]} disagrees with {name}={raw[name]}")
        kwargs = {k: v for k, v in raw.items() if k in own}
        if "num_layers" not in kwargs and "num_hidden_layers" in raw:
            kwargs["num_layers"] = raw["num_hidden_layers"]
        if "padded_vocab_size" not in kwargs and "vocab_size" in raw:
            kwargs["padded_vocab_size"] = raw["vocab_size"]
        eos = kwargs.get("eos_token_id")
        if eos is not None:
            kwargs["eos_token_id"] = tuple(eos) if isinstance(eos, list | tuple) else (int(eos),)
        if kwargs.get("pad_token_id", 0) is None:
            kwargs.pop("pad_token_id")
        if seq_length is not None:
            kwargs["seq_length"] = seq_length
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from e

    def to_dict(self) -> dict:
        """The official ``config.json`` layout (ChatGLMConfig fields, released values for the fixed ones)."""
        d = dict(_OFFICIAL_EXTRA)
        d.update(dataclasses.asdict(self))
        d["eos_token_id"] = list(self.eos_token_id)
        d["num_hidden_layers"] = self.num_layers
        d["vocab_size"] = self.padded_vocab_size
        return d

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the official-format ``config.json`` (a file path, or a folder to write config.json into)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
