"""Text normalisation, error rates and the answer-matching rule of the QA suites (documented in docs/eval.md).

Normalisation (both sides of every comparison go through ``normalize``):
1. Unicode NFKC, lower case; curly quotes/apostrophes become ASCII; "'s" stays part of its word.
2. Numbers become digits: English number words ("twenty-one", "one hundred and five", "a hundred") and Chinese
   numerals ("二十一", "一百零五", "两") are rewritten as Arabic digits; "1,000" loses its comma. So "7", "seven"
   and "七" all read "7".
3. Punctuation and symbols (Unicode categories P* and S*) become spaces; whitespace is collapsed.
4. Chinese (and any text with CJK characters) is compared by characters: the units are single characters with
   spaces removed; other text by words.

Error rate: ``error_rate(ref, hyp, language)`` is WER over words for English, CER over characters for Chinese,
both after normalisation, computed by jiwer.

Answer matching (``answer_correct``):
- With a ``key`` (the short fact an answer must contain: the result of a sum, the name of a capital), the answer
  is right when the normalised key occurs in the normalised hypothesis as a whole run of units (words; for Chinese
  characters), e.g. key "7" matches "3 plus 4 is seven." but not "3 plus 4 is 17".
- Without a key, the answer is right when its error rate against the expected answer is at most ``MAX_ERROR``
  (0.25) AND every number of the expected answer appears in the hypothesis (as many times): a near-verbatim answer
  (all our items have exact answers) that cannot get a number wrong.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

MAX_ERROR = 0.25  # highest WER/CER against the expected answer still counted as the same answer (no key)

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " "})

# --- English number words -> digits --------------------------------------------------------------------------------
_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                     "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_NUMBER_WORDS = set(_UNITS) | set(_TENS) | set(_SCALES)


def _parse_en_number(words: list[str]) -> int | None:
    """Value of one well-formed run of number words ("one hundred five" -> 105), None if it is several numbers."""
    total, current, last = 0, 0, None
    for w in words:
        if w in _UNITS:
            v = _UNITS[w]
            if last == "unit" or (last == "tens" and not 1 <= v <= 9) or (v == 0 and len(words) > 1):
                return None
            current, last = current + v, "unit"
        elif w in _TENS:
            if last in ("unit", "tens"):
                return None
            current, last = current + _TENS[w], "tens"
        elif w == "hundred":
            if last != "unit" or current >= 100:
                return None
            current, last = current * 100, "hundred"
        else:  # thousand, million
            if last not in ("unit", "tens", "hundred") or (total and total < _SCALES[w] * 1000 and last == "scale"):
                return None
            total, current, last = total + current * _SCALES[w], 0, "scale"
    return total + current


_NUM_WORD = r"(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|" \
            r"sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|" \
            r"thousand|million)"
# a run of number words; "a" only before hundred/thousand, "and" only after hundred/thousand/million
_NUM_RUN = re.compile(rf"\b(?:a(?=[\s-]+(?:hundred|thousand)\b)|{_NUM_WORD})"
                      rf"(?:(?:(?:(?<=hundred)|(?<=thousand)|(?<=million))[\s-]+and)?[\s-]+{_NUM_WORD})*\b")


def _english_numbers(text: str) -> str:
    """Rewrite runs of English number words as digits ("twenty-one" -> "21", "three four" -> "3 4")."""
    def repl(m: re.Match) -> str:
        words = ["one" if w == "a" else w for w in re.split(r"[\s-]+", m.group(0)) if w != "and"]
        return " ".join(_parse_single_runs(words))

    return _NUM_RUN.sub(repl, text)


def _parse_single_runs(words: list[str]) -> list[str]:
    """Greedy longest well-formed numbers from the left: "three four" -> ["3", "4"]."""
    out, start = [], 0
    while start < len(words):
        end = len(words)
        while end > start + 1 and _parse_en_number(words[start:end]) is None:
            end -= 1
        value = _parse_en_number(words[start:end])
        out.append(str(value) if value is not None else words[start])
        start = end
    return out


# --- Chinese numerals -> digits -----------------------------------------------------------------------------------
_ZH_DIGIT = {c: i for i, c in enumerate("零一二三四五六七八九")} | {"两": 2, "〇": 0}
_ZH_UNIT = {"十": 10, "百": 100, "千": 1000}
_ZH_NUM = re.compile(r"[零〇一二两三四五六七八九十百千万]+")


def _parse_zh_number(s: str) -> int | None:
    total, section, digit = 0, 0, None
    for c in s:
        if c in "零〇":
            continue  # a place holder inside a number (一百零五)
        if c in _ZH_DIGIT:
            if digit is not None:
                return None  # "一二" is a digit string, handled by the caller
            digit = _ZH_DIGIT[c]
        elif c in _ZH_UNIT:
            section += (1 if digit is None else digit) * _ZH_UNIT[c]
            digit = None
        else:  # 万
            total = (total + section + (digit or 0)) * 10_000
            section, digit = 0, None
    return total + section + (digit or 0)


def _chinese_numbers(text: str) -> str:
    def repl(m: re.Match) -> str:
        s = m.group(0)
        if all(c in _ZH_DIGIT for c in s):  # a digit string (years, phone numbers): digit by digit
            return "".join(str(_ZH_DIGIT[c]) for c in s)
        value = _parse_zh_number(s)
        return s if value is None else str(value)

    return _ZH_NUM.sub(repl, text)


# --- normalisation ------------------------------------------------------------------------------------------------
def is_chinese(text: str) -> bool:
    return bool(_CJK.search(text))


def normalize(text: str, language: str | None = None) -> str:
    """Normalised text (see the module doc). ``language`` "zh" (or CJK in the text) compares by characters."""
    t = unicodedata.normalize("NFKC", text).translate(_QUOTES).lower()
    t = re.sub(r"(?<=\d),(?=\d{3}\b)", "", t)
    t = "".join(" " if unicodedata.category(c)[0] in "PS" and c != "'" else c for c in t)
    t = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", t)  # quote marks, not apostrophes inside words
    if language == "zh" or is_chinese(t):
        t = _chinese_numbers(t)
    t = _english_numbers(t)
    return " ".join(t.split())


def units(text: str, language: str | None = None) -> list[str]:
    """Comparison units of normalised text: characters for Chinese, words otherwise."""
    n = normalize(text, language)
    if language == "zh" or is_chinese(n):
        return [c for c in n if not c.isspace()]
    return n.split()


def error_rate(ref: str, hyp: str, language: str | None = None) -> float:
    """WER (English) or CER (Chinese) of ``hyp`` against ``ref`` after normalisation; 0 when both are empty."""
    import jiwer

    r, h = units(ref, language), units(hyp, language)
    if not r:
        return 0.0 if not h else 1.0
    if not h:
        return 1.0
    return float(jiwer.wer(" ".join(r), " ".join(h)))


def corpus_error_rate(refs: list[str], hyps: list[str], languages: list[str]) -> float:
    """Error rate over a set: total edit operations / total reference units (the usual corpus-level WER/CER)."""
    import jiwer

    errors = total = 0
    for ref, hyp, lang in zip(refs, hyps, languages, strict=True):
        r, h = units(ref, lang), units(hyp, lang)
        total += len(r)
        if not r or not h:
            errors += max(len(r), len(h))
            continue
        out = jiwer.process_words(" ".join(r), " ".join(h))
        errors += out.substitutions + out.deletions + out.insertions
    return errors / total if total else 0.0


_VOWEL_GROUP = re.compile(r"[aeiouy]+")


def syllables(text: str, language: str | None = None) -> int:
    """Syllables spoken in ``text``: one per character in Chinese; in English an estimate per word (vowel groups,
    a silent final "e" dropped, at least one per word; a number counts one per digit). Used for speaking rate,
    where it varies less between sentences than a word count does."""
    if language == "zh" or is_chinese(text):
        return len(units(text, "zh"))
    total = 0
    for w in normalize(text, language).split():
        if w.isdigit():
            total += len(w)
            continue
        n = len(_VOWEL_GROUP.findall(w))
        if w.endswith("e") and not w.endswith(("le", "ee", "ye")) and n > 1:
            n -= 1
        total += max(1, n)
    return total


def numbers(text: str, language: str | None = None) -> Counter:
    """The numbers of ``text`` after normalisation (digits), with multiplicity."""
    return Counter(re.findall(r"\d+", normalize(text, language)))


def _contains_run(hay: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(hay[i:i + n] == needle for i in range(len(hay) - n + 1))


def answer_correct(hyp: str, expected: str, language: str | None = None, key: str | None = None,
                   max_error: float = MAX_ERROR) -> bool:
    """The documented matching rule (module doc): key containment if a key is given, else near-verbatim."""
    if key:
        return _contains_run(units(hyp, language), units(key, language))
    if numbers(expected, language) - numbers(hyp, language):
        return False
    return error_rate(expected, hyp, language) <= max_error


# --- keys of the corpus's templated answers -------------------------------------------------------------------------
def answer_key(kind: str, answer: str, language: str) -> str | None:
    """The fact an answer of our corpus must contain (train/texts.py formats), or None for free-form kinds.

    arithmetic: the result ("3 plus 4 is 7." -> "7"; "三加四等于七。" -> "七"); capital: the capital's name.
    """
    if kind == "arithmetic":
        m = re.search(r"(?:is|等于)\s*([^\s.。]+)[.。]?$", answer.strip())
        return m.group(1) if m else None
    if kind == "capital":
        m = re.search(r" is (.+?)\.?$", answer.strip())
        return m.group(1) if m else None
    return None
