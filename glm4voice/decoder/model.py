"""``SpeechDecoder``: 12.5 Hz speech codes -> 22.05 kHz waveform (flow matching + HiFT), offline.

Randomness: the official code calls ``torch.manual_seed(42)`` on every ``token2wav`` call and draws, from the
global generator, the flow noise (1, 80, F), the HiFT phases (1, 9, 1), the sine noise (1, 9, 256·T) and an
unused (1, 256·T, 1) (SPEC §4.4). We draw the same numbers in the same order from a local CPU
``torch.Generator`` seeded 42 per call: no process-wide side effect, and the same values on any device. The
unused last draw is skipped: nothing is drawn after it before the next reseed, so it changes no output.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from glm4voice.constants import FLOW_SEED
from glm4voice.decoder.config import DecoderConfig
from glm4voice.decoder.flow import Flow, feat_len
from glm4voice.decoder.hift import HiFT
from glm4voice.errors import TokenError


def new_generator(seed: int = FLOW_SEED) -> torch.Generator:
    """A fresh CPU generator in the state ``torch.manual_seed(seed)`` leaves the global one."""
    return torch.Generator(device="cpu").manual_seed(seed)


@dataclass
class Token2WavOut:
    """One official ``token2wav``-style call: new mel (1, 80, F_new), speech (1, n), source (1, 1, n)."""

    mel: torch.Tensor
    speech: torch.Tensor
    source: torch.Tensor


class SpeechDecoder(nn.Module):
    """Flow + HiFT. ``decode(codes)`` gives float32 PCM at ``sample_rate`` Hz, shape (n,)."""

    def __init__(self, cfg: DecoderConfig, flow: Flow, hift: HiFT, *, cfg_batched: bool = True):
        super().__init__()
        self.cfg, self.flow, self.hift = cfg, flow, hift
        self.cfg_batched = cfg_batched  # one batch of 2 for the CFG passes (False: sequential, as official)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike | None = None, *, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> SpeechDecoder:
        """Load a decoder folder (config.yaml + flow/hift .pt or .safetensors), ``"official"`` or a hub id."""
        from glm4voice import checkpoints
        from glm4voice.decoder.load import load_modules
        cfg, flow, hift = load_modules(checkpoints.resolve(path_or_id, "decoder"), device=device, dtype=dtype)
        return cls(cfg, flow, hift)

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def device(self) -> torch.device:
        return self.flow.input_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.flow.input_embedding.weight.dtype

    def samples_per_frame(self) -> int:
        return self.cfg.hift.upsample_factor

    def frames(self, n_tokens: int) -> int:
        """Mel frames the flow produces for ``n_tokens`` tokens (official float32 formula)."""
        return feat_len(n_tokens, self.cfg.flow.input_frame_rate)

    # --- input checking ------------------------------------------------------------------------------------
    def codes_tensor(self, codes: Sequence[int] | torch.Tensor, *, allow_empty: bool = False) -> torch.Tensor:
        """Validate speech codes and return them as (1, N) int64 on the model's device."""
        t = codes if isinstance(codes, torch.Tensor) else torch.as_tensor(list(codes), dtype=torch.long)
        if t.dim() == 2 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 1:
            raise TokenError(f"speech codes must be a 1-D sequence (or shape (1, N)), got shape {tuple(t.shape)}")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TokenError(f"speech codes must be integers, got dtype {t.dtype}")
        if t.numel() == 0 and not allow_empty:
            raise TokenError("empty list of speech codes: nothing to synthesise")
        vocab = self.cfg.flow.vocab_size
        bad = ((t < 0) | (t >= vocab)).nonzero().flatten()
        if bad.numel():
            i = int(bad[0])
            raise TokenError(f"speech code {int(t[i])} at position {i} is outside the codebook [0, {vocab}) "
                             f"({bad.numel()} invalid code(s))")
        return t.to(device=self.device, dtype=torch.long).unsqueeze(0)

    # --- building blocks -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def flow_mel(self, tokens: torch.Tensor, prompt_mel: torch.Tensor | None, generator: torch.Generator,
                 frames: int | None = None, trace: dict | None = None) -> torch.Tensor:
        """New-frame mel (1, 80, F − F_p) for ``tokens`` (1, T) = prompt tokens + new tokens.

        ``frames`` overrides the total frame count F (default: the official feat_len(T)).
        """
        return self.flow_mel_batch(tokens, prompt_mel, [generator], frames, trace)

    @torch.inference_mode()
    def flow_mel_batch(self, tokens: torch.Tensor, prompt_mel: torch.Tensor | None,
                       generators: list[torch.Generator], frames: int | None = None,
                       trace: dict | None = None) -> torch.Tensor:
        """Several same-shaped requests as one batch: tokens (B, T), prompt_mel (B, 80, F_p) or None, one
        generator per row (each draws its own noise, so a row's result does not depend on its batch-mates)."""
        f = self.frames(tokens.shape[1]) if frames is None else frames
        b, c = tokens.shape[0], self.cfg.flow.output_size
        if prompt_mel is None:
            prompt_mel = torch.zeros(b, c, 0, device=self.device, dtype=self.dtype)
        z = torch.cat([torch.randn(1, c, f, generator=g) for g in generators]).to(self.device, self.dtype)
        if trace is not None:
            trace["z"] = z
        spks = self.flow.speaker(None, b)
        return self.flow(tokens, prompt_mel.to(self.dtype), z, spks, cfg_batched=self.cfg_batched, trace=trace)

    @torch.inference_mode()
    def vocode(self, mel: torch.Tensor, generator: torch.Generator, cache_source: torch.Tensor | None = None,
               phase0: torch.Tensor | None = None, trace: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (1, 80, T) -> (speech (1, 256·T), source (1, 1, 256·T)); random draws continue ``generator``."""
        rnd = self.hift.draw_noise(mel.shape[-1], generator, batch=mel.shape[0])
        if trace is not None:
            trace.update(phase=rnd.phase, sine_noise=rnd.noise)
        return self.hift(mel, rnd, cache_source, phase0, trace=trace)

    def token2wav(self, tokens: torch.Tensor, prompt_tokens: torch.Tensor | None = None,
                  prompt_mel: torch.Tensor | None = None, trace: dict | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Official one-shot call (finalize, no cache): returns (new mel (1, 80, F_new), speech (1, 256·F_new))."""
        gen = new_generator()
        if prompt_tokens is not None and prompt_tokens.shape[1]:
            tokens = torch.cat([prompt_tokens, tokens], dim=1)
        mel = self.flow_mel(tokens, prompt_mel, gen, trace=trace)
        speech, _ = self.vocode(mel, gen, trace=trace)
        return mel, speech

    # --- public API ------------------------------------------------------------------------------------------
    def decode(self, codes: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Offline synthesis: codes (N,) -> float32 PCM (256·feat_len(N),) at 22,050 Hz."""
        _, speech = self.token2wav(self.codes_tensor(codes))
        return speech[0].float()
