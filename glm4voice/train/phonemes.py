"""Phoneme transcripts for the tokenizer's auxiliary CTC target (``glm4voice train tokenizer --phone-weight``).

English spelling is a hard CTC target for a small encoder trained from scratch ("do yu no what five timsris" for
"Do you know what 5 times 0 is?", docs/model_card.md); phonemes say what was spoken. espeak-ng, already the
corpus's main TTS engine, writes them: ``espeak-ng -q -x --sep=" "`` prints its phoneme mnemonics separated by
spaces, words by double spaces, and clauses on separate lines. English uses ``en-us`` (the flite and Festival
voices differ in detail, not in the phonemes of a word); Mandarin uses ``cmn-latn-pinyin``, the voice that spoke
the corpus's Mandarin, whose vowels carry the tone ("i.35"). Stress marks are dropped; each vowel keeps its tone.

Transcripts are cached per corpus in ``phonemes.jsonl`` ({"language", "text", "phones"}), so a resumed run
does not call espeak-ng again and keeps exactly the same targets.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from glm4voice.errors import ConfigError

log = logging.getLogger("glm4voice.train.phonemes")

# en / zh: the corpus's languages; the others: the speaker-variety rows (voices.VARIETY_VOICES), each in its own
# language's espeak-ng voice (their symbols join the run's inventory when it is made).
VOICES = {"en": "en-us", "zh": "cmn-latn-pinyin", "it": "it", "fi": "fi", "cs": "cs", "ru": "ru", "ca": "ca"}
CACHE_FILE = "phonemes.jsonl"
_DROP = {"_|", "_", "|", "||", "_:", "_!"}  # pause and boundary marks


def phonemize(text: str, language: str) -> list[str]:
    """espeak-ng's phonemes of ``text`` (stress marks dropped; a word boundary is the symbol " ")."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ConfigError("phoneme targets need espeak-ng (apt-get install -y espeak-ng)")
    voice = VOICES.get(language)
    if voice is None:
        raise ConfigError(f"no phoneme voice for language {language!r} (known: {sorted(VOICES)})")
    if not text.strip():
        return []
    out = subprocess.run([exe, "-q", "-x", "--sep= ", "-v", voice, text], capture_output=True, text=True,
                         timeout=60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"espeak-ng failed on {text!r}: {out.stderr.strip()[:200]}")
    return parse(out.stdout)


def parse(espeak_output: str) -> list[str]:
    """espeak-ng ``-x --sep=" "`` output -> phoneme symbols, with " " between words (never doubled or at the ends)."""
    phones: list[str] = []
    for line in espeak_output.splitlines():
        for word in line.split("  "):
            symbols = [s.replace("'", "").replace(",", "") for s in word.split()]
            symbols = [s for s in symbols if s and s not in _DROP]
            if symbols:
                if phones:
                    phones.append(" ")
                phones.extend(symbols)
    return phones


def cached_phonemes(corpus_dir: str | os.PathLike, pairs: Iterable[tuple[str, str]], *, jobs: int = 2
                    ) -> dict[tuple[str, str], list[str]]:
    """Phonemes of every (language, text) pair, read from and added to the corpus's ``phonemes.jsonl``."""
    path = Path(corpus_dir) / CACHE_FILE
    known: dict[tuple[str, str], list[str]] = {}
    if path.is_file():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                row = json.loads(line)
                known[(row["language"], row["text"])] = list(row["phones"])
            except (ValueError, KeyError, TypeError):
                log.warning("%s:%d: unreadable line skipped", path, n)  # a torn last line from a killed run
    todo = sorted({p for p in pairs if p not in known})
    if todo:
        from tqdm import tqdm

        log.info("phonemizing %d transcripts with espeak-ng", len(todo))
        with ThreadPoolExecutor(max(1, jobs)) as pool, path.open("a", encoding="utf-8") as f:
            for (lang, text), phones in tqdm(zip(todo, pool.map(lambda p: phonemize(p[1], p[0]), todo), strict=True),
                                             total=len(todo), desc="phonemes", disable=len(todo) < 200):
                known[(lang, text)] = phones
                f.write(json.dumps({"language": lang, "text": text, "phones": phones}, ensure_ascii=False) + "\n")
    return known


def inventory(sequences: Iterable[list[str]]) -> list[str]:
    """The sorted set of symbols in ``sequences`` (label i of the phoneme head is ``inventory[i]``)."""
    return sorted({s for seq in sequences for s in seq})


def encode(phones: list[str], symbols: dict[str, int]) -> list[int]:
    """Phoneme symbols -> labels; symbols outside the inventory (held-out text only) are dropped."""
    return [symbols[s] for s in phones if s in symbols]
