"""Wrappers around the offline TTS engines (espeak-ng, flite, festival): text -> float32 mono PCM at a chosen rate.

Each engine runs as a subprocess in a private temporary folder; festival speaks a whole batch in one process because
its start-up (~0.5 s) costs more than the synthesis of a sentence. Style is a speaking-rate factor and a pitch shift
in semitones, applied natively where the engine has a control (espeak ``-s``/``-p``, flite ``duration_stretch``) and
with sox ``tempo``/``pitch`` otherwise (DATA.md). Text a voice cannot speak raises :class:`UnspeakableText` before any
engine runs, so the corpus builder can skip and count it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from glm4voice.train.voices import Voice, get_voice

ESPEAK_DEFAULT_WPM = 175  # espeak-ng's default speaking rate, words per minute
ESPEAK_DEFAULT_PITCH = 50  # espeak-ng -p range 0..99
ESPEAK_PITCH_PER_SEMITONE = 6  # espeak's pitch scale is not in semitones; this step sounds close to one
MAX_TEXT_CHARS = 600  # longer texts are not what the corpus is for, and festival slows down on them
MIN_PEAK = 1e-3  # an engine output quieter than this everywhere is treated as a failure (silence)
ENGINE_TIMEOUT_S = 120

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_LETTER = re.compile(r"[A-Za-z]")
_PUNCT_MAP = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": ", ",
                            "\u2026": "...", "\u00a0": " "})


class UnspeakableText(ValueError):
    """The text cannot be spoken by this voice (wrong script, empty, too long). Deterministic: do not retry."""


class TTSFailure(RuntimeError):
    """The engine ran but failed (missing binary, crash, timeout, silent output)."""


@dataclass(frozen=True)
class Style:
    """Speaking style: ``rate`` > 1 speaks faster (duration / rate), ``pitch`` shifts by semitones."""

    rate: float = 1.0
    pitch: float = 0.0

    def key(self) -> str:
        return f"rate={self.rate:.2f},pitch={self.pitch:+.1f}"

    @classmethod
    def parse(cls, key: str) -> Style:
        fields = dict(kv.split("=") for kv in key.split(","))
        return cls(rate=float(fields["rate"]), pitch=float(fields["pitch"]))

    @property
    def neutral(self) -> bool:
        return abs(self.rate - 1.0) < 1e-6 and abs(self.pitch) < 1e-6


NORMAL = Style()

ENGINE_BINARIES = {"espeak": "espeak-ng", "flite": "flite", "festival": "festival"}


def available_engines() -> dict[str, bool]:
    """Which engines have their binary on PATH (and sox, needed for festival/flite styles)."""
    found = {engine: shutil.which(binary) is not None for engine, binary in ENGINE_BINARIES.items()}
    found["sox"] = shutil.which("sox") is not None
    return found


def prepare_text(text: str, voice: Voice) -> str:
    """Normalise ``text`` for ``voice`` or raise :class:`UnspeakableText` saying why."""
    text = " ".join(unicodedata.normalize("NFKC", text).translate(_PUNCT_MAP).split())
    if not text:
        raise UnspeakableText("empty text")
    if len(text) > MAX_TEXT_CHARS:
        raise UnspeakableText(f"text of {len(text)} chars is longer than {MAX_TEXT_CHARS}")
    if voice.language == "zh":
        if _LATIN_LETTER.search(text):
            raise UnspeakableText(f"Latin letters in Chinese text would be read as pinyin by {voice.name}: {text!r}")
        if not _CJK.search(text):
            raise UnspeakableText(f"no Chinese characters for {voice.name}: {text!r}")
        return text
    if voice.language != "en":  # a speaker-variety voice (voices.VARIETY_VOICES) reads its own language
        try:
            text.encode(voice.text_encoding)
        except UnicodeEncodeError:
            raise UnspeakableText(f"{voice.name} reads {voice.text_encoding} text; {text!r} does not fit") from None
        return text
    # English engines: fold accents (café -> cafe), then refuse any other script rather than spell it out.
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    bad = sorted({c for c in folded if not c.isascii() and c.isalpha()})
    if bad:
        raise UnspeakableText(f"{voice.name} cannot speak the characters {''.join(bad[:10])!r} in {text!r}")
    folded = "".join(c for c in folded if c.isascii() and (c.isprintable()))
    if not any(c.isalnum() for c in folded):
        raise UnspeakableText(f"nothing to speak in {text!r}")
    return folded


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=ENGINE_TIMEOUT_S, **kw)
    except FileNotFoundError as e:
        raise TTSFailure(f"{cmd[0]} is not installed (run scripts/install_data_deps.sh)") from e
    except subprocess.TimeoutExpired as e:
        raise TTSFailure(f"{cmd[0]} timed out after {ENGINE_TIMEOUT_S} s") from e
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-300:] if isinstance(proc.stderr, bytes) else proc.stderr
        raise TTSFailure(f"{cmd[0]} exited with {proc.returncode}: {err}")
    return proc


def _read(path: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if not os.path.exists(path) or os.path.getsize(path) <= 44:
        raise TTSFailure(f"engine wrote no audio to {path}")
    wav, sr = sf.read(path, dtype="float32", always_2d=True)
    return wav.mean(axis=1), sr


def _sox_style(path: str, style: Style, *, tempo: bool, pitch: bool) -> None:
    """Apply the parts of ``style`` the engine could not, in place, with sox (``tempo -s`` keeps pitch)."""
    effects: list[str] = []
    if tempo and abs(style.rate - 1.0) > 1e-6:
        effects += ["tempo", "-s", f"{style.rate:.4f}"]
    if pitch and abs(style.pitch) > 1e-6:
        effects += ["pitch", f"{style.pitch * 100:.1f}"]  # sox pitch is in cents
    if effects:
        out = path + ".sox.wav"
        # -D: no dither, -R: repeatable; float output so nothing is requantised. Same input -> same bytes.
        _run(["sox", "-R", "-D", path, "-e", "floating-point", "-b", "32", out, *effects])
        os.replace(out, path)


@lru_cache(maxsize=1)
def _espeak_voices() -> tuple[frozenset[str], frozenset[str]]:
    """Languages and variant names espeak-ng knows (it silently falls back to a default for unknown ones)."""
    langs = _run(["espeak-ng", "--voices"]).stdout.decode().splitlines()[1:]
    variants = _run(["espeak-ng", "--voices=variant"]).stdout.decode().splitlines()[1:]
    return (frozenset(line.split()[1] for line in langs if line.split()),
            frozenset(line.split()[4].removeprefix("!v/") for line in variants if len(line.split()) > 4))


def _espeak(text: str, voice: Voice, style: Style, path: str, tmp: str) -> None:
    lang, _, variant = voice.engine_voice.partition("+")
    langs, variants = _espeak_voices()
    if lang not in langs or (variant and variant not in variants):
        raise TTSFailure(f"espeak-ng has no voice {voice.engine_voice!r}")
    wpm = int(round(min(450, max(80, ESPEAK_DEFAULT_WPM * style.rate))))
    pitch = int(round(min(99, max(0, ESPEAK_DEFAULT_PITCH + ESPEAK_PITCH_PER_SEMITONE * style.pitch))))
    # Text goes through a file so that a leading '-' is never parsed as an option.
    txt = os.path.join(tmp, "in.txt")
    with open(txt, "w", encoding="utf-8") as f:
        f.write(text)
    _run(["espeak-ng", "-v", voice.engine_voice, "-s", str(wpm), "-p", str(pitch), "-f", txt, "-w", path])


def _flite(text: str, voice: Voice, style: Style, path: str, tmp: str) -> None:
    txt = os.path.join(tmp, "in.txt")
    with open(txt, "w", encoding="utf-8") as f:
        f.write(text)
    _run(["flite", "-voice", voice.engine_voice, "--setf", f"duration_stretch={1.0 / style.rate:.4f}", "-f", txt,
          "-o", path])
    _sox_style(path, style, tempo=False, pitch=True)


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _festival_batch(texts: Sequence[str], voice: Voice, paths: Sequence[str], tmp: str) -> None:
    """Speak all ``texts`` in one festival process; a failing utterance leaves its path missing (not the batch)."""
    lines = [f"(voice_{voice.engine_voice})"]
    for text, path in zip(texts, paths, strict=True):
        say = f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(text)})) {_scheme_string(path)} 'riff)"
        lines.append(f'(unwind-protect {say} (format t "glm4voice-failed {path}\\n"))')
    script = os.path.join(tmp, "batch.scm")
    with open(script, "w", encoding=voice.text_encoding) as f:  # festival reads bytes in the voice's encoding
        f.write("\n".join(lines) + "\n")
    _run(["festival", "-b", script])


def synthesize_batch(texts: Sequence[str], voice: Voice | str, styles: Sequence[Style] | None = None, *,
                     sample_rate: int | None = 16_000) -> list[np.ndarray | Exception]:
    """Speak each text with ``voice``; returns float32 mono arrays at ``sample_rate`` or the exception per text.

    ``sample_rate=None`` keeps the voice's native rate (``voice.native_rate``), so callers that need several rates
    resample once from the best source. Errors are returned, not raised, so one bad sentence never loses the rest of
    a batch.
    """
    import soxr

    voice = get_voice(voice) if isinstance(voice, str) else voice
    styles = list(styles) if styles is not None else [NORMAL] * len(texts)
    results: list[np.ndarray | Exception | None] = [None] * len(texts)
    prepared: dict[int, str] = {}
    for i, text in enumerate(texts):
        try:
            prepared[i] = prepare_text(text, voice)
        except UnspeakableText as e:
            results[i] = e
    with tempfile.TemporaryDirectory(prefix="glm4voice-tts-") as tmp:
        paths = {i: os.path.join(tmp, f"{i}.wav") for i in prepared}
        if voice.engine == "festival" and prepared:
            try:
                _festival_batch([prepared[i] for i in prepared], voice, [paths[i] for i in prepared], tmp)
            except TTSFailure as e:
                for i in prepared:
                    results[i] = e
                prepared = {}
        for i, text in prepared.items():
            try:
                if voice.engine == "espeak":
                    _espeak(text, voice, styles[i], paths[i], tmp)
                elif voice.engine == "flite":
                    _flite(text, voice, styles[i], paths[i], tmp)
                elif voice.engine == "festival":
                    _sox_style(paths[i], styles[i], tempo=True, pitch=True) if os.path.exists(paths[i]) else None
                else:
                    raise TTSFailure(f"unknown engine {voice.engine!r}")
                wav, sr = _read(paths[i])
                if wav.size == 0 or not np.isfinite(wav).all() or np.abs(wav).max() < MIN_PEAK:
                    raise TTSFailure(f"{voice.name} produced silence for {text!r}")
                target = sample_rate or voice.native_rate
                if sr != target:
                    wav = soxr.resample(wav, sr, target, quality="HQ").astype(np.float32)
                results[i] = np.clip(wav, -1.0, 1.0).astype(np.float32)
            except TTSFailure as e:
                results[i] = e
    return results  # type: ignore[return-value]


def synthesize(text: str, voice: Voice | str, style: Style = NORMAL, *, sample_rate: int = 16_000) -> np.ndarray:
    """Speak one text; raises :class:`UnspeakableText` or :class:`TTSFailure`."""
    (out,) = synthesize_batch([text], voice, [style], sample_rate=sample_rate)
    if isinstance(out, Exception):
        raise out
    return out
