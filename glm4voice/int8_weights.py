"""Group-wise int8 storage of weight files: how the embedded model stays small in git.

A packed tensor ``K`` is stored as int8 in its own shape, next to ``K + SCALE_SUFFIX``: one float16 scale per group
of ``g`` consecutive values (row-major order), ``w ~= q * scale`` with ``q`` in [-127, 127]. ``g`` is not stored: it
is ``K``'s size over the scales' size, so a reader needs nothing but the file. Official checkpoints hold no such
keys; each component's reader calls ``unpack`` before its strict key and shape checks, so a packed folder loads
wherever the unpacked one does (as float32; the loaders then cast to the dtype asked for) and their errors still
name official keys.

Why groups, not one scale per row: on tok_w1b (session 31; 60 held-out corpus utterances, 2,353 codes), the share
of codes that change against the float32 weights was 0.5 % in bfloat16, 1.7 % with one int8 scale per row, 0.8 %
with one per 64 values. Stored size: 1 + 2/64 bytes a value against bfloat16's 2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from glm4voice.errors import CheckpointError

SCALE_SUFFIX = ".int8_scale"
GROUP = 64  # values per scale
MIN_NUMEL = 4096  # smaller tensors (biases, norms) stay as they are: they weigh nothing
QMAX = 127  # symmetric: -128 is never used


def pack_tensor(w: Tensor, group: int = GROUP) -> tuple[Tensor, Tensor]:
    """(q int8 in ``w``'s shape, scales float16 of shape (w.numel() // group,)) with w ~= q * scale per group."""
    if w.numel() % group:
        raise ValueError(f"{w.numel()} values do not split into groups of {group}")
    g = w.detach().to(torch.float32).reshape(-1, group)
    # fp16 scales (10-bit mantissa): bf16's 8 bits would add an error as large as int8's own rounding
    scale = (g.abs().amax(dim=1) / QMAX).clamp(min=1e-8).to(torch.float16)
    q = torch.round(g / scale.to(torch.float32)[:, None]).clamp(-QMAX, QMAX).to(torch.int8)
    return q.reshape(w.shape), scale


def unpack_tensor(q: Tensor, scale: Tensor, key: str = "tensor") -> Tensor:
    """float32 ``q * scale`` per group; CheckpointError naming ``key`` when the pair is not a packed tensor."""
    if q.dtype != torch.int8:
        raise CheckpointError(f"{key} has a scale ({key}{SCALE_SUFFIX}) but dtype {q.dtype}, not int8")
    if scale.dim() != 1 or scale.numel() == 0 or q.numel() % scale.numel() or not scale.is_floating_point():
        raise CheckpointError(f"{key}{SCALE_SUFFIX}: {tuple(scale.shape)} {scale.dtype} is not a float vector "
                              f"that splits the {q.numel()} values of {key} into equal groups")
    g = q.to(torch.float32).reshape(scale.numel(), -1) * scale.to(torch.float32)[:, None]
    return g.reshape(q.shape)


def packable(key: str, w: Tensor, *, min_numel: int = MIN_NUMEL, group: int = GROUP) -> bool:
    return w.is_floating_point() and w.dim() >= 2 and w.numel() >= min_numel and w.numel() % group == 0 \
        and not key.endswith(SCALE_SUFFIX)


def pack(sd: dict[str, Tensor], *, group: int = GROUP, min_numel: int = MIN_NUMEL, keep: tuple[str, ...] = (),
         ) -> dict[str, Tensor]:
    """A copy of ``sd`` with every float matrix or conv kernel of at least ``min_numel`` values packed, except the
    keys in ``keep`` (e.g. a VQ codebook, whose nearest-neighbour search should see its exact values)."""
    out = {}
    for key, w in sd.items():
        if key in keep or not packable(key, w, min_numel=min_numel, group=group):
            out[key] = w
            continue
        out[key], out[key + SCALE_SUFFIX] = pack_tensor(w, group)
    return out


def is_packed(sd) -> bool:
    return any(k.endswith(SCALE_SUFFIX) for k in sd)


def unpack(sd: dict[str, Tensor], *, name: str = "weights") -> dict[str, Tensor]:
    """``sd`` with every packed pair replaced by its float32 tensor (``sd`` itself when nothing is packed); an
    int8 tensor without its scale is an error (it would load as garbage)."""
    if not is_packed(sd):
        lone = [k for k, w in sd.items() if w.dtype == torch.int8]
        if lone:
            raise CheckpointError(f"{name}: int8 tensor(s) without a scale ({SCALE_SUFFIX}): {', '.join(lone[:8])}")
        return sd
    out = {}
    for key, w in sd.items():
        if key.endswith(SCALE_SUFFIX):
            if key[:-len(SCALE_SUFFIX)] not in sd:
                raise CheckpointError(f"{name}: {key} scales a tensor the file does not hold")
            continue
        scale = sd.get(key + SCALE_SUFFIX)
        if scale is None and w.dtype == torch.int8:
            raise CheckpointError(f"{name}: int8 tensor {key} has no scale ({key}{SCALE_SUFFIX})")
        out[key] = w if scale is None else unpack_tensor(w, scale, key=f"{name}: {key}")
    return out
