"""Strict loading of the official tokenizer checkpoint (``config.json`` + ``model.safetensors``, SPEC §1.7).

The released file holds the unprefixed state dict of ``WhisperVQEncoder(quantize_encoder_only=True)``: exactly
our module's keys, plus the training-only EMA buffers ``ema_count`` / ``ema_weight`` which are checked for shape
and dropped. The model is built on the ``meta`` device (no memory, no random init) and the tensors are assigned.
Anything unknown, missing, or mis-shaped raises ``CheckpointError`` naming the key.
"""

from __future__ import annotations

from pathlib import Path

import torch

from glm4voice.errors import CheckpointError
from glm4voice.tokenizer.config import TokenizerConfig
from glm4voice.tokenizer.model import WhisperVQEncoder

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_ONLY_KEYS = ("ema_count", "ema_weight")  # EMA codebook state (SPEC §1.6), unused at inference


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
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from e


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


def _fmt(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")
