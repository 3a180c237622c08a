"""Voice activity and end-of-turn detection with silero-vad, as a streaming component with explicit state.

The silero-vad package (MIT) ships its 16 kHz model as TorchScript, ONNX and safetensors. We run the safetensors
weights in a small plain-PyTorch module so that the recurrent state is an explicit object owned by each stream
(the TorchScript model keeps it inside the module, which forbids sharing one model between sessions), and we
never load TorchScript at run time. Given the TorchScript model's weights, this module reproduces its
probabilities exactly; the bundled safetensors weights are another release of the same network whose
speech/non-speech decisions agree with the TorchScript model's on about 98% of windows (tests/test_pipeline_vad.py).

The network (silero-vad v5, 16 kHz): every 512-sample window (32 ms) is prefixed with the last 64 samples of
the previous one, reflect-padded by 64 on the right, turned into a 129-bin magnitude spectrum by a fixed STFT
convolution (n_fft 256, hop 128), then four 1-D convolutions, one LSTM cell (128) carried across windows, and a
1x1 convolution with a sigmoid: the probability that the window holds speech.

``TurnDetector`` turns the probabilities into turn events with hysteresis (speech starts at ``threshold``,
counts as silence below ``threshold - 0.15`` as silero's own VADIterator does) and reports the end of the
user's turn after ``silence_ms`` of silence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glm4voice.constants import TOKENIZER_SAMPLE_RATE
from glm4voice.errors import AudioError, CheckpointError

VAD_SAMPLE_RATE = 16_000  # Hz; silero-vad's 16 kHz model
VAD_WINDOW = 512  # samples per probability (32 ms)
VAD_CONTEXT = 64  # samples of the previous window prefixed to each window
VAD_N_FFT = 256
VAD_HOP = 128
VAD_HIDDEN = 128
HYSTERESIS = 0.15  # silence is prob < threshold - 0.15 (silero-vad VADIterator)
WEIGHTS_NAME = "silero_vad_16k.safetensors"


def silero_weights_path() -> Path:
    """The 16 kHz safetensors file bundled in the silero-vad package (no download)."""
    try:
        from importlib import resources

        import silero_vad.data
    except ImportError as e:
        raise CheckpointError("end-of-turn detection needs silero-vad: pip install 'silero-vad>=5' "
                              "(install torch first so that pip keeps it)") from e
    path = Path(str(resources.files(silero_vad.data).joinpath(WEIGHTS_NAME)))
    if not path.is_file():
        raise CheckpointError(f"silero-vad is installed but lacks {WEIGHTS_NAME}; install silero-vad>=5")
    return path


@dataclass
class VadState:
    """Recurrent state of one audio stream: LSTM (h, c) (B, 128) each, the 64-sample context (B, 64), and the
    samples that do not yet fill a window."""

    h: Tensor
    c: Tensor
    context: Tensor
    pending: Tensor  # (B, n < 512)


class SileroVAD(nn.Module):
    """Speech probability per 32 ms window of 16 kHz audio."""

    def __init__(self):
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 2 * (VAD_N_FFT // 2 + 1), VAD_N_FFT, stride=VAD_HOP, bias=False)
        self.conv1 = nn.Conv1d(VAD_N_FFT // 2 + 1, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, VAD_HIDDEN, 3, padding=1)
        self.lstm_cell = nn.LSTMCell(VAD_HIDDEN, VAD_HIDDEN)
        self.final_conv = nn.Conv1d(VAD_HIDDEN, 1, 1)

    @classmethod
    def from_package(cls, device: torch.device | str = "cpu") -> SileroVAD:
        from safetensors.torch import load_file

        model = cls()
        model.load_state_dict(load_file(str(silero_weights_path())), strict=True)
        return model.to(device).eval().requires_grad_(False)

    def init_state(self, batch: int = 1) -> VadState:
        dev = self.final_conv.weight.device
        zeros = torch.zeros(batch, VAD_HIDDEN, device=dev)
        return VadState(zeros, zeros.clone(), torch.zeros(batch, VAD_CONTEXT, device=dev),
                        torch.zeros(batch, 0, device=dev))

    @torch.inference_mode()
    def window(self, x: Tensor, state: VadState) -> Tensor:
        """One 512-sample window per row, x (B, 512) -> probability (B,); updates ``state`` in place."""
        x = torch.cat([state.context, x], dim=1)
        state.context = x[:, -VAD_CONTEXT:]
        spec = self.stft_conv(F.pad(x, (0, VAD_CONTEXT), mode="reflect").unsqueeze(1))
        half = VAD_N_FFT // 2 + 1
        y = torch.sqrt(spec[:, :half] ** 2 + spec[:, half:] ** 2)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            y = F.relu(conv(y))
        state.h, state.c = self.lstm_cell(y.squeeze(-1), (state.h, state.c))
        return torch.sigmoid(self.final_conv(F.relu(state.h).unsqueeze(-1))).mean(dim=(1, 2))

    def step(self, pcm: Tensor, state: VadState) -> tuple[Tensor, VadState]:
        """Feed 16 kHz samples (B, n) of any length; returns the probabilities (B, windows completed) and state."""
        x = torch.cat([state.pending, pcm.to(state.pending)], dim=1)
        n = x.shape[1] // VAD_WINDOW
        probs = [self.window(x[:, i * VAD_WINDOW:(i + 1) * VAD_WINDOW], state) for i in range(n)]
        state.pending = x[:, n * VAD_WINDOW:]
        return (torch.stack(probs, dim=1) if probs else x.new_zeros(x.shape[0], 0)), state


@dataclass(frozen=True)
class TurnSettings:
    """End-of-turn policy. ``silence_ms``: silence after speech that ends the user's turn."""

    silence_ms: float = 700.0
    threshold: float = 0.5
    min_speech_ms: float = 200.0  # shorter bursts (clicks, coughs) do not start a turn
    preroll_ms: float = 300.0  # audio kept from before the detected start (the onset of the first word)

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"VAD threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 < self.silence_ms <= 10_000:
            raise ValueError(f"end-of-turn silence must be in (0, 10000] ms, got {self.silence_ms}")
        if self.min_speech_ms < 0 or self.preroll_ms < 0:
            raise ValueError("min_speech_ms and preroll_ms must be >= 0")


@dataclass(frozen=True)
class SpeechStart:
    """The user started speaking; ``seconds`` since the stream began (start of the window)."""

    seconds: float


@dataclass(frozen=True)
class SpeechEnd:
    """The user's turn ended: ``seconds`` at the last speech window's end, detected ``silence_ms`` later."""

    seconds: float


@dataclass
class TurnState:
    vad: VadState
    windows: int = 0  # windows seen
    in_speech: bool = False  # a confirmed turn is running
    candidate: int = -1  # first window of an unconfirmed speech burst, -1 if none
    speech_run: int = 0  # consecutive speech windows of the candidate burst
    silence_run: int = 0  # consecutive silence windows inside a turn
    last_speech: int = -1
    probs: list[float] = field(default_factory=list)  # kept only when tracing


class TurnDetector:
    """Speech start / end-of-turn events from a stream of 16 kHz audio (one ``TurnState`` per stream)."""

    def __init__(self, vad: SileroVAD, settings: TurnSettings | None = None):
        self.vad = vad
        self.settings = settings or TurnSettings()
        ms_per_window = 1000 * VAD_WINDOW / VAD_SAMPLE_RATE
        self.min_speech = max(1, round(self.settings.min_speech_ms / ms_per_window))
        self.min_silence = max(1, round(self.settings.silence_ms / ms_per_window))

    def init_state(self) -> TurnState:
        return TurnState(self.vad.init_state(1))

    def step(self, pcm, state: TurnState) -> tuple[list[SpeechStart | SpeechEnd], TurnState]:
        """Feed 16 kHz mono float samples (n,); returns the events they complete."""
        x = _mono_16k(pcm)
        probs, state.vad = self.vad.step(x[None], state.vad)
        events: list[SpeechStart | SpeechEnd] = []
        s = self.settings
        for p in probs[0].tolist():
            i = state.windows
            state.windows += 1
            speech, silence = p >= s.threshold, p < s.threshold - HYSTERESIS
            if not state.in_speech:
                if speech:
                    state.candidate = i if state.candidate < 0 else state.candidate
                    state.speech_run += 1
                    if state.speech_run >= self.min_speech:
                        state.in_speech, state.silence_run, state.last_speech = True, 0, i
                        events.append(SpeechStart(state.candidate * VAD_WINDOW / VAD_SAMPLE_RATE))
                elif silence:
                    state.candidate, state.speech_run = -1, 0
                continue
            if speech:
                state.silence_run, state.last_speech = 0, i
            elif silence:
                state.silence_run += 1
                if state.silence_run >= self.min_silence:
                    state.in_speech, state.candidate, state.speech_run = False, -1, 0
                    events.append(SpeechEnd((state.last_speech + 1) * VAD_WINDOW / VAD_SAMPLE_RATE))
        return events, state


def _mono_16k(pcm) -> Tensor:
    x = pcm if isinstance(pcm, Tensor) else torch.as_tensor(np.asarray(pcm))
    if x.dim() != 1 or not x.is_floating_point():
        raise AudioError(f"VAD input must be float mono samples of shape (n,), got {x.dtype} {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise AudioError("VAD input holds NaN/Inf samples")
    return x.float()


assert VAD_SAMPLE_RATE == TOKENIZER_SAMPLE_RATE  # the mic stream feeds both the VAD and the speech tokenizer
