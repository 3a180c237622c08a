"""Strict loading (and saving) of the LM checkpoint in the official layout (SPEC §2.1, §2.4).

Official layout: ``config.json`` + ``model-0000k-of-0000n.safetensors`` shards with ``model.safetensors.index.json``
(the release), or a single ``model.safetensors`` (the reference vectors, our own trained models). Keys are the
official ``ChatGLMForConditionalGeneration`` names, mapped to ours by ``KEY_TABLE``. The model is built on the
``meta`` device and each tensor is read, checked and converted one at a time, so loading the 9B model needs no
more memory than the model itself. Anything missing, unexpected or mis-shaped raises ``CheckpointError`` naming
the key; nothing can execute code (safetensors only).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from glm4voice.errors import CheckpointError
from glm4voice.lm.config import GLMConfig
from glm4voice.lm.model import GLM

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json")  # the text tokenizer beside a complete LM folder
# The official module's persistent RoPE buffer; the forward pass only reads its dtype (SPEC §2.3), so we check
# its shape, drop it on load and write it on save (the official loader expects it).
INV_FREQ_KEY = "transformer.rotary_pos_emb.inv_freq"

# official key -> our parameter name ({i}: layer index)
KEY_TABLE = {
    "transformer.embedding.word_embeddings.weight": "embed.weight",
    "transformer.encoder.layers.{i}.input_layernorm.weight": "layers.{i}.attn_norm.weight",
    "transformer.encoder.layers.{i}.self_attention.query_key_value.weight": "layers.{i}.attn.qkv.weight",
    "transformer.encoder.layers.{i}.self_attention.query_key_value.bias": "layers.{i}.attn.qkv.bias",
    "transformer.encoder.layers.{i}.self_attention.dense.weight": "layers.{i}.attn.out.weight",
    "transformer.encoder.layers.{i}.post_attention_layernorm.weight": "layers.{i}.mlp_norm.weight",
    "transformer.encoder.layers.{i}.mlp.dense_h_to_4h.weight": "layers.{i}.mlp.up.weight",
    "transformer.encoder.layers.{i}.mlp.dense_4h_to_h.weight": "layers.{i}.mlp.down.weight",
    "transformer.encoder.final_layernorm.weight": "norm.weight",
    "transformer.output_layer.weight": "output.weight",
}


def _compile(table: dict[str, str]) -> list[tuple[re.Pattern, str]]:
    return [(re.compile(re.escape(src).replace(r"\{i\}", r"(\d+)") + "$"), dst) for src, dst in table.items()]


_TO_OURS = _compile(KEY_TABLE)
_TO_OFFICIAL = _compile({v: k for k, v in KEY_TABLE.items()})


def _map(key: str, rules) -> str | None:
    for pattern, dst in rules:
        m = pattern.match(key)
        if m:
            return dst.replace("{i}", m.group(1)) if m.groups() else dst
    return None


def to_ours(official_key: str) -> str | None:
    return _map(official_key, _TO_OURS)


def to_official(our_key: str) -> str:
    key = _map(our_key, _TO_OFFICIAL)
    if key is None:
        raise KeyError(f"no official name for parameter {our_key!r}")
    return key


def build_meta(cfg: GLMConfig) -> GLM:
    """The GLM of ``cfg`` on the meta device: shapes only, no memory, no random init."""
    with torch.device("meta"):
        return GLM(cfg)


def official_shapes(cfg: GLMConfig) -> dict[str, tuple[int, ...]]:
    """Every official key of a checkpoint of ``cfg`` with its shape (including the inv_freq buffer)."""
    shapes = {to_official(k): tuple(v.shape) for k, v in build_meta(cfg).state_dict().items()}
    shapes[INV_FREQ_KEY] = (cfg.rotary_dim // 2,)
    return shapes


def _weight_files(folder: Path) -> dict[str, Path]:
    """official key -> file holding it, from the index (sharded) or the single file's header."""
    from safetensors import safe_open

    index, single = folder / INDEX_FILE, folder / SINGLE_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index with a weight_map ({e})") from e
        files = {k: folder / name for k, name in weight_map.items()}
        absent = sorted({str(p.name) for p in files.values() if not p.is_file()})
        if absent:
            raise CheckpointError(f"{folder}: shard(s) named in {INDEX_FILE} are missing: {', '.join(absent)}")
        return files
    if single.is_file():
        try:
            with safe_open(str(single), framework="pt") as f:
                return {k: single for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{single}: not a readable safetensors file ({e})") from e
    bins = sorted(p.name for p in folder.glob("*.bin"))
    hint = f" (found {', '.join(bins)}: convert to safetensors; pickled weights are not loaded)" if bins else ""
    raise CheckpointError(f"LM checkpoint {folder} has neither {INDEX_FILE} nor {SINGLE_FILE}{hint}")


def iter_checkpoint(folder: str | os.PathLike, cfg: GLMConfig) -> Iterator[tuple[str, Tensor]]:
    """Yield (our parameter name, tensor as stored) after checking the key set and every shape against ``cfg``."""
    from safetensors import safe_open

    from glm4voice.int8_weights import SCALE_SUFFIX, unpack_tensor

    folder = Path(folder)
    files = _weight_files(folder)
    # the embedded model's int8 storage (glm4voice/int8_weights.py): KEY as int8 + KEY.int8_scale
    scales = {k[:-len(SCALE_SUFFIX)]: k for k in files if k.endswith(SCALE_SUFFIX)}
    files = {k: v for k, v in files.items() if not k.endswith(SCALE_SUFFIX)}
    orphans = sorted(scales[k] for k in scales if k not in files)
    if orphans:
        raise CheckpointError(f"LM checkpoint {folder}: scale(s) without their tensor: {', '.join(orphans[:8])}")
    want = official_shapes(cfg)
    missing = sorted(k for k in want if k not in files and k != INV_FREQ_KEY)
    unexpected = sorted(k for k in files if k not in want)
    if missing or unexpected:
        parts = [f"missing {len(missing)} key(s): {', '.join(missing[:8])}" if missing else "",
                 f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:8])}" if unexpected else ""]
        raise CheckpointError(f"LM checkpoint {folder} does not match its config: " + "; ".join(p for p in parts if p))
    by_file: dict[Path, list[str]] = {}
    for key, path in files.items():
        by_file.setdefault(path, []).append(key)
    for path, keys in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            present = set(f.keys())
            for key in sorted(keys):
                if key not in present:
                    raise CheckpointError(f"{path.name}: key {key} listed in {INDEX_FILE} is not in the file")
                shape = tuple(f.get_slice(key).get_shape())
                if shape != want[key]:
                    raise CheckpointError(f"{path.name}: {key} has shape {list(shape)}, the config needs "
                                          f"{list(want[key])}")
                if key == INV_FREQ_KEY:
                    continue
                tensor = f.get_tensor(key)
                if key in scales:
                    if scales[key] not in present:
                        raise CheckpointError(f"{path.name}: {key} is int8, its scale {scales[key]} is in another file")
                    tensor = unpack_tensor(tensor, f.get_tensor(scales[key]), key=f"{path.name}: {key}")
                elif tensor.dtype == torch.int8:
                    raise CheckpointError(f"{path.name}: int8 tensor {key} has no scale ({key}{SCALE_SUFFIX})")
                yield to_ours(key), tensor


def load_lm(path: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
            seq_length: int | None = None, quantize: str | None = None, progress: bool = False) -> GLM:
    """Load the GLM in ``path`` (a local folder; see ``glm4voice.checkpoints.resolve``) in eval mode.

    ``dtype`` defaults to the config's ``torch_dtype`` (bfloat16 for the release). ``quantize="int8"`` stores
    the linear weights as int8 with per-channel scales (``quant.py``), converting one tensor at a time.
    ``progress`` shows a progress bar (the 9B release is 284 tensors, 19 GB).
    """
    folder = Path(path)
    cfg = GLMConfig.from_json(folder / CONFIG_FILE, seq_length=seq_length)
    dtype = dtype or getattr(torch, cfg.torch_dtype)
    model = build_meta(cfg)
    if quantize is not None:
        from glm4voice.lm.quant import quantize_meta

        quantize_meta(model, quantize)
    state = {}
    params = dict(model.named_parameters())
    tensors = iter_checkpoint(folder, cfg)
    if progress:
        from tqdm import tqdm

        tensors = tqdm(tensors, total=len(official_shapes(cfg)) - 1, desc="loading LM", unit="tensor")  # no inv_freq
    for name, tensor in tensors:
        state.update(_convert(model, params, name, tensor, device, dtype))
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _convert(model: GLM, params: dict, name: str, tensor: Tensor, device, dtype) -> dict[str, Tensor]:
    if name in params:  # a plain parameter
        return {name: tensor.to(device=device, dtype=dtype)}
    from glm4voice.lm.quant import quantize_tensor  # the meta model holds a quantised module here

    return quantize_tensor(model, name, tensor, device=device, dtype=dtype)


def save_pretrained(model: GLM, folder: str | os.PathLike, *, dtype: torch.dtype | None = None,
                    cfg: GLMConfig | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` in the official layout (loadable by ``load_lm`` and by the
    official ``modeling_chatglm.py``). ``dtype`` defaults to the model's; the config's torch_dtype follows it."""
    from dataclasses import replace

    from safetensors.torch import save_file

    cfg = cfg or model.cfg
    state = model.state_dict()
    if any(not t.is_floating_point() for t in state.values()):
        raise CheckpointError("save_pretrained: the model is quantised; save the unquantised model")
    dtype = dtype or model.dtype
    name = str(dtype).removeprefix("torch.")
    cfg = replace(cfg, torch_dtype=name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {to_official(k): v.detach().to("cpu", dtype).contiguous().clone() for k, v in state.items()}
    d = cfg.rotary_dim  # official RotaryEmbedding(dim=kv_channels // 2).inv_freq, base 10000 without rope_ratio
    tensors[INV_FREQ_KEY] = (1.0 / (10000 ** (torch.arange(0, d, 2).to(dtype) / d))).to(dtype)
    save_file(tensors, str(folder / (SINGLE_FILE + ".part")), metadata={"format": "pt"})
    os.replace(folder / (SINGLE_FILE + ".part"), folder / SINGLE_FILE)
    cfg.to_json(folder / CONFIG_FILE)
    return folder


def require_tokenizer(folder: str | os.PathLike, command: str) -> None:
    """Refuse an LM folder without its text tokenizer files (a tool that writes a complete folder copies them)."""
    missing = [f for f in TOKENIZER_FILES if not (Path(folder) / f).is_file()]
    if missing:
        raise CheckpointError(f"{folder}: no {missing[0]} ({command} needs a complete LM folder with its tokenizer)")


def write_model_folder(model: GLM, out: str | os.PathLike, *, tokenizer_from: str | os.PathLike, dtype: torch.dtype,
                       record_name: str, record: dict) -> Path:
    """Replace ``out`` with a complete LM folder: ``model`` saved in ``dtype``, the text tokenizer files of
    ``tokenizer_from`` and ``record`` (how it was made) as ``record_name``."""
    import shutil

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in TOKENIZER_FILES:
        shutil.copy2(Path(tokenizer_from) / f, out / f)
    save_pretrained(model, out, dtype=dtype)
    (out / record_name).write_text(json.dumps(record, indent=2) + "\n")
    return out
