"""Speaker variety for the speech tokenizer: the natural voices of other languages, speaking their own language.

The tokenizer hears held-out espeak-ng voices as well as its training voices, but not the two natural held-out
English voices (flite awb, festival ked_diphone; docs/model_card.md): its English training speech comes from one
formant synthesiser and four natural speakers. Debian packages ten more natural festival voices in other languages
(``voices.VARIETY_VOICES``). This module makes a corpus of them for ``glm4voice train tokenizer --extra-corpus``:
each voice reads sentences of frequent words of its language (``wordfreq``'s lists; word salad is enough to teach
an acoustic front end what a new vocal tract sounds like, and its phonemes come from espeak-ng like the English
ones). The tokenizer trainer trains only its phoneme head on these rows; its ASR head learns to stay silent on them.

    glm4voice data variety --out data/variety_v1 --per-voice 1500

The folder has the corpus layout the trainers read (``manifest.jsonl`` rows with ``audio16k/<id>.wav``; role
``variety``, split ``train``). A second run with the same arguments resumes: rows already in the manifest are kept.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glm4voice.errors import ConfigError
from glm4voice.train.corpus import MANIFEST, read_jsonl, write_jsonl_atomic
from glm4voice.train.voices import VARIETY_VOICES, Voice

log = logging.getLogger("glm4voice.train.variety")

AUDIO_DIR = "audio16k"
SAMPLE_RATE = 16_000
BATCH = 50  # sentences per festival process
FESTIVAL_VOICE_ROOTS = ("/usr/share/festival/voices",)


def installed(voice: Voice, roots: Sequence[str] = FESTIVAL_VOICE_ROOTS) -> bool:
    """Whether festival has ``voice`` (its folder under ``<root>/<language>/``)."""
    return any(Path(root).is_dir() and any(Path(root).glob(f"*/{voice.engine_voice}")) for root in roots)


def frequent_words(language: str, n: int = 6000) -> list[str]:
    """The ``n`` most frequent words of ``language`` that are plain words (letters only, two or more)."""
    try:
        import wordfreq
    except ImportError as e:
        raise ConfigError("the speaker-variety corpus needs wordfreq: pip install wordfreq") from e
    return [w for w in wordfreq.top_n_list(language, n) if w.isalpha() and len(w) > 1]


def sentences(words: Sequence[str], count: int, rng: random.Random, *, encoding: str = "utf-8",
              lengths: tuple[int, int] = (5, 12)) -> list[str]:
    """``count`` sentences of ``lengths[0]``-``lengths[1]`` words drawn from ``words`` (those ``encoding`` can
    write), capitalised, a comma after some words, a full stop at the end."""
    usable = [w for w in words if _fits(w, encoding)]
    if len(usable) < 20:
        raise ConfigError(f"only {len(usable)} usable words: not enough for sentences")
    out = []
    for _ in range(count):
        k = rng.randint(*lengths)
        picked = [rng.choice(usable) for _ in range(k)]
        text = " ".join(w + ("," if i < k - 1 and rng.random() < 0.12 else "") for i, w in enumerate(picked))
        out.append(text[0].upper() + text[1:] + ".")
    return out


def _fits(word: str, encoding: str) -> bool:
    try:
        word.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class VarietyReport:
    made: int = 0
    kept: int = 0
    failed: int = 0
    seconds: float = 0.0
    skipped_voices: list[str] = field(default_factory=list)
    name: str = "variety corpus"

    def summary(self) -> str:
        s = (f"{self.name}: {self.made} new utterances ({self.seconds / 3600:.2f} h), {self.kept} kept from an "
             f"earlier run, {self.failed} failed")
        if self.skipped_voices:
            s += f"; voices not installed (skipped): {', '.join(self.skipped_voices)}"
        return s


def _speak(task: tuple, synth: Callable | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """One batch: (out_dir, voice, ids, texts, role, split) -> manifest rows of the sentences spoken (their audio
    written) and (id, reason) of those that failed. Runs in a worker process when ``jobs > 1``."""
    import soundfile as sf

    out, v, ids, texts, role, split = task
    if synth is None:
        from glm4voice.train.tts import synthesize_batch as synth
    rows, failed = [], []
    for rid, text, wav in zip(ids, texts, synth(texts, v, sample_rate=SAMPLE_RATE), strict=True):
        if isinstance(wav, Exception):
            failed.append((rid, str(wav)))
            continue
        pcm = (np.clip(wav, -1, 1) * 32767).astype(np.int16)
        path = f"{AUDIO_DIR}/{rid}.wav"
        sf.write(Path(out) / path, pcm, SAMPLE_RATE, subtype="PCM_16")
        rows.append({"id": rid, "text": text, "language": v.language, "voice": v.name, "style": "plain",
                     "duration": round(len(pcm) / SAMPLE_RATE, 3), "path": path, "role": role,
                     "kind": role, "item_id": rid, "split": split})
    return rows, failed


def build(out_dir: str | os.PathLike, *, per_voice: int, seed: int = 0, voices: Sequence[Voice] = VARIETY_VOICES,
          words: Callable[[str], list[str]] = frequent_words, synth: Callable | None = None,
          available: Callable[[Voice], bool] = installed, progress: bool = True, jobs: int = 1) -> VarietyReport:
    """Speak ``per_voice`` sentences with each installed voice into ``out_dir`` (resumable; see the module doc),
    in ``jobs`` worker processes (batches of ``BATCH`` sentences; only this process writes the manifest).

    ``words``, ``synth`` (``tts.synthesize_batch``'s signature) and ``available`` are injectable for tests (with
    ``jobs=1``)."""
    if per_voice < 1:
        raise ConfigError(f"--per-voice must be >= 1, got {per_voice}")
    installed_now = {v.name: available(v) for v in voices}
    skipped = [v.name for v in voices if not installed_now[v.name]]
    use = [v for v in voices if installed_now[v.name]]
    if not use:
        raise ConfigError("no speaker-variety voice is installed: run scripts/install_variety_voices.sh")
    # each voice its own texts, the same ones on every run with this seed
    plan = [(v, f"var-{v.language}-{v.engine_voice}-{i:05d}", t) for v in use for i, t in enumerate(
        sentences(words(v.language), per_voice, random.Random(f"{seed}:{v.name}"), encoding=v.text_encoding))]
    report = speak_corpus(out_dir, plan, role="variety", synth=synth, progress=progress, jobs=jobs, desc="variety")
    report.skipped_voices = skipped
    return report


def speak_corpus(out_dir: str | os.PathLike, plan: Sequence[tuple], *, role: str,
                 synth: Callable | None = None, progress: bool = True, jobs: int = 1,
                 desc: str = "speak") -> VarietyReport:
    """Speak each (voice, row id, text[, split]) of ``plan`` into the corpus folder ``out_dir`` (``audio16k/<id>.wav``
    and a ``manifest.jsonl`` row of role and kind ``role``, split ``train`` unless given). Rows already in the
    manifest are kept (a second run resumes), in ``jobs`` worker processes (batches of ``BATCH`` texts of one voice
    and split; only this process writes the manifest). ``synth`` has ``tts.synthesize_batch``'s signature
    (injectable for tests, with ``jobs=1``)."""
    from tqdm import tqdm

    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    out = Path(out_dir)
    (out / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST
    rows, torn = read_jsonl(str(manifest))
    if torn:  # a kill mid-write tore the last line: rewrite without it (its row is made again), so appends stay whole
        write_jsonl_atomic(str(manifest), rows)
    done = {r["id"] for r in rows}
    report = VarietyReport(kept=len(done), name=f"{role} corpus")
    by_voice: dict[tuple[str, str], list[tuple[str, str]]] = {}
    voice_of: dict[str, Voice] = {}
    for v, rid, text, *split in plan:
        if rid not in done:
            by_voice.setdefault((v.name, split[0] if split else "train"), []).append((rid, text))
            voice_of[v.name] = v
    tasks = []
    for (name, split), todo in by_voice.items():
        for start in range(0, len(todo), BATCH):
            part = todo[start: start + BATCH]
            tasks.append((str(out), voice_of[name], [rid for rid, _ in part], [t for _, t in part], role, split))
    bar = tqdm(total=sum(len(t[2]) for t in tasks), desc=desc, disable=not progress)
    with manifest.open("a", encoding="utf-8") as f:
        if jobs == 1:
            results = (_speak(t, synth) for t in tasks)
            pool = None
        else:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(jobs)
            results = pool.imap_unordered(_speak, tasks)
        try:
            for rows, failed in results:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
                    report.made += 1
                    report.seconds += r["duration"]
                f.flush()
                for rid, reason in failed:
                    report.failed += 1
                    log.warning("%s: %s", rid, reason)
                bar.update(len(rows) + len(failed))
        finally:
            if pool is not None:
                pool.terminate()
    bar.close()
    return report
