"""Int8 weight-only quantisation of the GLM (per-output-channel symmetric scales).

Every linear layer and the two vocabulary matrices keep int8 weights and one scale per output row (embedding:
per token row); activations, norms and the KV cache stay in the model dtype. The 9B model drops from 19.09 GB
(bf16) to 9.55 GB of weights (embedding included, scales in bf16), so it fits a 12 GB GPU with a few thousand
tokens of KV cache (40 KiB per token), or a 24 GB CPU box. On CPU the matmul is torch's int8-weight kernel
(``_weight_int8pack_mm``); elsewhere the weight is converted to the activation dtype inside the matmul (as
gpt-fast does; torch.compile fuses the conversion into the weight read).

Int4 (not implemented): group-wise 4-bit weights (groups of 32-128 input channels, a bf16 scale per group) would
take about 5.3 GB (with an int8 embedding) and need a packed-int4 matmul kernel (e.g. torch's
``_weight_int4pack_mm``) to be fast; its logit error would have to be measured like int8's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODES = ("int8",)
_ROW_CHUNK = 8192  # rows quantised at a time, bounding the fp32 temporary of the 168960-row matrices


def quantize_rows(w: Tensor, device=None) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: w ~= q * scale[:, None]; returns (q int8, scale fp32) on ``device``."""
    device = device or w.device
    qs, scales = [], []
    for chunk in w.split(_ROW_CHUNK):
        c = chunk.to(device=device, dtype=torch.float32)
        scale = c.abs().amax(dim=1).clamp(min=1e-12) / 127
        qs.append(torch.round(c / scale[:, None]).clamp(-127, 127).to(torch.int8))
        scales.append(scale)
    return torch.cat(qs), torch.cat(scales)


class Int8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.empty(out_features, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if self._cpu_kernel(x):  # torch's int8-weight matmul reads int8 directly (measured 10-20x faster on CPU)
            flat = torch._weight_int8pack_mm(x.reshape(-1, self.in_features), self.weight, self.scale.to(x.dtype))
            y = flat.view(*x.shape[:-1], self.out_features)
        else:  # dequantise-then-matmul; torch.compile fuses the conversion into the matmul's weight read
            y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias


    def _cpu_kernel(self, x: Tensor) -> bool:
        # torch 2.13's CPU kernel crashes (segfault) on 16-bit inputs unless in_features % 16 == 0 (measured)
        return x.device.type == "cpu" and (x.dtype == torch.float32 or self.in_features % 16 == 0)


class Int8Embedding(nn.Module):
    def __init__(self, num: int, dim: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("weight", torch.empty(num, dim, dtype=torch.int8))
        self.register_buffer("scale", torch.empty(num, dtype=dtype))

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight).to(self.scale.dtype) * self.scale[ids][..., None]


def _targets(model: nn.Module):
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.Linear | nn.Embedding):
                yield module, child_name, child, f"{name}.{child_name}" if name else child_name


def quantize_meta(model: nn.Module, mode: str = "int8") -> nn.Module:
    """Swap every Linear / Embedding of a meta-device model for its int8 twin (for loading quantised)."""
    _check(mode)
    for parent, child_name, child, _ in list(_targets(model)):
        with torch.device("meta"):
            if isinstance(child, nn.Linear):
                new = Int8Linear(child.in_features, child.out_features, child.bias is not None)
            else:
                new = Int8Embedding(child.num_embeddings, child.embedding_dim)
        setattr(parent, child_name, new)
    return model


def quantize_tensor(model: nn.Module, name: str, tensor: Tensor, *, device, dtype) -> dict[str, Tensor]:
    """State-dict entries of a quantised module's ``weight`` read from a checkpoint tensor."""
    if not name.endswith(".weight"):
        raise KeyError(f"{name} is not a quantisable weight")
    q, scale = quantize_rows(tensor, device)
    return {name: q, name[: -len("weight")] + "scale": scale.to(dtype)}


@torch.no_grad()
def quantize_model(model: nn.Module, mode: str = "int8") -> nn.Module:
    """Quantise a loaded model in place (same device; scales in the model's dtype)."""
    _check(mode)
    for parent, child_name, child, _ in list(_targets(model)):
        q, scale = quantize_rows(child.weight)
        dtype = child.weight.dtype
        if isinstance(child, nn.Linear):
            new = Int8Linear(child.in_features, child.out_features, child.bias is not None, dtype)
            if child.bias is not None:
                new.bias.data = child.bias.data
        else:
            new = Int8Embedding(child.num_embeddings, child.embedding_dim, dtype)
        new.weight, new.scale = q, scale.to(dtype)
        setattr(parent, child_name, new.to(q.device))
    return model


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _check(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown quantisation {mode!r}; expected one of {MODES}")
