"""The GLM-4 language model of GLM-4-Voice-9B (ChatGLM architecture), plain PyTorch.

Behaviour follows the official ``modeling_chatglm.py`` at inference (SPEC §2.3): pre-norm blocks with RMSNorm
(statistics in fp32), fused QKV with bias, grouped-query attention (query head h reads KV group h // (H / G)),
rotary embedding on the first half of each head's dims as interleaved pairs, SwiGLU MLP, untied output layer.
Parameter names are ours; ``load.py`` maps them to the official keys.

Two ways to run it:
- ``model(ids)`` — full causal attention over ``ids`` (training, scoring); ``mask`` replaces the causal mask,
  e.g. ``packed_mask(segment_ids)`` for several documents packed into one row.
- ``model(ids, positions, cache=kv, slots=rows, kv_len=n)`` — writes this chunk's keys/values into a static
  ``KVCache`` (``generate.py``) at the explicit ``positions`` and attends to cache entries ``0..position``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glm4voice.lm.config import GLMConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # official order: x * rsqrt(mean(x^2) + eps) promoted to fp32, times the weight in fp32, cast back
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (self.weight * (x * torch.rsqrt(var + self.eps))).to(x.dtype)


def rope(position_ids: Tensor, cfg: GLMConfig, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos, sin of shape (B, T, 1, rotary_dim/2): angles in fp32, then cast to the model dtype (SPEC §2.3).

    Computed from the positions directly (no seq_length table): the same fp32 products as the official table.
    """
    n = cfg.rotary_dim
    theta = 1.0 / (cfg.rope_base ** (torch.arange(0, n, 2, dtype=torch.float, device=position_ids.device) / n))
    angles = position_ids.float()[..., None] * theta
    return angles.cos().to(dtype)[:, :, None], angles.sin().to(dtype)[:, :, None]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs (x0, x1), (x2, x3), ... of the first rotary dims of x (B, T, heads, head_dim)."""
    r = cos.shape[-1] * 2
    pairs = x[..., :r].unflatten(-1, (r // 2, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], -1).flatten(-2)
    return torch.cat([rotated, x[..., r:]], -1)


# Masked chunks up to this many tokens use grouped_attention, whose mask grows with heads-per-group x tokens;
# longer ones repeat K/V per head instead (a transient the size of the chunk's keys, not a (R*T, S) mask).
GROUPED_MAX_QUERIES = 16


class Attention(nn.Module):
    def __init__(self, cfg: GLMConfig):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, cfg.qkv_size, bias=cfg.add_qkv_bias)
        self.out = nn.Linear(self.n_head * self.head_dim, cfg.hidden_size, bias=False)
        self.dropout = 0.0  # attention_dropout: on the attention weights, in training mode only (GLM.set_dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, kv_write=None) -> Tensor:
        B, T, _ = x.shape
        p = self.dropout if self.training else 0.0
        hd = self.head_dim
        qk, v = self.qkv(x).split([(self.n_head + self.n_kv) * hd, self.n_kv * hd], dim=-1)
        qk = apply_rope(qk.view(B, T, self.n_head + self.n_kv, hd), cos, sin).transpose(1, 2)  # q and k at once
        q, k = qk[:, : self.n_head], qk[:, self.n_head:]
        v = v.view(B, T, self.n_kv, hd).transpose(1, 2)
        if kv_write is not None:
            k, v = kv_write(k, v)  # this chunk written into the cache; returns all cached keys/values
        if mask is None:  # plain causal: flash kernels take GQA directly
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=self.n_kv != self.n_head,
                                               dropout_p=p)
        elif T <= GROUPED_MAX_QUERIES and not p:  # decode steps: fold the query heads of a group into the query length
            y = grouped_attention(q, k, v, mask)
        else:  # long masked chunks (prefill after a reused prefix, packed sequences): one mask for all heads
            r = self.n_head // self.n_kv
            y = F.scaled_dot_product_attention(q, k.repeat_interleave(r, 1), v.repeat_interleave(r, 1), attn_mask=mask,
                                               dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(B, T, self.n_head * hd))


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Attention of q (B, H, T, D) over k, v (B, G, S, D) with a bool mask (B, 1, T, S), H = G * R.

    The R query heads of a KV group are folded into the query length, (B, G, R*T, D), so every SDPA backend runs
    it without repeating keys/values per head. Measured on CPU (torch 2.13, one decode token, S = 2048, 32 heads,
    2 groups): 1.9 ms instead of 40 ms (bf16) with ``enable_gqa``.
    """
    B, H, T, D = q.shape
    G, S = k.shape[1], k.shape[2]
    R = H // G
    mask = mask[:, :, None].expand(B, 1, R, T, S).reshape(B, 1, R * T, S)
    y = F.scaled_dot_product_attention(q.reshape(B, G, R * T, D), k, v, attn_mask=mask)
    # reshape, not view: CUDA's SDPA kernels may return (B, G, R*T, D) in another memory layout (a decode step
    # through the cache failed with view on an H200, session 13)
    return y.reshape(B, H, T, D)


class MLP(nn.Module):
    def __init__(self, cfg: GLMConfig):
        super().__init__()
        self.up = nn.Linear(cfg.hidden_size, 2 * cfg.ffn_hidden_size, bias=False)  # [gate | up] halves
        self.down = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: GLMConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.layernorm_epsilon)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.layernorm_epsilon)
        self.mlp = MLP(cfg)
        self.dropout = 0.0  # hidden_dropout: on each branch's output before the residual add, in training mode only

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, kv_write=None) -> Tensor:
        if self.training and self.dropout:  # as the official GLMBlock: drop each branch output, then add
            x = x + F.dropout(self.attn(self.attn_norm(x), cos, sin, mask, kv_write), self.dropout, True)
            return x + F.dropout(self.mlp(self.mlp_norm(x)), self.dropout, True)
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, kv_write)
        return x + self.mlp(self.mlp_norm(x))


class GLM(nn.Module):
    """GLM-4 decoder. ``forward`` returns logits (B, T, vocab) in the weights' dtype (the official logits too)."""

    def __init__(self, cfg: GLMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.padded_vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.layernorm_epsilon)
        self.output = nn.Linear(cfg.hidden_size, cfg.padded_vocab_size, bias=False)

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None, *, mask: Tensor | None = None,
                cache=None, slots: Tensor | None = None, kv_len: int | None = None,
                last_only: bool = False) -> Tensor:
        """input_ids, position_ids: (B, T) int64. Without ``cache``: causal attention over the T tokens (or
        ``mask``, bool (B, 1, T, T), True = attend), positions default to 0..T-1.

        With ``cache`` (``generate.KVCache``): row b of the batch is cache slot ``slots[b]`` (default: slot b);
        its keys/values are written at ``position_ids[b]`` and each query attends to that slot's entries
        ``0..position``. ``kv_len`` (> every position) limits attention to the first ``kv_len`` cache entries;
        ``kv_len == T`` means the chunk is positions 0..T-1 (a fresh prompt), attended causally without a mask.
        ``last_only`` computes logits of the last position only (B, 1, vocab).
        """
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        cos, sin = rope(position_ids, self.cfg, self.dtype)
        if cache is not None:  # a chunk filling entries 0..T-1 of empty slots is plain causal: no mask needed
            mask = None if kv_len == T and T > 1 else cache.mask(position_ids, kv_len)
        x = self.embed(input_ids)
        for i, layer in enumerate(self.layers):
            write = None if cache is None else _writer(cache, i, slots, position_ids, kv_len)
            x = layer(x, cos, sin, mask, write)
        x = self.norm(x)
        return self.output(x[:, -1:] if last_only else x)

    def set_dropout(self, hidden: float = 0.0, attention: float = 0.0) -> None:
        """Training-time regularisation, the config's ``hidden_dropout`` / ``attention_dropout`` (0 in the release and
        in every file we write: inference never drops). Active in ``train()`` mode only."""
        for name, p in (("hidden", hidden), ("attention", attention)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} dropout must be in [0, 1), not {p}")
        for block in self.layers:
            block.dropout, block.attn.dropout = float(hidden), float(attention)

    @property
    def dtype(self) -> torch.dtype:
        """Activation dtype (the norms stay in it when the matrices are quantised)."""
        return self.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    def init_weights(self, std: float = 0.02) -> None:
        """Training init: N(0, std) matrices, zero biases, unit norms (the release's init is not known)."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, std=std)


def _writer(cache, layer: int, slots: Tensor | None, positions: Tensor, kv_len: int | None):
    return lambda k, v: cache.update(layer, k, v, positions, slots, kv_len)


def packed_mask(segment_ids: Tensor) -> Tensor:
    """Causal mask of several sequences packed into one row: (B, T) segment ids -> bool (B, 1, T, T).

    Query t attends to key s iff s <= t and both belong to the same segment. Pair it with position_ids that
    restart at 0 in each segment.
    """
    T = segment_ids.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (same & causal)[:, None]
