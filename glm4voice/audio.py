"""Audio front end: load, resample, Whisper log-mel features (SPEC §1.4).

Everything here reproduces what the official tokenizer path computes (``speech_tokenizer/utils.py`` with
torchaudio 2.3 and the transformers 4.44.1 ``WhisperFeatureExtractor``), written in plain torch/numpy:

- ``load_audio``: decode with soundfile (libsndfile: wav/flac/ogg/mp3), float32 in [-1, 1] (int PCM / 2^(bits-1),
  as ``torchaudio.load``), resample the whole signal, keep channel 0 as the official code does (or ``"mix"``).
- ``resample``: the polyphase windowed-sinc resampler of ``torchaudio.transforms.Resample`` at its defaults.
- ``log_mel_whisper``: 128-bin Slaney mel of |STFT|^2, log10, per-example floor at max - 8, (x + 4) / 4.

Bad input raises ``AudioError`` with a message a user can act on (never a deep torch/libsndfile traceback).
"""

from __future__ import annotations

import io
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from glm4voice.constants import CHUNK_SAMPLES, MEL_BINS, MEL_HOP, MEL_N_FFT, TOKENIZER_SAMPLE_RATE
from glm4voice.errors import AudioError

MAX_AUDIO_SECONDS = 600.0  # default limit of load_audio: 10 min, far more than one conversational turn needs
MIN_SAMPLE_RATE = 1_000  # Hz; below this a "sample rate" is a mistake (e.g. kHz passed instead of Hz)
MAX_SAMPLE_RATE = 768_000  # Hz; the highest rate of common studio converters
MEL_FMAX = 8_000.0  # Hz, the Whisper filter bank's upper edge (= Nyquist at 16 kHz)
LOG_MEL_EPS = 1e-10  # clamp before log10 (padding frames sit at log10(1e-10) = -10)
LOG_MEL_DYNAMIC_RANGE = 8.0  # per-example floor: max - 8 (80 dB)
RESAMPLE_WIDTH = 6  # torchaudio Resample default lowpass_filter_width (zero crossings per side)
MP3_LENGTH_SLACK = 0.98  # fraction of the announced MP3 length that must decode
RESAMPLE_ROLLOFF = 0.99  # torchaudio Resample default rolloff (cut-off as a fraction of the lower Nyquist)

# Container signatures that libsndfile cannot read, to say "convert it" instead of "not audio".
_UNSUPPORTED_SIGNATURES = {b"ftyp": "MP4/M4A/AAC", b"\x1aE\xdf\xa3": "Matroska/WebM", b"#!AMR": "AMR"}


# --- loading ---------------------------------------------------------------------------------------------------
def load_audio(source, *, sample_rate: int = TOKENIZER_SAMPLE_RATE, channel: int | str = 0,
               source_rate: int | None = None, max_seconds: float | None = MAX_AUDIO_SECONDS) -> torch.Tensor:
    """Load ``source`` as float32 mono at ``sample_rate``; shape (n,).

    source: a path, encoded bytes (wav/flac/ogg/mp3), or an array/tensor of samples with ``source_rate=``
    (shape (n,) or channels-first (channels, n), like ``torchaudio.load``).
    channel: 0 (official: resample all channels, keep channel 0), another index, or ``"mix"`` (channel mean).
    max_seconds: refuse longer audio (``None``: no limit); checked from the header before decoding.
    """
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        if source_rate is not None:
            raise AudioError("source_rate= is only for arrays; encoded audio carries its own rate")
        wav, sr = _decode(source, max_seconds)
    else:
        if source_rate is None:
            raise AudioError("an array of samples needs its rate: load_audio(x, source_rate=...)")
        wav, sr = _as_channels_first(source), source_rate
    _check_rate(sr, "source")
    _check_rate(sample_rate, "target")
    if max_seconds is not None and wav.shape[-1] > max_seconds * sr:
        raise AudioError(f"audio is {wav.shape[-1] / sr:.1f} s long, over the {max_seconds:g} s limit; "
                         f"cut it into shorter pieces (or raise max_seconds / --max-seconds)")
    if wav.shape[-1] == 0:
        raise AudioError("audio has zero samples")
    _check_finite(wav, "audio samples")
    wav = _pick_channel(wav, channel)
    return resample(wav, int(sr), int(sample_rate)) if sr != sample_rate else wav


def _check_rate(sr, what: str) -> None:
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) and not (isinstance(sr, float) and
                                                                               sr.is_integer()):
        raise AudioError(f"{what} sample rate must be a whole number of Hz, got {sr!r}")
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise AudioError(f"{what} sample rate {sr} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz; "
                         f"is the rate given in Hz?")


def _pick_channel(wav: torch.Tensor, channel: int | str) -> torch.Tensor:
    if channel == "mix":
        return wav.mean(dim=0)
    if isinstance(channel, int) and not isinstance(channel, bool):
        if not -wav.shape[0] <= channel < wav.shape[0]:
            raise AudioError(f"channel {channel} requested but the audio has {wav.shape[0]} channel(s)")
        return wav[channel]
    raise AudioError(f"channel must be an index or 'mix', got {channel!r}")


def _as_channels_first(x) -> torch.Tensor:
    try:
        wav = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise AudioError(f"cannot read samples from a {type(x).__name__}: {e}") from e
    if not (wav.is_floating_point() or wav.dtype in (torch.int16, torch.int32)):
        raise AudioError(f"samples must be float or int16/int32 PCM, got {wav.dtype}")
    if wav.dtype == torch.int16:
        wav = wav.float() / 32768.0
    elif wav.dtype == torch.int32:
        wav = wav.double() / 2147483648.0
    wav = wav.float()
    if wav.dim() == 1:
        return wav[None]
    if wav.dim() != 2:
        raise AudioError(f"samples must have shape (n,) or (channels, n), got {tuple(wav.shape)}")
    if wav.shape[0] > 64:
        raise AudioError(f"samples of shape {tuple(wav.shape)} look like (n, channels); pass channels first "
                         f"(transpose the array)")
    return wav


def _decode(source, max_seconds: float | None) -> tuple[torch.Tensor, int]:
    import soundfile as sf

    if isinstance(source, (str, os.PathLike)):
        name, path = str(source), Path(source)
        if not path.is_file():
            raise AudioError(f"{name}: no such file")
        data_bytes = None
    else:
        name, data_bytes = "audio bytes", bytes(source)
    with (path.open("rb") if data_bytes is None else io.BytesIO(data_bytes)) as fileobj:
        head = fileobj.read(16)
        if not head:
            raise AudioError(f"{name}: empty file (0 bytes)")
        fileobj.seek(0)
        try:
            with sf.SoundFile(fileobj) as f:
                sr, frames, fmt = f.samplerate, f.frames, f.format
                _check_rate(sr, f"{name}:")
                if max_seconds is not None and frames > max_seconds * sr:
                    raise AudioError(f"{name}: {frames / sr:.1f} s long, over the {max_seconds:g} s limit; cut it "
                                     f"into shorter pieces (or raise max_seconds / --max-seconds)")
                data = f.read(dtype="float32", always_2d=True)  # (n, channels), int PCM / 2^(bits-1)
        except AudioError:
            raise
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
            raise AudioError(_decode_failure(name, head, e)) from e
        # MP3 lengths may be estimates (no Xing/LAME header): only a clear shortfall counts as truncation
        if frames > 0 and data.shape[0] < frames * (MP3_LENGTH_SLACK if fmt == "MP3" else 1.0):
            raise AudioError(f"{name}: truncated {fmt} file: the header announces {frames} frames but only "
                             f"{data.shape[0]} could be decoded; re-export or re-download it")
        if fmt in ("WAV", "WAVEX"):
            fileobj.seek(0)
            _check_wav_complete(fileobj, name)
    if data.shape[0] == 0:
        raise AudioError(f"{name}: the file holds zero samples")
    wav = torch.from_numpy(np.ascontiguousarray(data.T))
    _check_finite(wav, name)
    return wav, sr


def _decode_failure(name: str, head: bytes, err: Exception) -> str:
    # libsndfile messages start with "Error opening <the file object>: "; keep only the reason
    reason = str(err).split(": ", 1)[-1] if str(err).startswith("Error opening") else str(err)
    for sig, kind in _UNSUPPORTED_SIGNATURES.items():
        if sig in head[:12]:
            return (f"{name}: unsupported audio format ({kind}); convert it to wav/flac/ogg/mp3, e.g. "
                    f"ffmpeg -i INPUT -ar 16000 OUTPUT.wav")
    if head.startswith((b"RIFF", b"fLaC", b"OggS", b"ID3")):
        return f"{name}: damaged or truncated audio file ({reason}); re-export or re-download it"
    return f"{name}: not a readable audio file (supported: wav, flac, ogg, mp3); libsndfile says: {reason}"


def _check_wav_complete(f, name: str) -> None:
    """libsndfile silently clamps a WAV whose data chunk claims more bytes than the file has: detect that."""
    riff = f.read(12)
    if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        return
    size = f.seek(0, io.SEEK_END)
    f.seek(12)
    while True:
        hdr = f.read(8)
        if len(hdr) < 8:
            return
        cid, n = hdr[:4], int.from_bytes(hdr[4:], "little")
        if cid == b"data":
            if n != 0xFFFFFFFF and f.tell() + n > size:
                raise AudioError(f"{name}: truncated WAV file: the header announces {n} data bytes but only "
                                 f"{size - f.tell()} are present; re-export or re-download it")
            return
        f.seek(n + (n & 1), io.SEEK_CUR)


def _check_finite(wav: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(wav).all()):
        bad = int((~torch.isfinite(wav)).sum())
        raise AudioError(f"{name}: {bad} NaN/Inf sample(s); fix or re-export the audio")


# --- resampling (torchaudio.transforms.Resample, sinc_interp_hann) ------------------------------------------------
@lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, width: int, rolloff: float) -> tuple[torch.Tensor, int]:
    """Polyphase kernel (new, 1, taps) for rates already divided by their gcd; computed in float64.

    Output phase i of a period samples the band-limited input at time i/new (input-sample units): tap k sits
    at input offset k - half, so the kernel is the windowed sinc at (k - half)/orig - i/new, scaled to the lower
    Nyquist times ``rolloff`` (torchaudio ``_get_sinc_resample_kernel`` does the same arithmetic).
    """
    cutoff = min(orig, new) * rolloff  # in units of the reduced rates
    half = math.ceil(width * orig / cutoff)  # taps each side of the centre
    offsets = torch.arange(-half, half + orig, dtype=torch.float64) / orig
    # torchaudio divides an int64 arange by ``new`` (a float32 result) before adding the float64 offsets
    phases = (-torch.arange(new, dtype=torch.float32)[:, None] / new).double()
    t = ((phases + offsets[None]) * cutoff).clamp(-width, width)
    hann = torch.cos(t * math.pi / width / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    kernel = (sinc * (hann * (cutoff / orig))).to(torch.float32)
    return kernel[:, None, :], half


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int, *, width: int = RESAMPLE_WIDTH,
             rolloff: float = RESAMPLE_ROLLOFF) -> torch.Tensor:
    """Resample (..., n) from ``orig_sr`` to ``new_sr``: output length ceil(n * new / orig).

    Matches ``torchaudio.transforms.Resample(orig_sr, new_sr)`` (sinc_interp_hann, width 6, rolloff 0.99):
    zero-pad ``half`` samples left and ``half + orig`` right, strided conv with the polyphase kernel.
    """
    if orig_sr == new_sr:
        return wav
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    kernel, half = _sinc_kernel(orig, new, width, float(rolloff))
    shape, n = wav.shape[:-1], wav.shape[-1]
    x = F.pad(wav.reshape(-1, 1, n).float(), (half, half + orig))
    y = F.conv1d(x, kernel.to(x.device), stride=orig)  # (batch, new, periods)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, : math.ceil(new * n / orig)]
    return y.reshape(*shape, -1).to(wav.dtype if wav.is_floating_point() else torch.float32)


# --- Whisper log-mel ----------------------------------------------------------------------------------------------
def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear 3 mel / 200 Hz below 1 kHz, logarithmic (27 mel per factor 6.4) above."""
    f = np.asarray(f, dtype=np.float64)
    lin = 3.0 * f / 200.0
    log = 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    lin = 200.0 * m / 3.0
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, lin)


def mel_centres(n_mels: int = MEL_BINS, fmin: float = 0.0, fmax: float = MEL_FMAX) -> np.ndarray:
    """Centre frequencies (Hz) of ``mel_filters``' triangles, (n_mels,) float64."""
    return _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))[1:-1]


@lru_cache(maxsize=4)
def mel_filters(sample_rate: int = TOKENIZER_SAMPLE_RATE, n_fft: int = MEL_N_FFT, n_mels: int = MEL_BINS,
                fmin: float = 0.0, fmax: float = MEL_FMAX) -> torch.Tensor:
    """Slaney-normalised triangular mel filters, (n_mels, n_fft // 2 + 1) float32 (librosa/Whisper values).

    Triangles between n_mels + 2 edges equally spaced on the Slaney mel scale, evaluated at the FFT bin
    frequencies linspace(0, sr // 2, n_fft // 2 + 1), each scaled by 2 / (its bandwidth in Hz); float64 math.
    """
    fft_hz = np.linspace(0.0, sample_rate // 2, n_fft // 2 + 1)
    edges = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (fft_hz[None] - lo) / (mid - lo)
    fall = (hi - fft_hz[None]) / (hi - mid)
    tri = np.maximum(0.0, np.minimum(rise, fall)) * (2.0 / (hi - lo))
    return torch.from_numpy(tri).to(torch.float32)


def raw_log_mel(padded: torch.Tensor) -> torch.Tensor:
    """log10 mel power of every full 400-sample window at hop 160 of ``padded`` (B, n); (B, 128, frames).

    ``padded`` already holds the STFT's centre padding; this is the part of the Whisper features that depends
    only on the samples under each window (no floor), so a stream can compute it frame by frame.
    """
    window = torch.hann_window(MEL_N_FFT, periodic=True, dtype=torch.float32, device=padded.device)
    spec = torch.stft(padded, MEL_N_FFT, MEL_HOP, window=window, center=False, return_complex=True)
    power = spec.abs() ** 2
    mel = mel_filters().to(padded.device) @ power
    return torch.clamp(mel, min=LOG_MEL_EPS).log10()


def finish_log_mel(raw: torch.Tensor, peak: torch.Tensor | float | None = None) -> torch.Tensor:
    """Whisper's last two steps: floor at (per-example max - 8), then (x + 4) / 4. raw: (B, 128, N)."""
    if peak is None:
        peak = raw.amax(dim=(1, 2), keepdim=True)
    return (torch.maximum(raw, torch.as_tensor(peak, dtype=raw.dtype) - LOG_MEL_DYNAMIC_RANGE) + 4.0) / 4.0


def log_mel_whisper(batch: torch.Tensor) -> torch.Tensor:
    """Whisper features of a padded batch (B, L) of 16 kHz samples: (B, 128, L // 160) float32.

    As ``WhisperFeatureExtractor._torch_extract_fbank_features``: centred STFT (reflect pad 200, periodic Hann
    400, hop 160), the last frame dropped, |X|^2, Slaney mel, log10(max(., 1e-10)), floor per example at its max
    (over all frames, padding included) minus 8, (x + 4) / 4. Padding the batch (zeros) is the caller's job.
    """
    if batch.dim() == 1:
        batch = batch[None]
    x = batch.float()
    half = MEL_N_FFT // 2
    if x.shape[-1] <= half:  # reflect padding needs more samples than the pad (never with L >= 1280)
        raise AudioError(f"need more than {half} samples for log-mel features, got {x.shape[-1]}")
    padded = F.pad(x[:, None], (half, half), mode="reflect")[:, 0]
    return finish_log_mel(raw_log_mel(padded)[..., :-1])


def split_chunks(wav: torch.Tensor, chunk: int = CHUNK_SAMPLES) -> list[torch.Tensor]:
    """Consecutive non-overlapping 30 s pieces, the last one shorter (official extract_speech_token)."""
    return [wav[i: i + chunk] for i in range(0, wav.shape[-1], chunk)]
