"""Safe, strict loading of the official decoder checkpoint (``config.yaml``, ``flow.pt``, ``hift.pt``).

- ``config.yaml`` is read as data (``config.DataLoader``); nothing is imported or built from it.
- ``*.pt`` files are opened with ``torch.load(weights_only=True)`` only: a file holding pickled code is refused.
  ``*.safetensors`` (written by ``glm4voice convert``) are preferred when present.
- Weight norm: the official HiFT stores ``weight_g`` / ``weight_v`` (old ``torch.nn.utils.weight_norm``, dim 0).
  We fold them once into a plain ``weight`` with ``torch._weight_norm`` -- the very function the official module
  calls on every forward -- so the folded weight is bit-identical and inference skips the re-normalisation.
- Models are built on the ``meta`` device and filled with ``load_state_dict(assign=True)`` after a strict key and
  shape check whose errors name the offending keys.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from glm4voice.decoder.config import DecoderConfig
from glm4voice.errors import CheckpointError
from glm4voice.int8_weights import unpack

COMPONENTS = ("flow", "hift")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file, never executing code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            sd = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from e
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # torch's message advises weights_only=False; we never do that, so only its diagnosis is kept
            detail = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
            if any("GLOBAL" in ln for ln in detail):
                raise CheckpointError(f"{path}: refused to load: the file holds objects other than tensors "
                                      f"(pickled code is never executed; only plain state dicts are accepted). "
                                      f"{detail[0]}") from e
            raise CheckpointError(f"{path}: cannot read as a torch checkpoint (corrupt or not a state dict: "
                                  f"{'; '.join(detail) or 'unpickling failed'})") from e
        except Exception as e:  # truncated zip, legacy-format garbage (KeyError), empty file (EOFError), ...
            raise CheckpointError(f"{path}: cannot read as a torch checkpoint (corrupt or not a state dict: "
                                  f"{type(e).__name__}: {e})") from e
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{path}: expected a flat mapping of names to tensors (a state dict)")
    return unpack(dict(sd), name=str(path))  # the embedded model's int8 storage (glm4voice/int8_weights.py)


def fold_weight_norm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every ``X.weight_g`` + ``X.weight_v`` pair by ``X.weight = g · v / ‖v‖`` (norm over dims ≠ 0)."""
    out = {}
    for key, value in sd.items():
        if key.endswith(".weight_v"):
            continue
        if key.endswith(".weight_g"):
            prefix = key[: -len(".weight_g")]
            if prefix + ".weight_v" not in sd:
                raise CheckpointError(f"{key} has no matching {prefix}.weight_v")
            v, g = sd[prefix + ".weight_v"].float(), value.float()
            if g.shape[0] != v.shape[0] or g.numel() != g.shape[0]:
                raise CheckpointError(f"{key}: shape {tuple(g.shape)} does not match {prefix}.weight_v "
                                      f"{tuple(v.shape)}")
            out[prefix + ".weight"] = torch._weight_norm(v, g, 0)
        else:
            out[key] = value
    orphans = [k for k in sd if k.endswith(".weight_v") and k[:-2] + "_g" not in sd]
    if orphans:
        raise CheckpointError(f"weight_v without weight_g: {', '.join(orphans[:5])}")
    return out


def _fmt(keys: list[str], n: int = 8) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], name: str, *, device: torch.device | str,
                dtype: torch.dtype) -> nn.Module:
    """Check keys and shapes against ``module`` (possibly on ``meta``) and assign the tensors."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = ([f"missing keys: {_fmt(missing)}"] if missing else []) + (
            [f"unexpected keys: {_fmt(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{name}: checkpoint does not match the config ({'; '.join(parts)})")
    for key, ref in expected.items():
        if tuple(sd[key].shape) != tuple(ref.shape):
            raise CheckpointError(f"{name}: tensor {key} has shape {tuple(sd[key].shape)}, the config expects "
                                  f"{tuple(ref.shape)}")
        if not sd[key].is_floating_point():
            raise CheckpointError(f"{name}: tensor {key} has dtype {sd[key].dtype}, expected a floating type")
        if not sd[key].is_meta and not torch.isfinite(sd[key]).all():
            raise CheckpointError(f"{name}: tensor {key} holds NaN or infinite values (a diverged or corrupt "
                                  "checkpoint)")
    sd = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    module.load_state_dict(sd, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def checkpoint_file(folder: Path, name: str) -> Path:
    """``name.safetensors`` if present (converted), else the official ``name.pt``."""
    for suffix in (".safetensors", ".pt"):
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    raise CheckpointError(f"decoder checkpoint folder {folder} has neither {name}.safetensors nor {name}.pt")


def build_meta(cfg: DecoderConfig) -> tuple[nn.Module, nn.Module]:
    """The flow and HiFT modules of ``cfg`` on the meta device (no memory, no init cost)."""
    from glm4voice.decoder.flow import Flow
    from glm4voice.decoder.hift import HiFT
    with torch.device("meta"):
        return Flow(cfg.flow), HiFT(cfg.hift)


def is_weight_normed(key: str, shape: tuple[int, ...] | torch.Size) -> bool:
    """True for HiFT conv weights that the official checkpoint stores as weight_g / weight_v: every Conv1d and
    ConvTranspose1d weight except ``source_downs`` (SPEC §3.5-3.6)."""
    return key.endswith(".weight") and len(shape) == 3 and not key.startswith("source_downs")


def official_keys(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Key -> shape as stored in the official checkpoint (weight-normed HiFT convs unfolded to weight_g/_v)."""
    from glm4voice.decoder.hift import HiFT
    out: dict[str, tuple[int, ...]] = {}
    for key, t in module.state_dict().items():
        if isinstance(module, HiFT) and is_weight_normed(key, t.shape):
            prefix = key[: -len(".weight")]
            out[prefix + ".weight_g"] = (t.shape[0], 1, 1)
            out[prefix + ".weight_v"] = tuple(t.shape)
        else:
            out[key] = tuple(t.shape)
    return out


def load_modules(folder: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 ) -> tuple[DecoderConfig, nn.Module, nn.Module]:
    """Read ``folder``'s config.yaml and weights; return (config, flow, hift) ready for inference."""
    folder = Path(folder)
    cfg = DecoderConfig.from_yaml(folder / "config.yaml")
    flow, hift = build_meta(cfg)
    flow_sd = read_state_dict(checkpoint_file(folder, "flow"))
    hift_sd = fold_weight_norm(read_state_dict(checkpoint_file(folder, "hift")))
    load_strict(flow, flow_sd, "flow", device=device, dtype=dtype)
    load_strict(hift, hift_sd, "hift", device=device, dtype=dtype)
    return cfg, flow, hift


# --- saving ------------------------------------------------------------------------------------------------
WEIGHT_FORMATS = ("safetensors", "pt")
_PARAM_G, _PARAM_V = ".parametrizations.weight.original0", ".parametrizations.weight.original1"


def hift_official_state_dict(hift: nn.Module) -> dict[str, torch.Tensor]:
    """HiFT state dict in the official layout (weight_g / weight_v for the weight-normed convs).

    Accepts a module with plain weights (inference, as loaded here: g = ‖w‖ per output channel, v = w, which
    folds back to w within one float32 rounding), with ``nn.utils.parametrizations.weight_norm`` (training:
    g and v are the parameters themselves, so folding reproduces the trained weight exactly) or with the old
    ``nn.utils.weight_norm`` hooks (already weight_g / weight_v).
    """
    out: dict[str, torch.Tensor] = {}
    for key, t in hift.state_dict().items():
        key = key.replace("_orig_mod.", "")  # torch.compile wrapper
        t = t.detach()
        if key.endswith(_PARAM_G):
            out[key[: -len(_PARAM_G)] + ".weight_g"] = t
        elif key.endswith(_PARAM_V):
            out[key[: -len(_PARAM_V)] + ".weight_v"] = t
        elif is_weight_normed(key, t.shape):
            out[key + "_g"], out[key + "_v"] = torch.norm_except_dim(t, 2, 0), t
        else:
            out[key] = t
    return out


def _write(sd: dict[str, torch.Tensor], path: Path, fmt: str, source: str) -> None:
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file(sd, str(tmp), metadata={"format": "pt", "source": source})
    else:
        torch.save(sd, tmp)  # a plain dict of tensors: loadable with weights_only=True
    tmp.replace(path)  # a reader never sees a half-written file


def save_pretrained(decoder: nn.Module | tuple[nn.Module, nn.Module], cfg: DecoderConfig | None,
                    folder: str | Path, *, weights: str = "safetensors") -> Path:
    """Write a decoder folder that ``SpeechDecoder.from_pretrained(folder)`` loads: ``config.yaml`` in the
    released structure (``DecoderConfig.to_yaml``) and ``flow`` / ``hift`` weights with the official key names,
    as ``.safetensors`` (default) or ``.pt`` state dicts (``weights="pt"``, the official file names).

    ``decoder`` is a ``SpeechDecoder`` or a ``(flow, hift)`` pair of our modules (e.g. from a trainer; HiFT may
    carry weight-norm parametrizations); ``cfg`` defaults to ``decoder.cfg``. Weights of the other format left in
    the folder are removed, so the loader cannot pick a stale file. The result is checked by a strict load on
    the meta device before returning. Returns the folder.
    """
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
    flow, hift = decoder if isinstance(decoder, tuple) else (decoder.flow, decoder.hift)
    cfg = cfg if cfg is not None else decoder.cfg
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "config.yaml.tmp"
    tmp.write_text(cfg.to_yaml())
    tmp.replace(folder / "config.yaml")
    flow_sd = {k.replace("_orig_mod.", ""): v for k, v in flow.state_dict().items()}
    for name, sd in (("flow", flow_sd), ("hift", hift_official_state_dict(hift))):
        _write(sd, folder / f"{name}.{weights}", weights, source=f"glm4voice save_pretrained ({name})")
        other = folder / f"{name}.{'pt' if weights == 'safetensors' else 'safetensors'}"
        other.unlink(missing_ok=True)
    load_modules(folder, device="meta")  # strict key / shape check of what we wrote
    return folder
