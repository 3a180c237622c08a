"""WhisperVQ encoder at inference: log-mel (50 Hz after conv) -> 12.5 Hz codebook ids (SPEC §1.5).

    features (B, 128, N) --causal conv k3 s1, GELU--> --causal conv k3 s2, GELU--> (B, N/2, d) + learned positions
    --> quantize_position pre-LN Whisper layers, block-causal attention (blocks of 200 positions = 4 s)
    --> avg-pool 4 --> nearest codebook entry (squared L2)  => ids (B, N/8)

Module and parameter names equal the official ``WhisperVQEncoder`` state-dict keys, so the checkpoint loads
without a key table. The Whisper decoder, layers after quantisation, and the final layer norm do not exist in
the released encoder-only checkpoint and are not built.

Every layer can also run on one block at a time over a preallocated key/value cache holding the earlier blocks
(``cache``, ``start``): this is how ``tokenizer/stream.py`` computes only what is new. The cache is written in
place (no concatenation: ``torch.cat`` of growing caches cost more than the block's matmuls on CPU).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glm4voice.tokenizer.config import TokenizerConfig

KV = tuple[Tensor, Tensor]  # (keys, values), each (B, heads, T, head_dim)


def block_causal_mask(key_valid: Tensor, q_start: int, q_len: int, block: int, dtype: torch.dtype) -> Tensor:
    """Additive mask (B, 1, q_len, Tk) for queries at positions q_start.. over keys 0..Tk-1 of the same chunk.

    Query i sees key j iff (j <= i or j and i share a block of ``block`` positions) and key j is valid;
    allowed -> 0, refused -> finfo(dtype).min, as the official ``get_block_causal_attention_mask``.
    """
    q = torch.arange(q_start, q_start + q_len, device=key_valid.device)[:, None]
    k = torch.arange(key_valid.shape[-1], device=key_valid.device)[None]
    allowed = ((k <= q) | (k // block == q // block))[None] & key_valid[:, None, :].bool()
    return ((1.0 - allowed.to(dtype)) * torch.finfo(dtype).min)[:, None]


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d, bias=False)  # Whisper's key projection has no bias
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: Tensor, mask: Tensor, cache: KV | None = None, start: int = 0) -> tuple[Tensor, KV]:
        """x (B, T, d) at positions start..start+T-1; mask additive (B, 1, T, start + T).

        cache: this layer's (keys, values) buffers (B, heads, capacity, head_dim) holding positions 0..start-1;
        the new keys/values are written at start..start+T-1 and attention reads 0..start+T-1.
        Returns the output and the keys/values attended to.
        """
        b, t, d = x.shape

        def split(y: Tensor) -> Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        if cache is not None:
            cache[0][:, :, start: start + t] = k
            cache[1][:, :, start: start + t] = v
            k, v = cache[0][:, :, : start + t], cache[1][:, :, : start + t]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scale head_dim^-0.5, as the official SDPA
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d)), (k, v)


class EncoderLayer(nn.Module):
    """Pre-LN Whisper encoder layer (LayerNorm eps 1e-5, exact GELU)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.self_attn = Attention(cfg.d_model, cfg.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.encoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_dim, cfg.d_model)
        self.final_layer_norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: Tensor, mask: Tensor, cache: KV | None = None, start: int = 0) -> tuple[Tensor, KV]:
        h, kv = self.self_attn(self.self_attn_layer_norm(x), mask, cache, start)
        x = x + h
        x = x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        return x, kv


class WhisperVQEncoder(nn.Module):
    """The encoder-only WhisperVQ tokenizer. ``with_ema`` adds the training-only EMA buffers (for key checks)."""

    def __init__(self, cfg: TokenizerConfig, *, with_ema: bool = False):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.conv1 = nn.Conv1d(cfg.num_mel_bins, d, kernel_size=3)  # causal: 2 zeros on the left, none right
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2)
        self.embed_positions = nn.Embedding(cfg.max_source_positions, d)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.codebook = nn.Embedding(cfg.quantize_vocab_size, d)
        # Added to the quantised vectors by the official forward for the (absent) layers after quantisation; the
        # ids never depend on it. Kept so that the module's keys equal the released checkpoint's.
        self.embed_positions2 = nn.Embedding(math.ceil(cfg.max_source_positions / cfg.pooling_kernel_size), d)
        if with_ema:
            self.register_buffer("ema_count", torch.ones(cfg.quantize_vocab_size))
            self.register_buffer("ema_weight", torch.zeros(cfg.quantize_vocab_size, d))

    # -- pieces, also used one block at a time by the streaming encoder ------------------------------------------
    def conv_front(self, feats: Tensor, *, at_start: bool) -> Tensor:
        """Causal conv1 -> GELU -> conv2 (stride 2) -> GELU; (B, mels, n) -> (B, T, d).

        at_start: ``feats`` are frames 0..n-1 of a chunk (zero left padding as the official CausalConv1d);
        T = ceil(n / 2). Otherwise ``feats`` are frames 2*t0 - 4 .. 2*t1 - 2 (4 frames of left context) and
        the outputs are positions t0..t1-1, bit-for-bit what the full causal convolution gives there.
        """
        with _no_tf32_convs(feats.device):
            if at_start:
                feats = F.pad(feats, (2, 0))
            h = F.gelu(self.conv1(feats))
            if at_start:
                h = F.pad(h, (2, 0))
            return F.gelu(self.conv2(h)).transpose(1, 2)

    def add_positions(self, x: Tensor, start: int) -> Tensor:
        return x + self.embed_positions.weight[start: start + x.shape[1]]

    def run_layers(self, x: Tensor, mask: Tensor, cache: list[KV] | None = None, start: int = 0,
                   ) -> tuple[Tensor, list[KV]]:
        """All layers over x (B, T, d) at positions start..; ``cache``: per-layer buffers (see Attention)."""
        kvs = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, mask, None if cache is None else cache[i], start)
            kvs.append(kv)
        return x, kvs

    def new_cache(self, batch: int, capacity: int, *, device=None, dtype=None) -> list[KV]:
        """Empty per-layer (keys, values) buffers (batch, heads, capacity, head_dim)."""
        w = self.codebook.weight
        shape = (batch, self.cfg.encoder_attention_heads, capacity, self.cfg.head_dim)
        return [(torch.empty(shape, device=device or w.device, dtype=dtype or w.dtype),
                 torch.empty(shape, device=device or w.device, dtype=dtype or w.dtype)) for _ in self.layers]

    def pool(self, x: Tensor) -> Tensor:
        """Average-pool 4 along time, zero-padding T up to a multiple of 4 as the official code; (B, T/4, d)."""
        k = self.cfg.pooling_kernel_size
        x = x.transpose(1, 2)
        if x.shape[-1] % k:
            x = F.pad(x, (0, k - x.shape[-1] % k))
        return F.avg_pool1d(x, k, k).transpose(1, 2)

    def quantize(self, h: Tensor) -> Tensor:
        """Nearest codebook ids (B, T) by ||c||^2 + ||x||^2 - 2 x.c (one addmm, as the official code), in fp32."""
        flat = h.reshape(-1, h.shape[-1]).float()
        book = self.codebook.weight.float()
        dist = torch.addmm((book**2).sum(1) + (flat**2).sum(1, keepdim=True), flat, book.t(), beta=1.0, alpha=-2.0)
        return dist.argmin(dim=1).view(h.shape[:-1])

    # -- offline -------------------------------------------------------------------------------------------------
    def forward(self, features: Tensor, frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """features (B, mels, N), N even, <= 2 * max_source_positions; frame_mask (B, N) 1 = real frame.

        Returns ids (B, N / 8) and the pre-quantisation hidden states (B, N / 8, d); the caller keeps the
        positions where ``frame_mask[:, ::8]`` is 1.
        """
        x = self.add_positions(self.conv_front(features, at_start=True), 0)
        key_valid = frame_mask[:, ::2]
        mask = block_causal_mask(key_valid, 0, x.shape[1], self.cfg.quantize_causal_block_size, x.dtype)
        x, _ = self.run_layers(x, mask)
        h = self.pool(x)
        return self.quantize(h), h


@contextmanager
def _no_tf32_convs(device: torch.device):
    """Run cuDNN convolutions in full fp32 inside the block. cuDNN uses TF32 for fp32 convolutions by default
    (``torch.backends.cudnn.allow_tf32``); on an H200 that moved the reference's pre-quantisation states by 3e-3
    against 1e-5 on the CPU (session 13), enough to flip a code near a tie. The two front convolutions are a tiny
    share of the encoder's work. (The flag is process-wide: a decoder convolution in another thread during this
    block also runs in full fp32, which is harmless.)"""
    if device.type != "cuda" or not torch.backends.cudnn.allow_tf32:
        yield
        return
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = True
