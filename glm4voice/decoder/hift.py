"""HiFT vocoder: 80-bin mel (22.05 kHz, hop 256) -> waveform (SPEC §3.5).

F0 predictor -> harmonic-plus-noise (NSF) source -> STFT of the source injected into a HiFi-GAN style
upsampler (Snake residual blocks) -> magnitude/phase head -> inverse STFT. Weight-normed convolutions of the
official checkpoint are folded into plain weights at load time (``load.py``), so they are plain convs here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glm4voice.decoder.config import HiftConfig


class Snake(nn.Module):
    """x + sin²(αx)/(α + 1e-9), α per channel in linear scale."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha.unsqueeze(0).unsqueeze(-1)
        return x + (1.0 / (a + 1e-9)) * torch.pow(torch.sin(x * a), 2)


class ResBlock(nn.Module):
    """For each dilation d: x += conv2(snake(conv1_d(snake(x))))."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=(kernel * d - d) // 2) for d in dilations)
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.activations1, self.activations2, strict=True):
            x = c2(a2(c1(a1(x)))) + x
        return x


class F0Predictor(nn.Module):
    """5 × (Conv1d k3 -> ELU), Linear -> |·|: f0 in Hz per mel frame."""

    def __init__(self, in_channels: int, cond: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [nn.Conv1d(in_channels if i == 0 else cond, cond, 3, padding=1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, 80, T) -> f0 (B, T)."""
        return torch.abs(self.classifier(self.condnet(mel).transpose(1, 2)).squeeze(-1))


class SourceNSF(nn.Module):
    """Merges the 9 harmonic sines (+ noise) into one source: tanh(Linear(9 -> 1))."""

    def __init__(self, harmonics: int):
        super().__init__()
        self.l_linear = nn.Linear(harmonics + 1, 1)


@dataclass
class SourceNoise:
    """Random inputs of one vocoder call: initial phases (B, H+1, 1) and sine noise (B, H+1, L)."""

    phase: torch.Tensor
    noise: torch.Tensor


class HiFT(nn.Module):
    def __init__(self, cfg: HiftConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.base_channels
        self.f0_predictor = F0Predictor(cfg.in_channels, cfg.f0_cond_channels)
        self.m_source = SourceNSF(cfg.nb_harmonics)
        self.conv_pre = nn.Conv1d(cfg.in_channels, c, 7, padding=3)
        self.ups, self.source_downs, self.source_resblocks = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        bins = cfg.n_fft + 2  # [real, imag] of n_fft/2 + 1 bins
        # source_downs strides: the source STFT (hop 4) is brought to each upsampling stage's rate
        rates = list(cfg.upsample_rates)
        for i, (u, k) in enumerate(zip(rates, cfg.upsample_kernel_sizes, strict=True)):
            c_out = c // 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose1d(c // 2**i, c_out, k, u, padding=(k - u) // 2))
            stride = math.prod(rates[i + 1:])
            if i + 1 < len(rates):
                self.source_downs.append(nn.Conv1d(bins, c_out, stride * 2, stride, padding=stride // 2))
            else:
                self.source_downs.append(nn.Conv1d(bins, c_out, 1))
            self.source_resblocks.append(ResBlock(c_out, cfg.source_resblock_kernel_sizes[i],
                                                  cfg.source_resblock_dilation_sizes[i]))
        self.resblocks = nn.ModuleList()
        for i in range(len(rates)):
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True):
                self.resblocks.append(ResBlock(c // 2 ** (i + 1), k, d))
        self.conv_post = nn.Conv1d(c // 2 ** len(rates), bins, 7, padding=3)

    def window(self, like: torch.Tensor) -> torch.Tensor:
        # periodic Hann as scipy get_window('hann', n, fftbins=True): float64, then cast (exact float32 values)
        return torch.hann_window(self.cfg.n_fft, periodic=True, dtype=torch.float64, device=like.device).to(like.dtype)

    # --- source -------------------------------------------------------------------------------------------
    def draw_noise(self, frames: int, generator: torch.Generator, batch: int = 1) -> SourceNoise:
        """Draw the phases then the sine noise from ``generator`` (CPU), in the official order (SPEC §4.4)."""
        h = self.cfg.nb_harmonics + 1
        low, high = torch.tensor(-math.pi), torch.tensor(math.pi)  # torch.distributions.Uniform(-pi, pi)
        phase = low + torch.rand(batch, h, 1, generator=generator) * (high - low)
        noise = torch.randn(batch, h, frames * self.cfg.upsample_factor, generator=generator)
        return SourceNoise(phase, noise)

    def source(self, f0: torch.Tensor, rnd: SourceNoise, phase0: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """f0 (B, T) -> (source (B, 1, 256·T), end phase (B, H+1) in cycles).

        ``phase0`` (B, H+1), in cycles, continues the harmonics of a previous call (low-latency streaming);
        None starts at 0 as the official code does (plus the random initial phase, harmonic 0 excluded).
        """
        cfg = self.cfg
        f0 = f0.unsqueeze(1).repeat_interleave(cfg.upsample_factor, dim=2)  # nearest upsampling, (B, 1, L)
        harmonics = torch.cat([f0 * (i + 1) / cfg.sampling_rate for i in range(cfg.nb_harmonics + 1)], dim=1)
        cycles = torch.cumsum(harmonics, dim=-1)
        if phase0 is not None:
            cycles = cycles + phase0.unsqueeze(-1)
        end_phase = cycles[:, :, -1] % 1
        theta = 2 * math.pi * (cycles % 1)
        phase = rnd.phase.to(f0.device, f0.dtype).clone()
        phase[:, 0, :] = 0
        sine = cfg.nsf_alpha * torch.sin(theta + phase)
        uv = (f0 > cfg.nsf_voiced_threshold).to(f0.dtype)
        noise_amp = uv * cfg.nsf_sigma + (1 - uv) * cfg.nsf_alpha / 3
        sines = sine * uv + noise_amp * rnd.noise.to(f0.device, f0.dtype)
        s = torch.tanh(self.m_source.l_linear(sines.transpose(1, 2))).transpose(1, 2)
        return s, end_phase

    # --- filter ---------------------------------------------------------------------------------------------
    def decode(self, mel: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """mel (B, 80, T), source (B, 1, 256·T) -> speech (B, 256·T) clamped to ±audio_limit."""
        cfg = self.cfg
        window = self.window(s)
        spec = torch.view_as_real(torch.stft(s.squeeze(1), cfg.n_fft, cfg.hop_len, cfg.n_fft, window=window,
                                             return_complex=True))
        s_stft = torch.cat([spec[..., 0], spec[..., 1]], dim=1)
        x = self.conv_pre(mel)
        n_k = len(cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            xs = self.resblocks[i * n_k](x)
            for j in range(1, n_k):
                xs = xs + self.resblocks[i * n_k + j](x)
            x = xs / n_k
        x = self.conv_post(F.leaky_relu(x))  # default slope 0.01 here, as in the official code
        bins = cfg.n_fft // 2 + 1
        magnitude = torch.clip(torch.exp(x[:, :bins]), max=1e2)
        phase = torch.sin(x[:, bins:])
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        wav = torch.istft(spec, cfg.n_fft, cfg.hop_len, cfg.n_fft, window=window)
        return torch.clamp(wav, -cfg.audio_limit, cfg.audio_limit)

    def forward(self, mel: torch.Tensor, rnd: SourceNoise, cache_source: torch.Tensor | None = None,
                phase0: torch.Tensor | None = None, trace: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, 80, T) -> (speech (B, 256·T), source (B, 1, 256·T)).

        ``cache_source`` (B, 1, n) overwrites the first n source samples (the official streaming cache).
        """
        f0 = self.f0_predictor(mel)
        s, end_phase = self.source(f0, rnd, phase0)
        if trace is not None:
            trace.update(f0=f0, source=s.clone(), end_phase=end_phase)
        if cache_source is not None and cache_source.shape[-1]:
            s[:, :, : cache_source.shape[-1]] = cache_source
        return self.decode(mel, s), s
