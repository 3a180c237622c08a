"""Flow model: speech tokens -> 80-bin mel by conditional flow matching (SPEC §3.2-3.3).

token embedding -> block-causal rel-pos conformer (blocks of 10 tokens) -> Linear to 80 -> length regulator to
mel frames (22050 / 256 per second) -> Euler solve of the CFM ODE on a cosine time grid with classifier-free
guidance, conditioned on the speaker vector and a prompt mel. Module names follow the official ``flow.pt`` keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from glm4voice.constants import DECODER_HOP, DECODER_SAMPLE_RATE
from glm4voice.decoder.config import EncoderConfig, FlowConfig
from glm4voice.decoder.estimator import Estimator


def feat_len(n_tokens: int, frame_rate: float = 12.5) -> int:
    """Mel frames for ``n_tokens`` tokens, computed as the official code does: int32 -> float32 -> truncate.

    For n <= 2000 this is floor(n * 441 / 64): 10 -> 68, 25 -> 172, 37 -> 254.
    """
    t = torch.tensor(n_tokens, dtype=torch.int32)
    return int((t / frame_rate * DECODER_SAMPLE_RATE / DECODER_HOP).int())


# --- encoder -----------------------------------------------------------------------------------------------
def rel_pos_table(max_len: int, d: int) -> torch.Tensor:
    """ESPnet relative positional table (1, 2·max_len−1, d): rows are distances +(max_len−1) … −(max_len−1)."""
    pos = torch.arange(0, max_len, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * -(math.log(10000.0) / d))
    pe_pos, pe_neg = torch.zeros(max_len, d), torch.zeros(max_len, d)
    pe_pos[:, 0::2], pe_pos[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    pe_neg[:, 0::2], pe_neg[:, 1::2] = torch.sin(-1 * pos * div), torch.cos(-1 * pos * div)
    return torch.cat([torch.flip(pe_pos, [0]), pe_neg[1:]], dim=0).unsqueeze(0)


def block_causal_mask(t: int, block: int, device: torch.device) -> torch.Tensor:
    """(t, t) bool: query i may attend key j if j <= i or both lie in the same block of ``block`` tokens."""
    i = torch.arange(t, device=device)
    return (i[None, :] <= i[:, None]) | (i[None, :] // block == i[:, None] // block)


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """Transformer-XL shift: (B, H, T, 2T−1) scores over distances -> (B, H, T, T) with score[i, j] at i − j."""
    b, h, t, n = x.shape
    x = torch.cat([x.new_zeros(b, h, t, 1), x], dim=-1).view(b, h, n + 1, t)
    return x[:, :, 1:].reshape(b, h, t, n)[:, :, :, : n // 2 + 1]


class RelPosAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.h, self.d_k = heads, d // heads
        self.linear_q, self.linear_k, self.linear_v, self.linear_out = (nn.Linear(d, d) for _ in range(4))
        self.linear_pos = nn.Linear(d, d, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(heads, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)  # as ESPnet / WeNet (the official weights overwrite it)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, d); pos_emb (1, 2T−1, d); mask (T, T) bool (True = attend)."""
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(pos_emb.shape[0], -1, self.h, self.d_k).transpose(1, 2)
        ac = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        bd = rel_shift(torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1)))
        scores = (ac + bd) / math.sqrt(self.d_k)
        blocked = ~mask
        attn = torch.softmax(scores.masked_fill(blocked, -float("inf")), dim=-1).masked_fill(blocked, 0.0)
        return self.linear_out(torch.matmul(attn, v).transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    """Pre-norm: x += MHA(LN(x)); x += FFN(LN(x)). No conv module, no macaron, no final norm."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        d = cfg.output_size
        self.self_attn = RelPosAttention(d, cfg.attention_heads)
        self.feed_forward = FeedForward(d, cfg.linear_units)
        self.norm_ff, self.norm_mha = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), pos_emb, mask)
        return x + self.feed_forward(self.norm_ff(x))


class _Embed(nn.Module):
    """LinearNoSubsampling: Linear -> LayerNorm (-> Dropout), then x·√d (the rel-pos encoding's scale)."""

    def __init__(self, d_in: int, d: int):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(d_in, d), nn.LayerNorm(d, eps=1e-5))


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = _Embed(cfg.input_size, cfg.output_size)
        self.encoders = nn.ModuleList([ConformerLayer(cfg) for _ in range(cfg.num_blocks)])
        self.after_norm = nn.LayerNorm(cfg.output_size, eps=1e-5)
        self._pe: dict[tuple, torch.Tensor] = {}  # (device, dtype, max_len) -> table, built on first use

    def pos_emb(self, t: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        # The official table is built once for max_len = 5000; rows do not depend on max_len, but building it
        # at the same size keeps the same sin/cos kernels (vectorised vs tail) and thus bit-identical values.
        max_len = max(self.cfg.max_len, t)
        key = (device, dtype, max_len)
        if key not in self._pe:
            self._pe = {key: rel_pos_table(max_len, self.cfg.output_size).to(device, dtype)}
        return self._pe[key][:, max_len - t: max_len + t - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, input_size) -> (B, T, output_size)."""
        t = x.shape[1]
        x = self.embed.out(x) * math.sqrt(self.cfg.output_size)
        pos = self.pos_emb(t, x.device, x.dtype)
        mask = block_causal_mask(t, self.cfg.block_size, x.device)
        for layer in self.encoders:
            x = layer(x, pos, mask)
        return self.after_norm(x)


# --- length regulator --------------------------------------------------------------------------------------
class LengthRegulator(nn.Module):
    """Nearest interpolation to F frames, then stages of Conv1d(k3) -> GroupNorm(1) -> Mish, then Conv1d(k1)."""

    def __init__(self, channels: int, stages: int):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(stages):
            layers += [nn.Conv1d(channels, channels, 3, padding=1), nn.GroupNorm(1, channels), nn.Mish()]
        layers.append(nn.Conv1d(channels, channels, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor, frames: int) -> torch.Tensor:
        """h (B, T, C) -> mu (B, C, frames)."""
        return self.model(F.interpolate(h.transpose(1, 2).contiguous(), size=frames, mode="nearest"))


# --- flow ------------------------------------------------------------------------------------------------
class _CFM(nn.Module):
    """Holds the estimator under the official name ``decoder.estimator``."""

    def __init__(self, estimator: Estimator):
        super().__init__()
        self.estimator = estimator


def cosine_time_grid(n_steps: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """t_k = 1 − cos(π/2 · k/n), k = 0..n (float32: 0, 0.012312, 0.048943, …, 1)."""
    t = torch.linspace(0, 1, n_steps + 1, device=device, dtype=dtype)
    return 1 - torch.cos(t * 0.5 * torch.pi)


class Flow(nn.Module):
    """MaskedDiffWithXvec at inference."""

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.input_size)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.output_size)
        self.encoder = Encoder(cfg.encoder)
        self.encoder_proj = nn.Linear(cfg.encoder.output_size, cfg.output_size)
        self.length_regulator = LengthRegulator(cfg.regulator_channels, cfg.regulator_stages)
        self.decoder = _CFM(Estimator(cfg.estimator))

    def speaker(self, embedding: torch.Tensor | None, batch: int = 1) -> torch.Tensor:
        """(B, 192) speaker embedding (zeros by default, as in the demo) -> spks (B, 80) = affine(normalize(e))."""
        w = self.spk_embed_affine_layer.weight
        if embedding is None:
            embedding = torch.zeros(batch, self.cfg.spk_embed_dim, device=w.device, dtype=w.dtype)
        return self.spk_embed_affine_layer(F.normalize(embedding, dim=1))

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) int64 -> h (B, T, 80) (encoder + projection)."""
        return self.encoder_proj(self.encoder(self.input_embedding(tokens)))

    def solve(self, z: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor,
              cfg_batched: bool = True) -> torch.Tensor:
        """Euler integration of dx/dt = v(x, t) with CFG; z, mu, cond (B, 80, F); spks (B, 80) -> x (B, 80, F).

        ``cfg_batched`` runs the conditional and unconditional passes as one batch of 2B (same result up to
        float rounding); False runs them sequentially as the official code does.
        """
        est, rate, b = self.decoder.estimator, self.cfg.cfm.inference_cfg_rate, z.shape[0]
        if self.cfg.cfm.temperature != 1.0:  # the official inference draws randn * temperature, with temperature 1
            z = z * self.cfg.cfm.temperature
        mask = torch.ones_like(z[:, :1])
        t_span = cosine_time_grid(self.cfg.cfm.n_timesteps, z.device, z.dtype)
        if cfg_batched:
            mask2, mu2 = torch.cat([mask, mask]), torch.cat([mu, torch.zeros_like(mu)])
            spks2, cond2 = torch.cat([spks, torch.zeros_like(spks)]), torch.cat([cond, torch.zeros_like(cond)])
        x, t, dt = z, t_span[0], t_span[1] - t_span[0]
        for step in range(1, len(t_span)):
            if cfg_batched:
                v, v_u = est(torch.cat([x, x]), mask2, mu2, t, spks2, cond2).split(b)
            else:
                v = est(x, mask, mu, t, spks, cond)
                v_u = est(x, mask, torch.zeros_like(mu), t, torch.zeros_like(spks), torch.zeros_like(cond))
            v = (1.0 + rate) * v - rate * v_u
            x = x + dt * v
            t = t + dt
            if step < len(t_span) - 1:
                dt = t_span[step + 1] - t
        return x

    def forward(self, tokens: torch.Tensor, prompt_feat: torch.Tensor, z: torch.Tensor, spks: torch.Tensor,
                cfg_batched: bool = True, trace: dict | None = None) -> torch.Tensor:
        """Mel for all frames of ``tokens`` (prompt tokens first).

        tokens (B, T); prompt_feat (B, 80, F_p); z (B, 80, F) the initial noise, whose length F sets the number
        of frames; spks (B, 80). Returns the mel after the prompt: (B, 80, F − F_p).
        """
        frames, f_p = z.shape[-1], prompt_feat.shape[-1]
        enc = self.encoder(self.input_embedding(tokens))
        h = self.encoder_proj(enc)
        mu = self.length_regulator(h, frames)
        cond = torch.zeros_like(mu)
        cond[:, :, :f_p] = prompt_feat
        if trace is not None:
            trace.update(encoder_out=enc, encoder_proj=h, mu=mu)
        return self.solve(z, mu, spks, cond, cfg_batched)[:, :, f_p:]
