"""A reading corpus: the training voices reading many sentences the dialogue corpus never says (LM ASR/TTS data).

Why: the dialogue corpus (``glm4voice data synth``) speaks about 11,800 distinct texts, each by several voices and
phrasings. Trained on its ASR documents, the embedded LM transcribes *training* utterances almost perfectly
(text loss 0.22 per token) and held-out ones badly (2.99): with so few sentences it learns to recognise which known
sentence was said instead of reading the words (docs/model_card.md, session 24). Here the corpus's own training voices
read sentences that are new to it, each sentence spoken once:

- English: the example sentences of WordNet (``wordnet-base``: the quoted examples of its glosses, about 28,600 of
  5-16 words), then the one-sentence fortunes the corpus does not use;
- Mandarin: the 4-16 Hanzi clauses of ``fortunes-zh`` the corpus does not use (about 30,000);
- with ``--source glosses``, English only: WordNet's definitions (about 82,000 clauses of 5-16 words), row ids
  ``read-en-g…``, so they can join a folder made from the examples (``cp -al`` it first, as for reading_v2).

A sentence the corpus's items contain (any question or answer holding it) is left out, so the reading corpus adds
no utterance of a sentence a held-out question asks about. Sentences are dealt round-robin over the language's
training voices (the corpus's ``corpus.json``), in a seeded order. ``--heldout-en/--heldout-zh`` add rows of split
``heldout``: other new sentences read by the corpus's held-out voices, which measure reading (``scripts/
lm_kind_loss.py --corpus`` on this folder) and are never trained on.

``--voices target`` reads every sentence (held-out ones too) in the corpus's answer voice of its language instead
(``corpus.json``'s target voices; row ids ``read-en-t…``, held out ``read-en-th…``): text-to-speech data in the
voice the LM speaks, for ``train lm --extra-corpus DIR:tts`` (the LM's spoken answers lose words on sentences the
corpus never says, docs/model_history.md, session 34). Like every reading folder it holds 16 kHz audio only.

    glm4voice data reading --corpus data/corpus_v6 --out data/reading_v1 --en 12000 --zh 8000 --jobs 2
    glm4voice data tokens data/reading_v1
    glm4voice train lm --corpus data/corpus_v6 --extra-corpus data/reading_v1 ...

The folder has the corpus layout (``manifest.jsonl`` rows of role ``reading``, split ``train``, ``audio16k/<id>.wav``)
that ``data tokens`` caches and ``train lm --extra-corpus`` reads (its utterances join the asr, tts and speech pools).
A second run with the same arguments resumes.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from glm4voice.errors import ConfigError
from glm4voice.train import texts as tx
from glm4voice.train.variety import VarietyReport, speak_corpus
from glm4voice.train.voices import Voice, get_voice

ROLE = "reading"
_QUOTED = re.compile(r'"([^"]+)"')
_BAD_CHARS = set('()[]{}<>|_*#@\\/:;=~^`"')


def _wordnet_gloss_texts(root: str) -> Iterator[str]:
    """The gloss (definitions and quoted examples, after ``|``) of every synset line of WordNet's data files."""
    for name in ("data.noun", "data.verb", "data.adj", "data.adv"):
        path = os.path.join(root, name)
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.startswith("  ") and "|" in line:  # not the licence header; a synset line has a gloss
                    yield line.split("|", 1)[1]


def _as_sentence(text: str, lengths: tuple[int, int]) -> str | None:
    """``text`` capitalised and ending in a full stop (unless it ends in ! or ?), or None unless it is plain ASCII
    without brackets and the like, of ``lengths`` words."""
    if not text or not text.isascii() or _BAD_CHARS & set(text) or not lengths[0] <= len(text.split()) <= lengths[1]:
        return None
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def wordnet_examples(root: str = tx.WORDNET_DIR, lengths: tuple[int, int] = (5, 16)) -> list[str]:
    """WordNet's example sentences (the quoted parts of its glosses) of ``lengths`` words, plain ASCII, as sentences
    (capitalised, ending in a full stop unless they end in ! or ?), deduplicated and sorted."""
    found = (_as_sentence(" ".join(q.split()).strip(" ,;"), lengths)
             for gloss in _wordnet_gloss_texts(root) for q in _QUOTED.findall(gloss))
    return sorted({s for s in found if s})


def wordnet_glosses(root: str = tx.WORDNET_DIR, lengths: tuple[int, int] = (5, 16)) -> list[str]:
    """WordNet's definitions as sentences: every ``;``-separated clause of a gloss that is not a quoted example, of
    ``lengths`` words, plain ASCII, capitalised and ending in a full stop; deduplicated and sorted (about 82,000)."""
    found = (_as_sentence(" ".join(part.split()).strip(" ,"), lengths)
             for gloss in _wordnet_gloss_texts(root) for part in gloss.split(";") if '"' not in part)
    return sorted({s for s in found if s})


# where the sentences come from (`data reading --source`), and the tag of their row ids (read-en-g000001)
SOURCES = {"examples": "", "glosses": "g"}


def candidate_sentences(language: str, source: str = "examples") -> list[str]:
    """``examples``: English WordNet example sentences and unused fortunes, Mandarin fortunes-zh clauses;
    ``glosses``: English WordNet definitions (``wordnet_glosses``)."""
    if source not in SOURCES:
        raise ConfigError(f"unknown reading source {source!r}; known: {', '.join(SOURCES)}")
    if source == "glosses":
        if language != "en":
            raise ConfigError(f"the glosses source has English sentences only, not {language!r} (ask --zh 0)")
        return wordnet_glosses()
    if language == "en":
        return wordnet_examples() + tx.english_phrases()
    if language == "zh":
        return tx.chinese_phrases()
    raise ConfigError(f"no reading sentences for language {language!r} (en, zh)")


_CLAUSE_END = re.compile(r"[.!?。！？:：]\s*")


def sentence_key(text: str) -> str:
    return " ".join(text.split()).strip(" .!?。！？").lower()


def corpus_sentences(corpus_dir: str | os.PathLike) -> set[str]:
    """Keys (``sentence_key``) of every clause of every question and answer of the corpus's items and manifest: a
    candidate whose key is among them is said somewhere in the corpus (whole, or after a template's colon)."""
    keys = set()
    for name in ("items.jsonl", "manifest.jsonl"):
        path = Path(corpus_dir) / name
        if not path.exists():
            continue
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                for k in ("question", "answer", "text"):
                    text = str(r.get(k, ""))
                    keys.add(sentence_key(text))
                    keys.update(sentence_key(c) for c in _CLAUSE_END.split(text))
    keys.discard("")
    return keys


def _corpus_voice_names(corpus_dir: str | os.PathLike) -> tuple[Path, dict]:
    """The path of the corpus's ``corpus.json`` and its ``voices`` entry (split or ``target`` -> names)."""
    path = Path(corpus_dir) / "corpus.json"
    if not path.exists():
        raise ConfigError(f"{path} is missing: --corpus must be a folder made by `glm4voice data synth`")
    return path, json.loads(path.read_text()).get("voices", {})


def corpus_voices(corpus_dir: str | os.PathLike, language: str, split: str = "train") -> list[Voice]:
    """The corpus's voices of ``split`` (``train`` or ``heldout``, from its ``corpus.json``) speaking ``language``."""
    names = _corpus_voice_names(corpus_dir)[1].get(split, [])
    voices = []
    for name in names:
        try:
            v = get_voice(name)
        except (KeyError, ValueError):
            continue
        if v.language == language:
            voices.append(v)
    return voices


def corpus_target_voice(corpus_dir: str | os.PathLike, language: str) -> Voice:
    """The corpus's answer (target) voice of ``language``, from its ``corpus.json``."""
    path, names = _corpus_voice_names(corpus_dir)
    name = names.get("target", {}).get(language)
    if not name:
        raise ConfigError(f"{path} names no target (answer) voice of language {language!r}")
    try:
        return get_voice(name)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{path}: the target voice {name!r} of {language!r} is not installed here ({e})") from None


# whose voices read (`data reading --voices`), and the tag their row ids carry (read-en-t000001)
VOICE_SETS = {"train": "", "target": "t"}


def plan(corpus_dir: str | os.PathLike, counts: dict[str, int], *, heldout: dict[str, int] | None = None,
         seed: int = 0, source: str = "examples", voice_set: str = "train",
         sentences: Callable[[str], list[str]] | None = None,
         voices: Callable[[str, str], Sequence[Voice]] | None = None) -> list[tuple[Voice, str, str, str]]:
    """(voice, row id, text, split) for ``counts[language]`` new sentences per language dealt round-robin over the
    corpus's training voices of that language (split ``train``), and ``heldout[language]`` further ones, none of them
    among the training ones, over its held-out voices (split ``heldout``: reading of new sentences by new voices, to
    measure). Deterministic from ``seed`` and the installed text sources; a larger count keeps the rows of a
    smaller one. ``source`` picks the sentences (``SOURCES``; its tag starts the row ids' number, so several sources
    can fill one folder); ``voice_set`` ``target`` reads every row (held-out ones too) in the corpus's answer voice
    of its language instead of the training / held-out voices (ids tagged ``t``: ``VOICE_SETS``);
    ``sentences(language)`` and ``voices(language, split)`` override them (tests)."""
    if source not in SOURCES:
        raise ConfigError(f"unknown reading source {source!r}; known: {', '.join(SOURCES)}")
    if voice_set not in VOICE_SETS:
        raise ConfigError(f"unknown reading voice set {voice_set!r}; known: {', '.join(VOICE_SETS)}")
    said = corpus_sentences(corpus_dir)
    if source == "glosses":  # also what a corpus answer "<word> means <gloss>." says after "means"
        said |= {k.split(" means ", 1)[1] for k in said if " means " in k}
    sentences = sentences or (lambda lang: candidate_sentences(lang, source))
    heldout = heldout or {}
    out = []
    for lang in dict.fromkeys([*counts, *heldout]):
        n, m = counts.get(lang, 0), heldout.get(lang, 0)
        if n < 0 or m < 0:
            raise ConfigError(f"sentence counts for {lang} must be >= 0, not {n} and {m}")
        if n + m == 0:
            continue
        pool = [s for s in sentences(lang)
                if sentence_key(s) not in said and not any(sentence_key(c) in said for c in _CLAUSE_END.split(s))]
        random.Random(f"{seed}:reading:{lang}").shuffle(pool)
        if len(pool) < n + m:
            raise ConfigError(f"only {len(pool)} new {lang} sentences are available, {n + m} asked")
        for split, texts in (("train", pool[:n]), ("heldout", pool[len(pool) - m:] if m else [])):
            if not texts:
                continue
            if voice_set == "target":
                vs = list(voices(lang, "target") if voices else [corpus_target_voice(corpus_dir, lang)])
            else:
                vs = list(voices(lang, split) if voices else corpus_voices(corpus_dir, lang, split))
            if not vs:
                raise ConfigError(f"{corpus_dir} has no {split} voice of language {lang!r}")
            tag = VOICE_SETS[voice_set] + SOURCES[source] + ("" if split == "train" else "h")
            out += [(vs[i % len(vs)], f"read-{lang}-{tag}{i:06d}", text, split) for i, text in enumerate(texts)]
    return out


def build(out_dir: str | os.PathLike, corpus_dir: str | os.PathLike, counts: dict[str, int], *,
          heldout: dict[str, int] | None = None, seed: int = 0, jobs: int = 1, progress: bool = True,
          synth: Callable | None = None, **plan_kw) -> VarietyReport:
    """Speak the reading corpus into ``out_dir`` (resumable). ``plan_kw``: ``plan``'s ``source`` and ``voice_set``
    (and, for tests, ``sentences`` and ``voices``); ``synth`` is for tests."""
    rows = plan(corpus_dir, counts, heldout=heldout, seed=seed, **plan_kw)
    return speak_corpus(out_dir, rows, role=ROLE, synth=synth, progress=progress, jobs=jobs, desc="reading")
