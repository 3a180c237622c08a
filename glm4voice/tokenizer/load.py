"""Strict loading of the official tokenizer checkpoint (``config.json`` + ``model.safetensors``, SPEC §1.7).

The released file holds the unprefixed state dict of ``WhisperVQEncoder(quantize_encoder_only=True)``: exactly
our module's keys, plus the training-only EMA buffers ``ema_count`` / ``ema_weight`` which are checked for shape
and dropped. The model is built on the ``meta`` device (no memory, no random init) and the tensors are assigned.
Anything unknown, missing, or mis-shaped raises ``CheckpointError`` naming the key.

``save_pretrained`` writes the same layout (the official ``WhisperVQConfig`` fields, unprefixed float32 tensors
with EMA buffers), so a tokenizer trained by glm4voice loads here and in the official ``WhisperVQEncoder``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from glm4voice.errors import CheckpointError, ConfigError
from glm4voice.int8_weights import unpack
from glm4voice.tokenizer.config import TokenizerConfig
from glm4voice.tokenizer.model import WhisperVQEncoder

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_ONLY_KEYS = ("ema_count", "ema_weight")  # EMA codebook state (SPEC §1.6), unused at inference

# Fields of the official config.json that our TokenizerConfig does not hold, with the released values
# (SPEC §1.3; same key set as ``WhisperVQEncoder.save_pretrained`` writes with transformers 4.44.1).
OFFICIAL_FIXED_FIELDS = {
    "activation_dropout": 0.0, "apply_spec_augment": False, "architectures": ["WhisperVQEncoder"],
    "attention_dropout": 0.0, "begin_suppress_tokens": [220, 50257], "bos_token_id": 50257,
    "classifier_proj_size": 256, "decoder_layerdrop": 0.0, "decoder_start_token_id": 50258, "dropout": 0.0,
    "encoder_layerdrop": 0.0, "eos_token_id": 50257, "init_std": 0.02, "is_encoder_decoder": True,
    "mask_feature_length": 10, "mask_feature_min_masks": 0, "mask_feature_prob": 0.0, "mask_time_length": 10,
    "mask_time_min_masks": 2, "mask_time_prob": 0.05, "max_length": 448, "max_target_positions": 448,
    "median_filter_width": 7, "model_type": "whisper", "pad_token_id": 50256, "quantize_commit_coefficient": 0.25,
    "quantize_ema_decay": 0.99, "quantize_loss_scale": 10.0, "quantize_restart_interval": 100,
    "skip_language_detection": True, "torch_dtype": "float32", "transformers_version": "4.44.1",
    "use_cache": True, "use_weighted_layer_sum": False, "vocab_size": 51866,
}


def build_meta(cfg: TokenizerConfig, *, with_ema: bool = False) -> WhisperVQEncoder:
    """The encoder of ``cfg`` on the meta device: shapes only."""
    with torch.device("meta"):
        return WhisperVQEncoder(cfg, with_ema=with_ema)


def official_shapes(cfg: TokenizerConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the released checkpoint for ``cfg`` (our module plus the EMA buffers)."""
    return {k: tuple(v.shape) for k, v in build_meta(cfg, with_ema=True).state_dict().items()}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob("*.bin")) if path.parent.is_dir() else []
        hint = f" (found {', '.join(others)}: pickled weights are never loaded; convert them to safetensors)" \
            if others else ""
        raise CheckpointError(f"tokenizer weights {path} not found{hint}")
    try:
        sd = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from e
    return unpack(sd, name=str(path))  # the embedded model's int8 storage (glm4voice/int8_weights.py)


def check_state_dict(sd: dict[str, torch.Tensor], cfg: TokenizerConfig, name: str = "tokenizer") -> None:
    """Raise CheckpointError unless ``sd`` has exactly the official keys of ``cfg`` with their shapes."""
    expected = official_shapes(cfg)
    unknown = sorted(set(sd) - set(expected))
    missing = sorted(set(expected) - set(sd) - set(TRAINING_ONLY_KEYS))
    if unknown:
        raise CheckpointError(f"{name}: unexpected key(s) {_fmt(unknown)} (a different model or a prefixed "
                              f"full-model checkpoint?)")
    if missing:
        raise CheckpointError(f"{name}: missing key(s) {_fmt(missing)}")
    for key, tensor in sd.items():
        if tuple(tensor.shape) != expected[key]:
            raise CheckpointError(f"{name}: tensor {key} has shape {tuple(tensor.shape)}, config.json implies "
                                  f"{expected[key]}")
        if not tensor.is_floating_point():
            raise CheckpointError(f"{name}: tensor {key} has dtype {tensor.dtype}, expected floating point")


def load_encoder(folder: str | Path, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> WhisperVQEncoder:
    """Read ``folder``'s config.json and model.safetensors into an inference-ready encoder."""
    folder = Path(folder)
    cfg = TokenizerConfig.from_json(folder / CONFIG_FILE)
    sd = read_safetensors(folder / WEIGHTS_FILE)
    check_state_dict(sd, cfg, name=str(folder / WEIGHTS_FILE))
    model = build_meta(cfg)
    weights = {k: v.to(device=device, dtype=dtype) for k, v in sd.items() if k not in TRAINING_ONLY_KEYS}
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def official_config_dict(cfg: TokenizerConfig, **training_fields) -> dict:
    """The official ``config.json`` content for ``cfg`` (keys sorted as transformers writes them).

    The (unused) Whisper decoder sizes mirror the encoder's, as in the release; ``training_fields`` override
    official training-only values (e.g. ``quantize_ema_decay=0.95``) and must be known official fields.
    """
    unknown = sorted(set(training_fields) - set(OFFICIAL_FIXED_FIELDS))
    if unknown:
        raise ConfigError(f"not official training-only config field(s): {', '.join(unknown)}")
    out = {**OFFICIAL_FIXED_FIELDS, **dataclasses.asdict(cfg), **training_fields,
           "decoder_layers": cfg.encoder_layers, "decoder_attention_heads": cfg.encoder_attention_heads,
           "decoder_ffn_dim": cfg.encoder_ffn_dim, "num_hidden_layers": cfg.encoder_layers}
    return dict(sorted(out.items()))


def save_pretrained(model: WhisperVQEncoder, folder: str | os.PathLike, *, codebook: Tensor | None = None,
                    ema_count: Tensor | None = None, ema_weight: Tensor | None = None, **training_fields) -> Path:
    """Write ``folder/config.json`` + ``folder/model.safetensors`` in the official tokenizer layout; returns folder.

    Tensors are float32, unprefixed, contiguous. ``codebook`` (vocab, d) replaces ``model.codebook.weight`` (for
    a trainer whose quantiser keeps its own codebook); ``ema_count`` (vocab,) / ``ema_weight`` (vocab, d) are the
    training EMA state; without them the release's neutral values are written (counts 1, weights = codebook),
    so the official loader finds every buffer it registers. The result loads with ``load_encoder`` /
    ``SpeechTokenizer.from_pretrained`` and, by construction, with the official ``WhisperVQEncoder``.
    """
    from safetensors.torch import save_file

    cfg = model.cfg
    cfg.validate("save_pretrained")
    sd = {k: v for k, v in model.state_dict().items() if k not in TRAINING_ONLY_KEYS}
    if codebook is not None:
        sd["codebook.weight"] = codebook
    sd["ema_count"] = torch.ones(cfg.quantize_vocab_size) if ema_count is None else ema_count
    sd["ema_weight"] = sd["codebook.weight"] if ema_weight is None else ema_weight
    # float32 on CPU, each tensor its own storage (safetensors refuses shared memory)
    sd = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in sd.items()}
    check_state_dict(sd, cfg, name="save_pretrained")
    config = official_config_dict(cfg, **training_fields)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "producer": "glm4voice"})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def _fmt(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")
