"""Audio front end: decoding every supported container from paths/bytes/arrays, channel choice, resampling
against the official torchaudio output, and a clear AudioError for every kind of bad input."""

import io
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import load_expected
from safetensors.numpy import load_file

from glm4voice.audio import MAX_AUDIO_SECONDS, load_audio, resample
from glm4voice.errors import AudioError

RATE = 16_000
RESAMPLE_REF_TOL = 1e-6  # vs torchaudio 2.3 Resample output stored in the reference set (measured: 0.0)
RESAMPLE_FORMULA_TOL = 2e-6  # float32 polyphase conv vs the float64 direct sum of the same windowed sinc


@pytest.fixture(scope="module")
def ref(reference_dir):
    return reference_dir / "tokenizer"


def _speechlike(n: int, seed: int = 0) -> np.ndarray:
    """A few tones plus noise, peak about 0.6, float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / RATE
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1375 * t) + rng.normal(0, 0.03, n)
    return x.astype(np.float32)


def _encode(data: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


# --- formats and sources ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, subtype, exact", [
    ("WAV", "PCM_16", True), ("WAV", "PCM_24", True), ("WAV", "FLOAT", True), ("FLAC", "PCM_16", True),
    ("OGG", "VORBIS", False), ("MP3", "MPEG_LAYER_III", False),
])
def test_formats_from_path_and_bytes(tmp_path, fmt, subtype, exact):
    x = _speechlike(RATE)
    blob = _encode(x, RATE, fmt, subtype)
    path = tmp_path / f"a.{fmt.lower()}"
    path.write_bytes(blob)
    from_path, from_bytes = load_audio(path), load_audio(blob)
    assert from_path.dtype == torch.float32 and from_path.shape == (RATE,)
    assert torch.equal(from_path, from_bytes)
    lossless, _ = sf.read(io.BytesIO(blob), dtype="float32")  # what the container holds
    if exact:
        assert torch.equal(from_path, torch.from_numpy(lossless))
        assert (from_path - torch.from_numpy(x)).abs().max() < 1e-4  # 16-bit quantisation at most
    else:  # lossy codecs: same length, clearly the same signal (codec delay is compensated by libsndfile)
        corr = np.corrcoef(from_path.numpy(), x)[0, 1]
        assert corr > 0.9, corr


def test_arrays_and_tensors_need_their_rate():
    x = _speechlike(8000)
    assert torch.equal(load_audio(x, source_rate=RATE), torch.from_numpy(x))
    assert torch.equal(load_audio(torch.from_numpy(x), source_rate=RATE), torch.from_numpy(x))
    pcm16 = (x * 32767).astype(np.int16)
    assert torch.allclose(load_audio(pcm16, source_rate=RATE), torch.from_numpy(pcm16 / 32768.0).float())
    with pytest.raises(AudioError, match="source_rate"):
        load_audio(x)
    with pytest.raises(AudioError, match="only for arrays"):
        load_audio(b"RIFF....", source_rate=RATE)
    with pytest.raises(AudioError, match=r"\(n, channels\)"):
        load_audio(np.stack([x, x], 1), source_rate=RATE)  # (n, 2): a transposed array is refused
    with pytest.raises(AudioError, match="float or int16"):
        load_audio(np.array([True, False]), source_rate=RATE)


def test_channel_zero_is_the_official_choice_and_mix_is_an_option(tmp_path):
    left, right = _speechlike(RATE, seed=1), _speechlike(RATE, seed=2) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], 1), RATE, subtype="FLOAT")
    assert torch.equal(load_audio(path), torch.from_numpy(left))
    assert torch.equal(load_audio(path, channel=1), torch.from_numpy(right))
    assert torch.allclose(load_audio(path, channel="mix"), torch.from_numpy((left + right) / 2), atol=1e-7)
    array = load_audio(np.stack([left, right]), source_rate=RATE, channel="mix")
    assert torch.allclose(array, torch.from_numpy((left + right) / 2), atol=1e-7)
    with pytest.raises(AudioError, match="channel 2 requested but the audio has 2"):
        load_audio(path, channel=2)
    with pytest.raises(AudioError, match="'mix'"):
        load_audio(path, channel="left")


# --- resampling ---------------------------------------------------------------------------------------------------
def test_resample_matches_the_official_torchaudio_output(ref):
    """Channel 0 of every non-16 kHz reference input after torchaudio Resample(orig, 16000), as the official
    code computes it; the arrays to check come from expected.json."""
    expected = load_expected(ref)
    arrays = [f for f, names in expected["arrays"].items() if any("resampled" in n for n in names)]
    assert arrays, "the reference set has no resampled arrays"
    checked = 0
    for fname in arrays:
        for key, want in load_file(ref / fname).items():
            stem = key.split("/")[-1]
            [src] = [k for k in expected["inputs"] if k.split("/")[-1].rsplit(".", 1)[0] == stem]
            got = load_audio(ref / src)
            assert got.shape == want.shape
            err = float(np.abs(got.numpy() - want).max())
            print(f"{stem}: max |resample - torchaudio| = {err:.3g}")
            assert err <= RESAMPLE_REF_TOL
            checked += 1
    assert checked


def _direct_resample(x: np.ndarray, orig: int, new: int, width: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """float64 y[m] = sum_n x[n] h(n/orig - m/new): the windowed sinc that torchaudio's kernel samples.

    Output m = new * p + i sits at input time orig * (p + i/new); torchaudio computes i/new in float32 (int64
    arange / int), which moves the kernel by up to ~1e-6, so the same rounding is applied here.
    """
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    base = min(orig, new) * rolloff
    n_out = math.ceil(new * len(x) / orig)
    m = np.arange(n_out)[:, None]
    centre = np.floor(m * orig / new).astype(int)
    reach = math.ceil(width * orig / base) + 1
    n = centre + np.arange(-reach, reach + 1)[None]
    phase = (m // new) + (m % new / np.float32(new)).astype(np.float32).astype(np.float64)
    t = np.clip((n / orig - phase) * base, -width, width)
    h = np.sinc(t) * np.cos(t * np.pi / width / 2) ** 2 * (base / orig)
    xs = np.where((n >= 0) & (n < len(x)), x[np.clip(n, 0, len(x) - 1)], 0.0)
    return (xs * h).sum(1)


@pytest.mark.parametrize("orig, new", [(44_100, 16_000), (22_050, 16_000), (8_000, 16_000), (48_000, 16_000),
                                       (16_000, 22_050), (11_025, 16_000)])
def test_resample_equals_the_windowed_sinc_formula(orig, new):
    x = np.random.default_rng(3).uniform(-1, 1, 3001).astype(np.float32)
    y = resample(torch.from_numpy(x), orig, new)
    want = _direct_resample(x.astype(np.float64), orig, new)
    assert y.shape == (math.ceil(len(x) * new / orig),)
    assert np.abs(y.numpy() - want).max() <= RESAMPLE_FORMULA_TOL


def test_resample_keeps_the_band_and_removes_aliases():
    t = np.arange(44_100) / 44_100
    low, high = np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 12_000 * t)  # 12 kHz cannot exist at 16 kHz
    y_low = resample(torch.from_numpy(low).float(), 44_100, RATE)[200:-200].numpy()
    y_high = resample(torch.from_numpy(high).float(), 44_100, RATE)[200:-200].numpy()
    ts = (np.arange(len(y_low)) + 200) / RATE
    assert np.abs(y_low - np.sin(2 * np.pi * 1000 * ts)).max() < 2e-3
    assert np.abs(y_high).max() < 3e-3  # a width-6 Hann sinc rejects it by about 55 dB (measured 1.8e-3)


def test_resampling_a_file_gives_16k_of_channel_zero(tmp_path):
    x = _speechlike(48_000)
    path = tmp_path / "a48k.flac"
    sf.write(path, np.stack([x, -x], 1), 48_000, subtype="PCM_24")
    got = load_audio(path)
    want = resample(torch.from_numpy(sf.read(path, dtype="float32")[0][:, 0].copy()), 48_000, RATE)
    assert got.shape == (16_000,) and torch.equal(got, want)


# --- bad input ----------------------------------------------------------------------------------------------------
def _bad_inputs() -> dict[str, tuple[bytes, str]]:
    x = _speechlike(RATE)
    wav = _encode(x, RATE, "WAV", "PCM_16")
    flac = _encode(x, RATE, "FLAC")
    mp3 = _encode(x, RATE, "MP3", "MPEG_LAYER_III")
    nan = x.copy()
    nan[100] = np.nan
    inf = x.copy()
    inf[5] = np.inf
    return {
        "empty file": (b"", "empty file"),
        "zero samples": (_encode(np.zeros(0, np.float32), RATE, "WAV"), "zero samples"),
        "not audio": (b"this is a text file, not a recording\n" * 20, "not a readable audio file"),
        "truncated wav": (wav[: len(wav) // 2], "truncated WAV"),
        "truncated header": (wav[:30], "damaged or truncated"),
        "truncated flac": (flac[: len(flac) // 2], "damaged or truncated"),
        "truncated mp3": (mp3[: len(mp3) // 2], "truncated MP3"),
        "nan samples": (_encode(nan, RATE, "WAV", "FLOAT"), "NaN/Inf"),
        "inf samples": (_encode(inf, RATE, "WAV", "FLOAT"), "NaN/Inf"),
        "m4a": (b"\x00\x00\x00\x20ftypM4A " + bytes(300), "unsupported audio format"),
        "webm": (b"\x1aE\xdf\xa3" + bytes(300), "unsupported audio format"),
        "absurd rate": (_encode(x[:400], 100, "WAV"), "100 Hz is outside"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_files_raise_a_clear_audio_error(tmp_path, case):
    blob, match = _bad_inputs()[case]
    path = tmp_path / "input.bin"
    path.write_bytes(blob)
    with pytest.raises(AudioError, match=match) as e:
        load_audio(path)
    assert str(path) in str(e.value)  # the message names the file
    with pytest.raises(AudioError, match=match):
        load_audio(blob)


def test_bad_arrays_and_rates():
    x = _speechlike(1000)
    with pytest.raises(AudioError, match="zero samples"):
        load_audio(np.zeros(0, np.float32), source_rate=RATE)
    with pytest.raises(AudioError, match="NaN/Inf"):
        load_audio(np.array([0.0, np.nan], np.float32), source_rate=RATE)
    for rate in (0, -16000, 5_000_000):
        with pytest.raises(AudioError, match="outside"):
            load_audio(x, source_rate=rate)
    with pytest.raises(AudioError, match="whole number"):
        load_audio(x, source_rate=16000.5)
    with pytest.raises(AudioError, match="target sample rate"):
        load_audio(x, source_rate=RATE, sample_rate=10**9)
    with pytest.raises(AudioError, match="no such file"):
        load_audio("/nonexistent/speech.wav")


def test_too_long_audio_is_refused_from_the_header(tmp_path, monkeypatch):
    path = tmp_path / "long.flac"
    sf.write(path, _speechlike(3 * RATE), RATE)
    monkeypatch.setattr(sf.SoundFile, "read", lambda *a, **k: pytest.fail("decoded a file over the limit"))
    with pytest.raises(AudioError, match="over the 2 s limit"):
        load_audio(path, max_seconds=2.0)
    monkeypatch.undo()
    assert load_audio(path, max_seconds=None).shape == (3 * RATE,)
    with pytest.raises(AudioError, match=f"over the {MAX_AUDIO_SECONDS:g} s limit"):
        load_audio(torch.zeros(int(MAX_AUDIO_SECONDS * 8000) + 1), source_rate=8000)
