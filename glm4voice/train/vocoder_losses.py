"""Losses for training the HiFT vocoder: multi-resolution STFT, mel L1 and a small GAN.

Why these: the official release ships no vocoder training code (SPEC §5). HiFi-GAN-family vocoders
(HiFT included) are trained with a mel L1 reconstruction loss plus adversarial and feature-matching
losses from multi-period / multi-scale discriminators. Reconstruction alone gives intelligible but
buzzy/phasey speech; the multi-resolution STFT loss (Parallel WaveGAN) is a cheap, stable middle
ground that converges fast on CPU, so training starts with STFT + mel losses and the discriminators
are switched on after a warm-up (``adv_start_step`` in the trainer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (n_fft, hop, win) triples of the multi-resolution STFT loss (Parallel WaveGAN defaults, at 22.05 kHz).
STFT_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))


def _magnitude(x: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    window = torch.hann_window(win, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, n_fft, hop, win, window, return_complex=True)
    return spec.abs().clamp_min(1e-7)


def stft_loss(pred: torch.Tensor, target: torch.Tensor, resolutions=STFT_RESOLUTIONS) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1, averaged over resolutions. pred/target: (B, n)."""
    total = pred.new_zeros(())
    for n_fft, hop, win in resolutions:
        p, t = _magnitude(pred, n_fft, hop, win), _magnitude(target, n_fft, hop, win)
        sc = torch.linalg.norm(t - p, dim=(-2, -1)) / torch.linalg.norm(t, dim=(-2, -1)).clamp_min(1e-7)
        total = total + sc.mean() + F.l1_loss(p.log(), t.log())
    return total / len(resolutions)


def _conv_stack(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Leaky-ReLU conv stack then the 1-channel output conv: (flattened logits, every layer's features)."""
    feats = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        feats.append(x)
    x = post(x)
    feats.append(x)
    return x.flatten(1), feats


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN period discriminator: reshape (B, n) to (B, 1, n/p, p) and run 2-D convs along time."""

    def __init__(self, period: int, channels: int = 32):
        super().__init__()
        self.period = period
        chans = [1, channels, channels * 2, channels * 4, channels * 4]
        self.convs = nn.ModuleList(
            nn.utils.parametrizations.weight_norm(nn.Conv2d(a, b, (5, 1), (3 if i < 3 else 1, 1), (2, 0)))
            for i, (a, b) in enumerate(zip(chans[:-1], chans[1:], strict=True)))
        self.post = nn.utils.parametrizations.weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, (1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, n = x.shape
        if n % self.period:
            x = F.pad(x, (0, self.period - n % self.period), mode="reflect")
        x = x.view(b, 1, -1, self.period)
        return _conv_stack(self.convs, self.post, x)


class ScaleDiscriminator(nn.Module):
    """MelGAN scale discriminator on the raw waveform (optionally average-pooled)."""

    def __init__(self, pool: int, channels: int = 32):
        super().__init__()
        self.pool = pool
        c = channels
        layers = [(1, c, 15, 1, 1), (c, c * 2, 41, 4, 4), (c * 2, c * 4, 41, 4, 16), (c * 4, c * 4, 5, 1, 1)]
        self.convs = nn.ModuleList(
            nn.utils.parametrizations.weight_norm(nn.Conv1d(a, b, k, s, padding=k // 2, groups=g))
            for a, b, k, s, g in layers)
        self.post = nn.utils.parametrizations.weight_norm(nn.Conv1d(c * 4, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = x.unsqueeze(1)
        if self.pool > 1:
            x = F.avg_pool1d(x, self.pool * 2, self.pool, padding=self.pool)
        return _conv_stack(self.convs, self.post, x)


class Discriminators(nn.Module):
    """Multi-period (2, 3, 5, 7, 11) + multi-scale (1, 2) discriminators."""

    def __init__(self, periods=(2, 3, 5, 7, 11), scales=(1, 2), channels: int = 32):
        super().__init__()
        self.discs = nn.ModuleList([PeriodDiscriminator(p, channels) for p in periods]
                                   + [ScaleDiscriminator(s, channels) for s in scales])

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        return [d(x) for d in self.discs]


def discriminator_loss(real_out, fake_out) -> torch.Tensor:
    """Least-squares GAN loss for the discriminators (fake_out computed on detached audio)."""
    loss = 0.0
    for (r, _), (f, _) in zip(real_out, fake_out, strict=True):
        loss = loss + ((1 - r) ** 2).mean() + (f**2).mean()
    return loss


def generator_adversarial_loss(real_out, fake_out) -> tuple[torch.Tensor, torch.Tensor]:
    """(least-squares adversarial loss, feature-matching L1) for the generator."""
    adv, fm = 0.0, 0.0
    for (_, rf), (f, ff) in zip(real_out, fake_out, strict=True):
        adv = adv + ((1 - f) ** 2).mean()
        for a, b in zip(rf, ff, strict=True):
            fm = fm + F.l1_loss(b, a.detach())
    return adv, fm
