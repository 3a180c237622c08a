"""Evaluation sets: what each suite asks, from our corpus, from a user's folder, or made on the fly.

Three sources, one item type (``EvalItem``):

- **our corpus** (a folder with ``manifest.jsonl``, glm4voice/train/corpus.py): the spoken questions of the
  ``heldout`` split (held-out voices and/or held-out phrasings), with the item's answer and style from
  ``items.jsonl``;
- **a user folder**: audio files plus ``metadata.jsonl`` (or ``metadata.tsv`` with a header row) whose rows name
  the file and the expected texts, see ``FOLDER_FIELDS``; a folder of audio without metadata serves the suites
  that need no reference (quality);
- **the built-in held-out set** (no ``--data``): the held-out phrasings of our text items (train/texts.py), spoken
  on the fly by the held-out voices (train/voices.py), cached in a folder of the user-folder format.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from glm4voice.errors import ConfigError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
METADATA_FILES = ("metadata.jsonl", "metadata.tsv")
# Fields of a user folder's metadata rows. Only "audio" is required (and only by suites that listen).
FOLDER_FIELDS = {
    "audio": "file name of the question (or utterance) audio, relative to the folder",
    "text": "what the audio says (its transcript; the text of a TTS request)",
    "answer": "the expected answer, for QA suites",
    "key": "optional short fact the answer must contain (e.g. '7', 'Paris'), see metrics.answer_correct",
    "language": "'en' (default) or 'zh'",
    "kind": "a category for per-kind results (default 'user')",
    "style": "'normal' (default), 'fast', 'slow', ... for the style suite",
    "id": "an id (default: the audio file name)",
    "voice": "optional speaker name, for per-voice results",
}


@dataclass(frozen=True)
class EvalItem:
    id: str
    text: str  # what ``audio`` says; for text-only items, the question (or the TTS text)
    answer: str = ""
    audio: str | None = None  # absolute path of the spoken question / utterance
    language: str = "en"
    kind: str = "user"
    style: str = "normal"
    key: str | None = None
    voice: str = ""
    answer_audio: str | None = None  # a reference recording of the answer (corpus target voice), if any
    text_split: str = ""  # our corpus: split of the item's phrasing ("heldout" = a template never trained on)


@dataclass(frozen=True)
class EvalSet:
    name: str  # where the items come from, for the report
    items: tuple[EvalItem, ...]

    def filter(self, *, kinds: Sequence[str] | None = None, styles: Sequence[str] | None = None,
               with_audio: bool = False, with_answer: bool = False) -> EvalSet:
        keep = [it for it in self.items
                if (kinds is None or it.kind in kinds) and (styles is None or it.style in styles)
                and (not with_audio or it.audio) and (not with_answer or it.answer)]
        return EvalSet(self.name, tuple(keep))

    def sample(self, limit: int | None, seed: int = 0) -> EvalSet:
        """At most ``limit`` items, spread over kinds, languages and styles (round robin over shuffled groups)."""
        if limit is None or len(self.items) <= limit:
            return self
        groups: dict[tuple[str, str, str], list[EvalItem]] = defaultdict(list)
        for it in self.items:
            groups[(it.kind, it.language, it.style)].append(it)
        rng = random.Random(seed)
        queues = []
        for key in sorted(groups):
            g = list(groups[key])
            rng.shuffle(g)
            queues.append(g)
        rng.shuffle(queues)  # a limit below the number of groups must not favour the alphabetically first kinds
        out: list[EvalItem] = []
        while len(out) < limit:
            for q in queues:
                if q and len(out) < limit:
                    out.append(q.pop())
        return EvalSet(self.name, tuple(sorted(out, key=lambda it: it.id)))


# --- our corpus -----------------------------------------------------------------------------------------------------
def from_corpus(corpus_dir: str | os.PathLike, *, split: str = "heldout") -> EvalSet:
    """Spoken questions of ``split`` with their items' answers (answer audio = the target-voice recording)."""
    from glm4voice.eval.metrics import answer_key
    from glm4voice.train.corpus import ITEMS, load_manifest
    from glm4voice.train.texts import read_items

    corpus_dir = Path(corpus_dir)
    if not (corpus_dir / ITEMS).is_file():
        raise ConfigError(f"{corpus_dir} has a manifest but no {ITEMS}: not a corpus made by `glm4voice data synth`")
    items = {it.id: it for it in read_items(str(corpus_dir / ITEMS))}
    rows = load_manifest(str(corpus_dir)).rows
    answers = {r["item_id"]: r for r in rows if r["role"] == "answer"}
    out = []
    for r in rows:
        if r["role"] != "question" or r["split"] != split or r["item_id"] not in items:
            continue
        it = items[r["item_id"]]
        a = answers.get(it.id)
        out.append(EvalItem(r["id"], it.question, it.answer, str(corpus_dir / r["path"]), it.language, it.kind,
                            it.style, answer_key(it.kind, it.answer, it.language), r["voice"],
                            str(corpus_dir / a["path"]) if a else None, it.split))
    return EvalSet(f"corpus {corpus_dir} ({split})", tuple(out))


# --- a user folder --------------------------------------------------------------------------------------------------
def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ConfigError(f"{path}, line {n}: not JSON ({e.msg})") from e
        return rows
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def from_folder(folder: str | os.PathLike) -> EvalSet:
    """Audio files with ``metadata.jsonl`` / ``metadata.tsv`` (fields: ``FOLDER_FIELDS``), or bare audio files."""
    folder = Path(folder)
    meta = next((folder / m for m in METADATA_FILES if (folder / m).is_file()), None)
    if meta is None:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
        if not files:
            raise ConfigError(f"{folder} holds no audio ({', '.join(AUDIO_EXTENSIONS)}) and no "
                              f"{' or '.join(METADATA_FILES)}")
        return EvalSet(f"folder {folder}", tuple(EvalItem(str(p.relative_to(folder)), "", audio=str(p))
                                                 for p in files))
    items = []
    for n, row in enumerate(_read_rows(meta), 1):
        unknown = sorted(set(row) - set(FOLDER_FIELDS))
        if unknown:
            raise ConfigError(f"{meta}, row {n}: unknown field(s) {unknown}; known: {sorted(FOLDER_FIELDS)}")
        audio = row.get("audio") or None
        if audio is not None:
            audio = str(folder / audio)
            if not os.path.isfile(audio):
                raise ConfigError(f"{meta}, row {n}: audio file {audio} does not exist")
        if not audio and not row.get("text"):
            raise ConfigError(f"{meta}, row {n}: needs 'audio' or 'text'")
        language = row.get("language") or "en"
        if language not in ("en", "zh"):
            raise ConfigError(f"{meta}, row {n}: language {language!r} is not 'en' or 'zh'")
        items.append(EvalItem(row.get("id") or (Path(audio).name if audio else f"row{n}"), row.get("text") or "",
                              row.get("answer") or "", audio, language, row.get("kind") or "user",
                              row.get("style") or "normal", row.get("key") or None, row.get("voice") or ""))
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{meta}: ids must be unique")
    return EvalSet(f"folder {folder}", tuple(items))


def write_folder(eval_set: EvalSet, folder: str | os.PathLike) -> Path:
    """Write ``metadata.jsonl`` for items whose audio already lies in ``folder`` (the built-in set's cache)."""
    folder = Path(folder)
    with open(folder / "metadata.jsonl.part", "w", encoding="utf-8") as f:
        for it in eval_set.items:
            row = {k: v for k, v in asdict(it).items() if k in FOLDER_FIELDS and v not in (None, "")}
            if it.audio:
                row["audio"] = os.path.relpath(it.audio, folder)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(folder / "metadata.jsonl.part", folder / "metadata.jsonl")
    return folder


# --- the built-in held-out set ---------------------------------------------------------------------------------------
def builtin_heldout(cache_dir: str | os.PathLike, *, per_kind: int = 6, seed: int = 0,
                    speak: bool = True) -> EvalSet:
    """Held-out phrasings (train/texts.py) spoken by held-out voices, ``per_kind`` per (kind, language, style).

    Made once into ``cache_dir`` (16 kHz FLAC + metadata.jsonl); later calls read the folder back.
    ``speak=False`` gives text-only items (the LM suite needs no audio).
    """
    from glm4voice.eval.metrics import answer_key
    from glm4voice.train.texts import build_items
    from glm4voice.train.voices import heldout_voices

    cache = Path(cache_dir) / f"heldout-seed{seed}-n{per_kind}"
    if speak and (cache / "metadata.jsonl").is_file():
        return replace(from_folder(cache), name=f"built-in held-out set ({cache})")
    groups: dict[tuple, list] = defaultdict(list)
    for it in build_items(seed):
        if it.split == "heldout":
            groups[(it.kind, it.language, it.style)].append(it)
    rng = random.Random(seed)
    chosen = []
    for key in sorted(groups):
        g = groups[key]
        chosen += rng.sample(g, min(per_kind, len(g)))
    items = []
    for k, it in enumerate(chosen):
        voices = heldout_voices(it.language)
        items.append(EvalItem(it.id, it.question, it.answer, None, it.language, it.kind, it.style,
                              answer_key(it.kind, it.answer, it.language), voices[k % len(voices)].name,
                              text_split=it.split))
    if not speak:
        return EvalSet("built-in held-out set (text)", tuple(items))
    return _speak(items, cache)


def _speak(items: list[EvalItem], cache: Path) -> EvalSet:
    import soundfile as sf
    from tqdm import tqdm

    from glm4voice.constants import TOKENIZER_SAMPLE_RATE
    from glm4voice.train.tts import synthesize_batch

    cache.mkdir(parents=True, exist_ok=True)
    by_voice: dict[str, list[EvalItem]] = defaultdict(list)
    for it in items:
        by_voice[it.voice].append(it)
    done = []
    for voice, group in tqdm(sorted(by_voice.items()), desc="speaking held-out questions", unit="voice"):
        wavs = synthesize_batch([it.text for it in group], voice, sample_rate=TOKENIZER_SAMPLE_RATE)
        for it, wav in zip(group, wavs, strict=True):
            if isinstance(wav, Exception):
                continue  # an unspeakable text for this voice: left out (the item count in the report shows it)
            path = cache / f"{it.id}.flac"
            sf.write(path, wav, TOKENIZER_SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            done.append(replace(it, audio=str(path)))
    done.sort(key=lambda it: it.id)
    write_folder(EvalSet("", tuple(done)), cache)
    return EvalSet(f"built-in held-out set ({cache})", tuple(done))


def load_eval_set(data: str | os.PathLike | None, *, cache_dir: str | os.PathLike, split: str = "heldout",
                  per_kind: int = 6, seed: int = 0, speak: bool = True) -> EvalSet:
    """``data``: None (built-in held-out set), a corpus folder (manifest.jsonl) or a user folder."""
    if data is None:
        return builtin_heldout(cache_dir, per_kind=per_kind, seed=seed, speak=speak)
    path = Path(data).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--data {data}: no such folder")
    if (path / "manifest.jsonl").is_file():
        return from_corpus(path, split=split)
    return from_folder(path)
