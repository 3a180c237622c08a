"""The flow-matching vector-field estimator: a 1-D U-Net of ResNet and transformer blocks (SPEC §3.4).

Shapes: x, mu, cond (B, 80, F); spks (B, 80); t a 0-d tensor or (B,); output (B, 80, F). State-dict names
follow the official ``decoder.estimator.*`` keys (Matcha-TTS ``ConditionalDecoder`` + diffusers blocks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from glm4voice.decoder.config import EstimatorConfig

GROUPS = 8  # GroupNorm groups of Block1D (Matcha default)


class SinusoidalPosEmb(nn.Module):
    """Matcha time embedding: emb_k = 1000·t·exp(−k·ln(10000)/(half−1)), then [sin, cos]."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).float()
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
        emb = 1000 * t.unsqueeze(1) * freq.unsqueeze(0)
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(t)))


class Block1D(nn.Module):
    """Conv1d(k3) -> GroupNorm(8) -> Mish, masked before and after."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(dim, dim_out, 3, padding=1), nn.GroupNorm(GROUPS, dim_out), nn.Mish())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.block(x * mask) * mask


class ResnetBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_emb_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_emb_dim, dim_out))
        self.block1 = Block1D(dim, dim_out)
        self.block2 = Block1D(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x, mask)
        h = h + self.mlp(t_emb).unsqueeze(-1)
        h = self.block2(h, mask)
        return h + self.res_conv(x * mask)


class Attention(nn.Module):
    """diffusers ``Attention`` as used here: q/k/v without bias, output projection with bias."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, inner = heads, heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (proj(x).view(b, t, self.heads, -1).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v))
        # The official code passes the 0/1 float mask as an *additive* bias (SPEC §3.4 quirk): at B=1 with no
        # padding it adds a constant to every score, which the softmax cancels, so no mask is passed here.
        y = F.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](y.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    """Linear -> exact GELU -> Linear, named like diffusers (``net.0.proj``, ``net.2``)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.net = nn.ModuleList([_GELUProj(dim, inner), nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class _GELUProj(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + feed-forward (diffusers BasicTransformerBlock without cross-attention)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        return self.ff(self.norm3(x)) + x


class Downsample1D(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1D(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _stage(resnet: nn.Module, n_blocks: int, dim: int, cfg: EstimatorConfig, last: nn.Module | None) -> nn.ModuleList:
    blocks = nn.ModuleList([TransformerBlock(dim, cfg.num_heads, cfg.attention_head_dim) for _ in range(n_blocks)])
    return nn.ModuleList([resnet, blocks] + ([last] if last is not None else []))


def _run_blocks(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    x = x.transpose(1, 2).contiguous()
    for block in blocks:
        x = block(x)
    return x.transpose(1, 2).contiguous()


class Estimator(nn.Module):
    """ConditionalDecoder: v = U-Net([x, mu, spks, cond], t)."""

    def __init__(self, cfg: EstimatorConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        t_dim = ch[0] * 4
        self.time_embeddings = SinusoidalPosEmb(cfg.in_channels)
        self.time_mlp = TimestepEmbedding(cfg.in_channels, t_dim)
        self.down_blocks, self.mid_blocks, self.up_blocks = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        c_out = cfg.in_channels
        for i, c in enumerate(ch):
            c_in, c_out = c_out, c
            last_stage = i == len(ch) - 1
            down = Downsample1D(c_out) if not last_stage else nn.Conv1d(c_out, c_out, 3, padding=1)
            self.down_blocks.append(_stage(ResnetBlock1D(c_in, c_out, t_dim), cfg.n_blocks, c_out, cfg, down))
        for _ in range(cfg.num_mid_blocks):
            self.mid_blocks.append(_stage(ResnetBlock1D(ch[-1], ch[-1], t_dim), cfg.n_blocks, ch[-1], cfg, None))
        rev = tuple(reversed(ch)) + (ch[0],)
        for i in range(len(rev) - 1):
            c_in, c_out = rev[i], rev[i + 1]
            last_stage = i == len(rev) - 2
            up = Upsample1D(c_out) if not last_stage else nn.Conv1d(c_out, c_out, 3, padding=1)
            self.up_blocks.append(_stage(ResnetBlock1D(2 * c_in, c_out, t_dim), cfg.n_blocks, c_out, cfg, up))
        self.final_block = Block1D(ch[0], ch[0])
        self.final_proj = nn.Conv1d(ch[0], cfg.out_channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, spks: torch.Tensor,
                cond: torch.Tensor) -> torch.Tensor:
        """x, mu, cond (B, 80, F); mask (B, 1, F); t 0-d or (B,); spks (B, 80) -> (B, 80, F)."""
        t_emb = self.time_mlp(self.time_embeddings(t))
        x = torch.cat([x, mu, spks.unsqueeze(-1).expand(-1, -1, x.shape[-1]), cond], dim=1)
        skips, masks = [], [mask]
        for resnet, blocks, down in self.down_blocks:
            x = _run_blocks(blocks, resnet(x, masks[-1], t_emb))
            skips.append(x)
            x = down(x * masks[-1])
            masks.append(masks[-1][:, :, ::2])
        masks.pop()
        for resnet, blocks in self.mid_blocks:
            x = _run_blocks(blocks, resnet(x, masks[-1], t_emb))
        for resnet, blocks, up in self.up_blocks:
            m, skip = masks.pop(), skips.pop()
            x = torch.cat([x[:, :, :skip.shape[-1]], skip], dim=1)
            x = _run_blocks(blocks, resnet(x, m, t_emb))
            x = up(x * m)
        x = self.final_block(x, m)
        return self.final_proj(x * m) * mask
