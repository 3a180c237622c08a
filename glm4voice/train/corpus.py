"""Speech corpus synthesis: items -> a plan of utterances -> FLAC files + ``manifest.jsonl``; resumable, parallel.

Layout of a corpus folder::

    corpus.json         options, voices (train / held out / target), and a log of runs with their throughput
    items.jsonl         every text item (question, answer, kind, language, split)
    manifest.jsonl      one row per finished utterance (see ``Row``); appended as work finishes, sorted at the end
    failed.jsonl        utterances that could not be made, with the reason (unspeakable text, engine failure)
    audio16k/<kind>/<id>.flac   every utterance at 16 kHz (the speech tokenizer's rate), PCM_16
    audio22k/<kind>/<id>.flac   answers (and "speech" rows) also at 22.05 kHz in the target voice (the speech
                        decoder's rate)
    tokens/<id>.npy     speech tokens per utterance, made by ``cache_tokens`` with a tokenizer supplied by the caller

The plan is a pure function of the items and the options (every choice is drawn from ``random.Random`` seeded by
the seed and the item id), so a run can be killed at any moment and continued: rows already in the manifest are
skipped, a torn last line is dropped, audio is written to a temporary name and renamed before its row is written.
Held-out voices (voices.py) only ever produce rows with ``split="heldout"``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from glm4voice.constants import DECODER_SAMPLE_RATE, TOKENIZER_SAMPLE_RATE
from glm4voice.errors import ConfigError
from glm4voice.train.texts import AUGMENT_SETS, Item, TextConfig, build_items, read_items, rephrase, write_items
from glm4voice.train.tts import Style, TTSFailure, UnspeakableText, synthesize_batch
from glm4voice.train.voices import (
    EXTRA_VOICES_2,
    HELDOUT_VOICE_NAMES,
    TARGET_VOICES,
    VOICES,
    extra_voices,
    get_voice,
    heldout_voices,
    train_voices,
)

# How a requested answer style is rendered: rate factor (duration / rate) and pitch shift in semitones. "fast" and
# "slow" differ by 2x in duration so that the style evaluation's >= 20 % speed difference has a wide margin.
ANSWER_STYLES: dict[str, Style] = {
    "normal": Style(),
    "fast": Style(rate=1.4),
    "slow": Style(rate=0.7),
    "high": Style(pitch=4.0),
    "low": Style(pitch=-4.0),
}
TARGET_ROLES = ("answer", "speech")  # rows in the target voice with a 22.05 kHz file: what the decoder trains on
QUESTION_RATE_RANGE = (0.85, 1.2)  # natural variation of question speakers, rate factor
QUESTION_PITCH_RANGE = (-2, 2)  # semitones, integers
TASK_SIZE = 24  # utterances per worker task (one festival process per task)
FLAC_SUBTYPE = "PCM_16"

MANIFEST = "manifest.jsonl"
FAILED = "failed.jsonl"
ITEMS = "items.jsonl"
META = "corpus.json"


@dataclass(frozen=True)
class CorpusConfig:
    """Options that decide the plan. A corpus folder keeps the ones it was made with; resuming must match them."""

    seed: int = 0
    num_items: int | None = None  # None: every item; else a seeded sample of this many
    question_voices: int = 1  # training voices per question
    heldout_voice_fraction: float = 0.1  # share of train items also spoken by a held-out voice (split heldout)
    answers: bool = True  # also speak every answer in the target voice
    languages: tuple[str, ...] = ("en", "zh")
    kinds: tuple[str, ...] | None = None  # None: all kinds
    # extra phrasings of each training item's question (texts.rephrase: train and augmentation templates, never a
    # held-out one), each spoken once by a training voice as ``<item>.r<k>``; 0 keeps the plan of older corpora
    spoken_rephrasings: int = 0
    # augmentation phrasings those rephrasings draw from (texts.AUGMENT_SETS); 1 keeps the plan of older corpora
    augment_set: int = 1
    # more phrasings of each training item's question drawn with augmentation set 3 (its new phrasings and the
    # fillers around them), each different from the item's question and its ``.r`` rows, each spoken once by a
    # training voice as ``<item>.p<k>``; own RNG stream, so a corpus can be completed in place; 0 keeps older plans
    rephrasings_set3: int = 0
    # more phrasings of each English training item's question drawn with augmentation set 4 (set 3's phrasings, about
    # a third of them with stray words from other kinds between their words), each different from the item's
    # question, ``.r`` and ``.p`` rows, spoken once by a training voice as ``<item>.n<k>``; own RNG stream, so a corpus
    # completes in place; 0 keeps older plans
    rephrasings_set4: int = 0
    # more phrasings of each Mandarin training item's question drawn with augmentation set 6 (set 5 with more
    # Mandarin phrasings), each different from the item's question and its ``.r`` and ``.p`` rows, spoken once by a
    # training voice as ``<item>.m<k>``; own RNG stream, so a corpus completes in place; 0 keeps older plans
    rephrasings_set6: int = 0
    # more speakers: each training item's question is also spoken by this many voices of voices.EXTRA_VOICES_2
    # (one each, distinct), as ``<item>.v<k>``; 0 keeps the plan of older corpora
    extra_voices: int = 0
    # speak the questions at all (``False`` with ``target_voice_phrasings`` makes a decoder-only corpus)
    questions: bool = True
    # more audio for the speech decoder: each training item's question and up to this many - 1 other training
    # phrasings, spoken plainly in the target voice as role "speech" rows ``<item>.t<k>`` with a 22.05 kHz file
    # (never a held-out item or phrasing); 0 keeps the plan of older corpora
    target_voice_phrasings: int = 0
    # more text for the speech decoder: up to this many English sentences that no item says (WordNet definitions of
    # words no item defines, as "<Word> means <gloss>.", and fortunes no item uses), spoken plainly in the target
    # voice as role "speech" rows ``extra-en-<k>`` (kind "extra"); 0 keeps the plan of older corpora
    target_voice_texts: int = 0

    def __post_init__(self):
        if self.target_voice_phrasings < 0 or self.target_voice_texts < 0:
            raise ConfigError(f"target_voice_phrasings and target_voice_texts must be >= 0, got "
                              f"{self.target_voice_phrasings} and {self.target_voice_texts}")
        if self.extra_voices < 0:
            raise ConfigError(f"extra_voices must be >= 0, got {self.extra_voices}")
        for name in ("rephrasings_set3", "rephrasings_set4", "rephrasings_set6"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.spoken_rephrasings < 0 or self.question_voices < 1:
            raise ConfigError(f"spoken_rephrasings must be >= 0 and question_voices >= 1, got "
                              f"{self.spoken_rephrasings} and {self.question_voices}")
        if self.augment_set not in AUGMENT_SETS:
            raise ConfigError(f"augment_set must be one of {AUGMENT_SETS}, got {self.augment_set}")


@dataclass(frozen=True)
class Utterance:
    """One planned utterance. ``split`` is "heldout" if the item's phrasing or the voice is held out."""

    id: str
    item_id: str
    kind: str
    role: str  # "question" | "answer" | "speech" (target-voice audio for the decoder only; not a dialogue turn)
    text: str
    language: str
    voice: str
    style: str  # Style.key()
    split: str

    @property
    def path(self) -> str:
        return os.path.join("audio16k", self.kind, f"{self.id}.flac")

    @property
    def path_22k(self) -> str | None:
        return os.path.join("audio22k", self.kind, f"{self.id}.flac") if self.role in TARGET_ROLES else None


# --- plan ---------------------------------------------------------------------------------------------------------

def select_items(items: Sequence[Item], cfg: CorpusConfig) -> list[Item]:
    chosen = [it for it in items if it.language in cfg.languages and (cfg.kinds is None or it.kind in cfg.kinds)]
    if cfg.num_items is not None and cfg.num_items < len(chosen):
        rng = random.Random(f"{cfg.seed}:select")
        keep = set(rng.sample(range(len(chosen)), cfg.num_items))
        chosen = [it for i, it in enumerate(chosen) if i in keep]
    return chosen


def _question_style(rng: random.Random) -> Style:
    rate = round(rng.uniform(*QUESTION_RATE_RANGE) / 0.05) * 0.05
    return Style(rate=rate, pitch=float(rng.randint(*QUESTION_PITCH_RANGE)))


def plan(items: Sequence[Item], cfg: CorpusConfig) -> list[Utterance]:
    """Utterances for ``items``: questions by sampled training voices (+ held-out ones), answers in the target voice."""
    out: list[Utterance] = []
    for it in select_items(items, cfg):
        rng = random.Random(f"{cfg.seed}:plan:{it.id}")
        pool = train_voices(it.language)
        voices = rng.sample(pool, min(cfg.question_voices, len(pool)))
        held = heldout_voices(it.language)
        if held and (it.split == "heldout" or rng.random() < cfg.heldout_voice_fraction):
            voices.append(held[rng.randrange(len(held))])
        if cfg.questions:
            for k, voice in enumerate(voices):
                split = "heldout" if it.split == "heldout" or voice.heldout else "train"
                out.append(Utterance(f"{it.id}.q{k}", it.id, it.kind, "question", it.question, it.language,
                                     voice.name, _question_style(rng).key(), split))
            rephrased = _rephrased_questions(it, cfg, pool)
            out.extend(rephrased)
            set3 = _set3_questions(it, cfg, pool, {it.question} | {u.text for u in rephrased})
            out.extend(set3)
            set4 = _set4_questions(it, cfg, pool, {it.question} | {u.text for u in rephrased + set3})
            out.extend(set4)
            out.extend(_set6_questions(it, cfg, pool, {it.question} | {u.text for u in rephrased + set3 + set4}))
            out.extend(_extra_voice_questions(it, cfg))
        out.extend(_target_voice_speech(it, cfg))
        if cfg.answers:
            out.append(Utterance(f"{it.id}.a", it.id, it.kind, "answer", it.answer, it.language,
                                 TARGET_VOICES[it.language], ANSWER_STYLES[it.style].key(), it.split))
    out.extend(_target_voice_texts(items, cfg))
    for u in out:  # the declared guarantee, checked where the rows are made
        assert u.split == "heldout" or u.voice not in HELDOUT_VOICE_NAMES, u
    return out


def _rephrased_questions(it: Item, cfg: CorpusConfig, pool: Sequence) -> list[Utterance]:
    """Up to ``cfg.spoken_rephrasings`` other training phrasings of a training item's question, each different from
    the item's own and from each other, each by one training voice. Its own RNG stream, so the rest of the plan is
    the same with or without them; kinds that ``rephrase`` leaves unchanged (chat) get none."""
    if cfg.spoken_rephrasings <= 0 or it.split != "train":
        return []
    rng = random.Random(f"{cfg.seed}:rephrase:{it.id}")
    return _spoken_phrasings(it, cfg.spoken_rephrasings, cfg.augment_set, "r", rng, pool, {it.question})


def _set3_questions(it: Item, cfg: CorpusConfig, pool: Sequence, seen: set[str]) -> list[Utterance]:
    """Up to ``cfg.rephrasings_set3`` more training phrasings of a training item's question from augmentation set 3
    (``texts.rephrase(augment=3)``), none in ``seen`` (the item's question and its other rephrasings), as
    ``<item>.p<k>``; own RNG stream. Chat gets none (``rephrase`` leaves it unchanged)."""
    if cfg.rephrasings_set3 <= 0 or it.split != "train":
        return []
    rng = random.Random(f"{cfg.seed}:rephrase3:{it.id}")
    return _spoken_phrasings(it, cfg.rephrasings_set3, 3, "p", rng, pool, seen)


def _set4_questions(it: Item, cfg: CorpusConfig, pool: Sequence, seen: set[str]) -> list[Utterance]:
    """Up to ``cfg.rephrasings_set4`` more training phrasings of an English training item's question from
    augmentation set 4 (``texts.rephrase(augment=4)``: stray words from other kinds), none in ``seen``, as
    ``<item>.n<k>``; own RNG stream. Mandarin items get none (set 4 is set 3 there)."""
    if cfg.rephrasings_set4 <= 0 or it.split != "train" or it.language != "en":
        return []
    rng = random.Random(f"{cfg.seed}:rephrase4:{it.id}")
    return _spoken_phrasings(it, cfg.rephrasings_set4, 4, "n", rng, pool, seen)


def _set6_questions(it: Item, cfg: CorpusConfig, pool: Sequence, seen: set[str]) -> list[Utterance]:
    """Up to ``cfg.rephrasings_set6`` more training phrasings of a Mandarin training item's question from
    augmentation set 6 (``texts.rephrase(augment=6)``: set 5 with more Mandarin phrasings), none in ``seen``, as
    ``<item>.m<k>``; own RNG stream. English items get none (set 6 is set 5 there)."""
    if cfg.rephrasings_set6 <= 0 or it.split != "train" or it.language != "zh":
        return []
    rng = random.Random(f"{cfg.seed}:rephrase6:{it.id}")
    return _spoken_phrasings(it, cfg.rephrasings_set6, 6, "m", rng, pool, seen)


def _spoken_phrasings(it: Item, n: int, augment: int, tag: str, rng: random.Random, pool: Sequence,
                      seen: set[str]) -> list[Utterance]:
    """Up to ``n`` distinct phrasings of ``it``'s question not in ``seen``, each by one voice of ``pool``, as rows
    ``<item>.<tag><k>`` (split train)."""
    seen, out = set(seen), []
    for _ in range(8 * n):  # bounded: a kind may have fewer phrasings than asked for
        if len(out) == n:
            break
        text = rephrase(it.kind, it.language, it.question, rng, it.style, augment=augment)
        if text in seen:
            continue
        seen.add(text)
        voice = pool[rng.randrange(len(pool))]
        out.append(Utterance(f"{it.id}.{tag}{len(out)}", it.id, it.kind, "question", text, it.language, voice.name,
                             _question_style(rng).key(), "train"))
    return out


def _extra_voice_questions(it: Item, cfg: CorpusConfig) -> list[Utterance]:
    """A training item's own question spoken by ``cfg.extra_voices`` distinct voices of voice set 2; own RNG stream,
    so the rest of the plan is unchanged."""
    if cfg.extra_voices <= 0 or it.split != "train":
        return []
    rng = random.Random(f"{cfg.seed}:voices:{it.id}")
    pool = extra_voices(it.language)
    return [Utterance(f"{it.id}.v{k}", it.id, it.kind, "question", it.question, it.language, voice.name,
                      _question_style(rng).key(), "train")
            for k, voice in enumerate(rng.sample(pool, min(cfg.extra_voices, len(pool))))]


def _target_voice_speech(it: Item, cfg: CorpusConfig) -> list[Utterance]:
    """A training item's question, then other training phrasings of it (distinct), up to
    ``cfg.target_voice_phrasings`` texts, spoken plainly in the item language's target voice as role "speech"; own
    RNG stream, so the rest of the plan is unchanged."""
    if cfg.target_voice_phrasings <= 0 or it.split != "train":
        return []
    rng = random.Random(f"{cfg.seed}:target:{it.id}")
    texts = [it.question]
    for _ in range(8 * cfg.target_voice_phrasings):  # bounded: a kind may have fewer phrasings than asked for
        if len(texts) >= cfg.target_voice_phrasings:
            break
        text = rephrase(it.kind, it.language, it.question, rng, it.style, augment=cfg.augment_set)
        if text not in texts:
            texts.append(text)
    voice = TARGET_VOICES[it.language]
    return [Utterance(f"{it.id}.t{k}", it.id, it.kind, "speech", text, it.language, voice, Style().key(), "train")
            for k, text in enumerate(texts)]


def extra_english_texts(items: Sequence[Item], n: int, seed: int = 0) -> list[str]:
    """Up to ``n`` English sentences that no item (train or held out) has as its answer or as the phrase it quotes:
    WordNet definitions of the next most sense-tagged words after the items' ones, as the definition answers say
    them ("<Word> means <gloss>."), and short fortunes; seeded, about one fortune for every nine definitions."""
    from glm4voice.train.texts import english_phrases, wordnet_definitions

    if n <= 0:
        return []
    said = "\n".join(t for it in items for t in (it.question, it.answer))  # a quoted phrase is inside its item's
    defined = sum(1 for it in items if it.kind == "definition")
    definitions = [t for w, g in wordnet_definitions(defined + n) if (t := f"{w.capitalize()} means {g}.") not in said]
    fortunes = [t for t in english_phrases() if t not in said]
    rng = random.Random(f"{seed}:extra-texts")
    k = min(len(fortunes), n // 10)
    chosen = rng.sample(fortunes, k) + definitions[:n - k]
    rng.shuffle(chosen)
    return chosen


def _target_voice_texts(items: Sequence[Item], cfg: CorpusConfig) -> list[Utterance]:
    """``cfg.target_voice_texts`` extra English sentences (``extra_english_texts``) in the English target voice as
    role "speech" rows; none unless English is among the corpus's languages."""
    if cfg.target_voice_texts <= 0 or "en" not in cfg.languages:
        return []
    return [Utterance(f"extra-en-{k:05d}", f"extra-en-{k:05d}", "extra", "speech", text, "en", TARGET_VOICES["en"],
                      Style().key(), "train")
            for k, text in enumerate(extra_english_texts(items, cfg.target_voice_texts, cfg.seed))]


# --- synthesis (worker side) --------------------------------------------------------------------------------------

def _write_flac(path: str, wav: np.ndarray, rate: int) -> None:
    import soundfile as sf

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".part"
    sf.write(tmp, wav, rate, format="FLAC", subtype=FLAC_SUBTYPE)
    os.replace(tmp, path)


def _synth_task(args: tuple[str, list[Utterance]]) -> list[dict]:
    """Speak one task (same voice); return a manifest row or a failure row per utterance. Never raises."""
    import soxr

    out_dir, utts = args
    try:
        voice = get_voice(utts[0].voice)
        wavs = synthesize_batch([u.text for u in utts], voice, [Style.parse(u.style) for u in utts], sample_rate=None)
    except Exception as e:  # noqa: BLE001 - a worker must report, not die: the row is recorded as failed
        wavs = [TTSFailure(f"{type(e).__name__}: {e}")] * len(utts)
    rows = []
    for u, wav in zip(utts, wavs, strict=True):
        if isinstance(wav, Exception):
            reason = "unspeakable" if isinstance(wav, UnspeakableText) else "tts_failure"
            rows.append({"id": u.id, "failed": reason, "error": str(wav), "voice": u.voice, "text": u.text})
            continue
        try:
            rate = voice.native_rate
            wav16 = wav if rate == TOKENIZER_SAMPLE_RATE else soxr.resample(wav, rate, TOKENIZER_SAMPLE_RATE, "HQ")
            _write_flac(os.path.join(out_dir, u.path), wav16, TOKENIZER_SAMPLE_RATE)
            if u.path_22k:
                wav22 = wav if rate == DECODER_SAMPLE_RATE else soxr.resample(wav, rate, DECODER_SAMPLE_RATE, "HQ")
                _write_flac(os.path.join(out_dir, u.path_22k), wav22, DECODER_SAMPLE_RATE)
        except Exception as e:  # noqa: BLE001
            rows.append({"id": u.id, "failed": "write_failure", "error": f"{type(e).__name__}: {e}", "voice": u.voice,
                         "text": u.text})
            continue
        row = asdict(u) | {"duration": round(len(wav16) / TOKENIZER_SAMPLE_RATE, 4), "path": u.path,
                           "sample_rate": TOKENIZER_SAMPLE_RATE}
        if u.path_22k:
            row["path_22k"] = u.path_22k
        rows.append(row)
    return rows


# --- manifest I/O -------------------------------------------------------------------------------------------------

def read_jsonl(path: str) -> tuple[list[dict], int]:
    """Rows of a jsonl file and the number of unreadable lines (a run killed mid-write tears the last one)."""
    rows, bad = [], 0
    if not os.path.exists(path):
        return rows, 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
    return rows, bad


def write_jsonl_atomic(path: str, rows: Iterable[dict]) -> None:
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


@dataclass
class SynthReport:
    planned: int = 0
    done_before: int = 0
    made: int = 0
    failed: Counter = field(default_factory=Counter)  # reason -> count
    torn_lines: int = 0
    seconds: float = 0.0
    audio_seconds: float = 0.0

    def summary(self) -> str:
        rate = self.made / self.seconds if self.seconds else 0.0
        fails = ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items())) or "none"
        return (f"planned {self.planned}, already done {self.done_before}, made {self.made} "
                f"({self.audio_seconds / 3600:.2f} h audio) in {self.seconds:.1f} s "
                f"= {rate:.1f} utt/s, {self.audio_seconds / max(self.seconds, 1e-9):.1f} audio s/s; "
                f"skipped: {fails}; torn manifest lines dropped: {self.torn_lines}")


def _config_json(cfg: CorpusConfig) -> dict:
    """``cfg`` as corpus.json stores it (tuples as lists)."""
    return asdict(cfg) | {"languages": list(cfg.languages), "kinds": list(cfg.kinds) if cfg.kinds else None}


def _check_meta(out_dir: str, cfg: CorpusConfig) -> dict:
    path = os.path.join(out_dir, META)
    want = {"config": _config_json(cfg)}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        # options added later are absent from older corpus.json files; there they had their default value
        have = _config_json(CorpusConfig()) | (meta.get("config") or {})
        if have != want["config"]:
            raise ConfigError(f"{out_dir} was made with options {have}; asked for {want['config']}. "
                             "Resume with the same options or choose a new --out.")
        return meta
    train = [v for v in VOICES if not v.heldout] + (list(EXTRA_VOICES_2) if cfg.extra_voices else [])
    meta = want | {"voices": {"train": sorted(v.name for v in train),
                              "heldout": sorted(HELDOUT_VOICE_NAMES), "target": TARGET_VOICES},
                   "rates": {"audio16k": TOKENIZER_SAMPLE_RATE, "audio22k": DECODER_SAMPLE_RATE}, "runs": []}
    return meta


def synthesize_corpus(out_dir: str, cfg: CorpusConfig = CorpusConfig(), *, jobs: int = 1,
                      items: Sequence[Item] | None = None, text_cfg: TextConfig | None = None, progress: bool = True,
                      retry_failed: bool = False, limit: int | None = None) -> SynthReport:
    """Make (or continue) the corpus in ``out_dir``. ``limit`` stops after that many new utterances (for tests)."""
    from tqdm import tqdm

    os.makedirs(out_dir, exist_ok=True)
    meta = _check_meta(out_dir, cfg)
    items_path = os.path.join(out_dir, ITEMS)
    if items is None:
        exists = os.path.exists(items_path)
        items = read_items(items_path) if exists else build_items(cfg.seed, text_cfg or TextConfig())
    if not os.path.exists(items_path):
        write_items(items, items_path)
    utts = plan(items, cfg)
    report = SynthReport(planned=len(utts))

    manifest_path, failed_path = os.path.join(out_dir, MANIFEST), os.path.join(out_dir, FAILED)
    done_rows, report.torn_lines = read_jsonl(manifest_path)
    done = {r["id"]: r for r in done_rows if os.path.exists(os.path.join(out_dir, r["path"]))}
    failed_rows, torn_failed = read_jsonl(failed_path)
    skip_failed = {r["id"] for r in failed_rows if r["failed"] == "unspeakable"} if not retry_failed else set()
    if report.torn_lines or torn_failed or len(done) != len(done_rows):
        write_jsonl_atomic(manifest_path, done.values())  # drop torn lines and rows whose audio vanished
        write_jsonl_atomic(failed_path, failed_rows)
    if retry_failed:
        write_jsonl_atomic(failed_path, [])
    report.done_before = len(done)
    todo = [u for u in utts if u.id not in done and u.id not in skip_failed]
    n_skip = sum(1 for u in utts if u.id in skip_failed and u.id not in done)
    if n_skip:
        report.failed["unspeakable"] = n_skip
    if limit is not None:
        todo = todo[:limit]

    by_voice: dict[str, list[Utterance]] = {}
    for u in todo:
        by_voice.setdefault(u.voice, []).append(u)
    tasks = [(out_dir, us[i:i + TASK_SIZE]) for us in by_voice.values() for i in range(0, len(us), TASK_SIZE)]
    tasks.sort(key=lambda t: t[1][0].voice.startswith("festival"), reverse=True)  # slowest first balances the pool

    start = time.perf_counter()
    bar = tqdm(total=len(utts), initial=len(done) + n_skip, unit="utt", disable=not progress,
               desc="synth", dynamic_ncols=True)
    with open(manifest_path, "a", encoding="utf-8") as mf, open(failed_path, "a", encoding="utf-8") as ff:
        for rows in _map(_synth_task, tasks, jobs):
            for r in rows:
                if "failed" in r:
                    report.failed[r["failed"]] += 1
                    ff.write(json.dumps(r, ensure_ascii=False) + "\n")
                    bar.write(f"skipped {r['id']} ({r['voice']}): {r['error']}", file=sys.stderr)
                else:
                    report.made += 1
                    report.audio_seconds += r["duration"]
                    done[r["id"]] = r
                    mf.write(json.dumps(r, ensure_ascii=False) + "\n")
            mf.flush()
            ff.flush()
            bar.update(len(rows))
    bar.close()
    report.seconds = time.perf_counter() - start

    order = {u.id: i for i, u in enumerate(utts)}
    if all(u.id in done or u.id in skip_failed for u in utts) or limit is None:
        # finished (or finished all it could): leave the manifest in plan order, so equal seeds give equal files
        write_jsonl_atomic(manifest_path, sorted(done.values(), key=lambda r: order.get(r["id"], len(order))))
    meta["runs"].append({"made": report.made, "seconds": round(report.seconds, 2), "jobs": jobs,
                         "audio_seconds": round(report.audio_seconds, 2), "failed": dict(report.failed)})
    with open(os.path.join(out_dir, META) + ".part", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
    os.replace(os.path.join(out_dir, META) + ".part", os.path.join(out_dir, META))
    return report


def _map(fn: Callable, tasks: list, jobs: int) -> Iterable:
    if jobs <= 1 or len(tasks) <= 1:
        yield from map(fn, tasks)
        return
    # spawn: workers start clean (no inherited threads or file handles from the caller)
    with mp.get_context("spawn").Pool(jobs) as pool:
        yield from pool.imap_unordered(fn, tasks)


# --- reading a corpus (trainers) ----------------------------------------------------------------------------------

@dataclass
class ManifestCheck:
    rows: list[dict]
    problems: list[tuple[str, str]]  # (row id or line, reason)

    def summary(self) -> str:
        kinds = Counter(reason.split(":")[0] for _, reason in self.problems)
        return f"{len(self.rows)} usable rows, {len(self.problems)} skipped ({dict(kinds) or 'none'})"


def load_manifest(corpus_dir: str, *, split: str | None = None, role: str | tuple[str, ...] | None = None,
                  decode: bool = False) -> ManifestCheck:
    """Rows of the manifest whose audio exists (``decode=True``: and decodes); every other row is reported, not lost.

    Checks: parsable line, required fields, the file at ``path`` (and ``path_22k``) exists, is a readable audio file
    of the stated rate and is not empty.
    """
    import soundfile as sf

    required = ("id", "text", "language", "voice", "style", "duration", "path", "role", "item_id", "split")
    roles = (role,) if isinstance(role, str) else role
    rows, problems = [], []
    path = os.path.join(corpus_dir, MANIFEST)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append((f"line {n}", f"unparsable: {e.msg}"))
                continue
            missing = [k for k in required if k not in r]
            if missing:
                problems.append((r.get("id", f"line {n}"), f"missing fields: {missing}"))
                continue
            if (split and r["split"] != split) or (role and r["role"] not in roles):
                continue
            reason = _check_audio(corpus_dir, r, decode, sf)
            if reason:
                problems.append((r["id"], reason))
            else:
                rows.append(r)
    return ManifestCheck(rows, problems)


def _check_audio(corpus_dir: str, r: dict, decode: bool, sf) -> str | None:
    for key in ("path", "path_22k"):
        if key not in r:
            continue
        p = os.path.join(corpus_dir, r[key])
        if not os.path.exists(p):
            return f"missing file: {p}"
        try:
            info = sf.info(p)
            if info.frames == 0:
                return f"empty audio: {p}"
            if decode:
                wav, _ = sf.read(p, dtype="float32")
                if not np.isfinite(wav).all():
                    return f"non-finite audio: {p}"
        except Exception as e:  # noqa: BLE001 - libsndfile raises several types for corrupt files
            return f"corrupt file: {p} ({type(e).__name__}: {str(e).strip()[:120]})"
    return None


def load_wav(corpus_dir: str, row: dict, *, key: str = "path") -> np.ndarray:
    import soundfile as sf

    wav, _ = sf.read(os.path.join(corpus_dir, row[key]), dtype="float32", always_2d=True)
    return wav.mean(axis=1)


# --- speech-token cache -------------------------------------------------------------------------------------------

Encoder = Callable[[list[np.ndarray]], list[list[int]]]


TOKENS_STAMP = "TOKENIZER.json"  # which tokenizer made a token folder's codes (cache_tokens)


def token_path(corpus_dir: str, utt_id: str, *, tokens_dir: str | None = None) -> str:
    return os.path.join(tokens_dir or os.path.join(corpus_dir, "tokens"), f"{utt_id}.npy")


def tokenizer_fingerprint(folder: str | os.PathLike) -> dict:
    """What identifies a tokenizer folder's codes: its path, a SHA-256 over its config and weight files
    (``sha256``), and one over the files that make the codes (``codes_sha256``: all but the ASR branch,
    ``asr_*``, which reads the codes and can be refitted without changing them, session 22)."""
    import hashlib

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    if not files:
        raise FileNotFoundError(f"{folder}: no config.json or weight files to fingerprint")
    h, codes = hashlib.sha256(), hashlib.sha256()
    for p in files:
        parts = (h,) if p.name.startswith("asr_") else (h, codes)
        for x in parts:
            x.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                for x in parts:
                    x.update(block)
    return {"tokenizer": str(folder.resolve()), "sha256": h.hexdigest(), "codes_sha256": codes.hexdigest()}


def same_codes(stamp: dict, source: dict) -> bool:
    """Whether a token folder's stamp and a tokenizer's fingerprint mean the same codes: ``codes_sha256`` when both
    have it, else (stamps written before it) the whole ``sha256``."""
    if "codes_sha256" in stamp and "codes_sha256" in source:
        return stamp["codes_sha256"] == source["codes_sha256"]
    return stamp.get("sha256") == source.get("sha256")


def _check_stamp(tokens_dir: str, source: dict | None, overwrite: bool) -> None:
    """Refuse to add one tokenizer's codes to a folder of another's (their codes mean different things); write the
    stamp when the folder is new, or rewritten with ``overwrite``."""
    stamp = os.path.join(tokens_dir, TOKENS_STAMP)
    if source is None:
        return
    if os.path.exists(stamp):
        try:
            old = json.loads(Path(stamp).read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"{stamp}: unreadable ({e}); remove it if the folder's codes are known") from None
        if not same_codes(old, source):
            if not overwrite:
                raise ValueError(f"{tokens_dir} holds codes of another tokenizer ({old.get('tokenizer')}); write "
                                 "these to another folder (--out) or replace them all (--overwrite)")
            for name in os.listdir(tokens_dir):  # none of the other tokenizer's codes may stay under the new stamp
                if name.endswith(".npy"):
                    os.remove(os.path.join(tokens_dir, name))
    elif any(n.endswith(".npy") for n in os.listdir(tokens_dir)) and not overwrite:
        print(f"cache_tokens: {tokens_dir} has codes from before tokenizer stamps; their tokenizer cannot be "
              "checked (no stamp written)", file=sys.stderr)
        return
    Path(stamp).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")


def cache_tokens(corpus_dir: str, encode: Encoder, *, batch_size: int = 32, progress: bool = True,
                 overwrite: bool = False, tokens_dir: str | None = None, limit: int | None = None, seed: int = 0,
                 source: dict | None = None, by_length: bool = True) -> dict[str, int]:
    """Encode every usable 16 kHz utterance with ``encode(list_of_wavs_16k) -> list[list[int]]`` into
    ``tokens_dir``/<id>.npy (default: the corpus's tokens/).

    ``by_length`` batches utterances of similar duration (longest first, so a batch too large for memory fails at
    once): an encoder pads a batch to its longest member, and in manifest order corpus_v6's batches of 32 carry
    67 % padding (105 h encoded for 63 h of audio). Padding can change float rounding, so a code on a knife edge
    may differ from one encoded in another batch, as with any batching.

    Resumable (existing files are kept unless ``overwrite``); bad rows are counted and listed on stderr. ``limit``
    encodes a seeded sample of that many rows. ``source`` (``tokenizer_fingerprint``) is stamped on the folder, and
    a folder stamped by another tokenizer is refused. Returns counts: encoded, cached_before, bad_rows, empty_codes.
    """
    from tqdm import tqdm

    check = load_manifest(corpus_dir)
    for rid, reason in check.problems:
        print(f"cache_tokens: skipped {rid}: {reason}", file=sys.stderr)
    tokens_dir = tokens_dir or os.path.join(corpus_dir, "tokens")
    os.makedirs(tokens_dir, exist_ok=True)
    _check_stamp(tokens_dir, source, overwrite)
    rows = check.rows
    if limit is not None and limit < len(rows):
        rows = [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), limit))]
    todo = [r for r in rows if overwrite or not os.path.exists(token_path(corpus_dir, r["id"], tokens_dir=tokens_dir))]
    if by_length:
        todo.sort(key=lambda r: -float(r["duration"]))  # load_manifest checked every row has one
    counts = Counter(cached_before=len(rows) - len(todo), bad_rows=len(check.problems))
    for i in tqdm(range(0, len(todo), batch_size), disable=not progress, desc="tokens", unit="batch"):
        batch = todo[i:i + batch_size]
        codes = encode([load_wav(corpus_dir, r) for r in batch])
        if len(codes) != len(batch):
            raise ValueError(f"encode returned {len(codes)} code lists for {len(batch)} wavs")
        for r, c in zip(batch, codes, strict=True):
            if len(c) == 0:
                counts["empty_codes"] += 1
                print(f"cache_tokens: {r['id']}: the encoder returned no codes", file=sys.stderr)
            path = token_path(corpus_dir, r["id"], tokens_dir=tokens_dir)
            tmp = path + ".part.npy"
            np.save(tmp, np.asarray(c, dtype=np.int32))
            os.replace(tmp, path)
            counts["encoded"] += 1
    return dict(counts)


def load_tokens(corpus_dir: str, utt_id: str) -> np.ndarray:
    return np.load(token_path(corpus_dir, utt_id), allow_pickle=False)


# --- statistics ---------------------------------------------------------------------------------------------------

def corpus_stats(corpus_dir: str) -> dict:
    rows, torn = read_jsonl(os.path.join(corpus_dir, MANIFEST))
    failed, _ = read_jsonl(os.path.join(corpus_dir, FAILED))
    size = 0
    for sub in ("audio16k", "audio22k"):
        for root, _, files in os.walk(os.path.join(corpus_dir, sub)):
            size += sum(os.path.getsize(os.path.join(root, f)) for f in files)

    def hours(select: Callable[[dict], bool]) -> float:
        return round(sum(r["duration"] for r in rows if select(r)) / 3600, 3)

    # "kind" is the item's kind; rows made without items (a speaker-variety corpus) may not have one
    by = {key: Counter(r.get(key, "-") for r in rows) for key in ("role", "split", "language", "kind", "voice")}
    return {
        "utterances": len(rows), "hours": hours(lambda r: True),
        "hours_by_role": {k: hours(lambda r, k=k: r["role"] == k) for k in by["role"]},
        "hours_by_split": {k: hours(lambda r, k=k: r["split"] == k) for k in by["split"]},
        "counts": {k: dict(sorted(v.items())) for k, v in by.items()},
        "failed": dict(Counter(r["failed"] for r in failed)), "torn_lines": torn,
        "audio_bytes": size,
        "heldout_voices_in_train": sorted({r["voice"] for r in rows if r["split"] == "train"} & HELDOUT_VOICE_NAMES),
    }


def question_answer_pairs(corpus_dir: str, *, split: str | None = None) -> list[tuple[dict, dict]]:
    """(question row, answer row) per spoken question whose item has an answer row: the SFT dialogues.

    ``split`` filters on the question row (a held-out voice makes a question held out; its answer is shared).
    Bad rows are left out (see ``load_manifest``); questions whose answer is missing are left out too.
    """
    check = load_manifest(corpus_dir)
    answers = {r["item_id"]: r for r in check.rows if r["role"] == "answer"}
    return [(q, answers[q["item_id"]]) for q in check.rows
            if q["role"] == "question" and q["item_id"] in answers and (split is None or q["split"] == split)]
