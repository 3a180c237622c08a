"""Text items, voice catalogue and corpus plan: pure logic, no TTS engine needed."""

import random
import re

import pytest

from glm4voice.errors import ConfigError
from glm4voice.train import texts, voices
from glm4voice.train.corpus import ANSWER_STYLES, CorpusConfig, plan
from glm4voice.train.tts import Style, UnspeakableText, prepare_text
from glm4voice.train.voices import HELDOUT_VOICE_NAMES, TARGET_VOICES, VOICES, get_voice


@pytest.fixture(scope="module")
def items():
    return texts.build_items(0)


def test_items_are_deterministic_and_seed_dependent(items):
    assert items == texts.build_items(0)
    other = texts.build_items(1)
    assert [it.question for it in other] != [it.question for it in items]
    assert len({it.id for it in items}) == len(items)


def test_every_kind_and_both_languages_present(items):
    kinds = {(it.kind, it.language) for it in items}
    for kind in texts.KINDS:
        assert (kind, "en") in kinds, kind
    for kind in ("arithmetic", "chat", "greeting", "repeat", "what_said", "style"):
        assert (kind, "zh") in kinds, kind


def test_heldout_phrasings_use_only_heldout_templates(items):
    heldout_templates = {(k, lang, t[0]) for k, lang, table in _tables() for t in table if t[2]}
    for it in items:
        if it.kind in ("chat", "greeting"):
            continue
        key = (it.kind, it.language, it.template)
        assert (key in heldout_templates) == (it.split == "heldout"), it
    # every held-out templated item asks a fact that training also asks (same answer, other words)
    train_answers = {(it.kind, it.language, it.answer) for it in items if it.split == "train"}
    for it in items:
        if it.split == "heldout" and it.kind not in ("greeting",):
            assert (it.kind, it.language, it.answer) in train_answers, it
    assert sum(it.split == "heldout" for it in items) > 300


def _tables():
    yield "arithmetic", "en", texts.ARITH_EN
    yield "arithmetic", "zh", texts.ARITH_ZH
    yield "capital", "en", texts.CAPITAL_EN
    yield "repeat", "en", texts.REPEAT_EN
    yield "repeat", "zh", texts.REPEAT_ZH
    yield "what_said", "en", texts.WHAT_SAID_EN
    yield "what_said", "zh", texts.WHAT_SAID_ZH
    yield "definition", "en", texts.DEFINITION_EN
    for lang, table in (("en", texts.STYLE_EN), ("zh", texts.STYLE_ZH)):
        for t in table.values():
            yield "style", lang, t


def test_arithmetic_answers_are_exact(items):
    ops = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
    n = 0
    for it in items:
        if it.kind == "arithmetic" and it.language == "en":
            a, op, b, c = re.fullmatch(r"(\d+) (plus|minus|times) (\d+) is (\d+)\.", it.answer).groups()
            assert ops[op](int(a), int(b)) == int(c)
            assert f"{a} {op} {b}" in it.question
            n += 1
    assert n > 500


def test_zh_numbers():
    assert [texts.zh_number(n) for n in (0, 7, 10, 13, 20, 45, 100, 105, 110, 120)] == [
        "零", "七", "十", "十三", "二十", "四十五", "一百", "一百零五", "一百一十", "一百二十"]
    zh = [it for it in texts.build_items(0) if it.kind == "arithmetic" and it.language == "zh"]
    assert any(it.answer == "九加四等于十三。" for it in zh)


def test_capitals_parsed():
    facts = dict((f["country"], a) for f, a in texts.capital_facts())
    assert facts["France"] == "The capital of France is Paris."
    assert "Antarctica" not in facts  # no capital in the source: skipped
    assert all("(" not in c for c in facts)


def test_style_items_carry_their_style(items):
    styles = {it.style for it in items if it.kind == "style"}
    assert styles == {"fast", "slow", "high", "low"}
    assert all(it.style == "normal" for it in items if it.kind != "style")
    assert set(ANSWER_STYLES) >= styles


def test_voice_catalogue():
    names = [v.name for v in VOICES]
    assert len(names) == len(set(names))
    assert HELDOUT_VOICE_NAMES and not HELDOUT_VOICE_NAMES & set(TARGET_VOICES.values())
    for lang in ("en", "zh"):
        assert any(v.heldout and v.language == lang for v in VOICES)
    # Mandarin is spoken from Hanzi by cmn-latn-pinyin or yue, never by espeak's `cmn`/`zh` (reads tone digits)
    assert all(v.engine_voice.split("+")[0] in ("cmn-latn-pinyin", "yue") for v in VOICES if v.language == "zh")
    assert get_voice("espeak:en-us+f1").native_rate == 22_050
    with pytest.raises(ValueError, match="unknown voice"):
        get_voice("piper:amy")


def test_plan_never_trains_on_heldout_voices(items):
    cfg = CorpusConfig(seed=3, question_voices=2, heldout_voice_fraction=0.2)
    utts = plan(items, cfg)
    assert utts == plan(items, cfg)
    used = {u.voice for u in utts}
    assert HELDOUT_VOICE_NAMES <= used  # every held-out voice is exercised for evaluation...
    assert not {u.voice for u in utts if u.split == "train"} & HELDOUT_VOICE_NAMES  # ...and never in training
    answers = [u for u in utts if u.role == "answer"]
    assert len(answers) == len(items)
    assert all(u.voice == TARGET_VOICES[u.language] for u in answers)
    heldout_items = {it.id for it in items if it.split == "heldout"}
    assert all(u.split == "heldout" for u in utts if u.item_id in heldout_items)


def test_plan_subset_is_stable(items):
    small = plan(items, CorpusConfig(seed=0, num_items=50))
    assert len({u.item_id for u in small}) == 50
    full = {u.id: u for u in plan(items, CorpusConfig(seed=0))}
    assert all(full[u.id] == u for u in small)  # per-item draws: a subset plans exactly like the full corpus


def test_spoken_rephrasings_add_other_training_phrasings_only(items):
    base = plan(items, CorpusConfig(seed=0, question_voices=2))
    more = plan(items, CorpusConfig(seed=0, question_voices=2, spoken_rephrasings=2))
    ids = {u.id for u in base}
    assert [u for u in more if u.id in ids] == base  # the rest of the plan does not move
    extra = [u for u in more if u.id not in ids]
    by_id = {it.id: it for it in items}
    heldout_questions = {it.question for it in items if it.split == "heldout"}
    per_item: dict[str, list] = {}
    for u in extra:
        it = by_id[u.item_id]
        assert it.split == "train" and u.split == "train" and u.role == "question"
        assert u.voice not in HELDOUT_VOICE_NAMES and get_voice(u.voice).language == it.language
        assert u.text != it.question and u.text not in heldout_questions
        per_item.setdefault(u.item_id, []).append(u)
    assert all(len({u.text for u in us}) == len(us) <= 2 for us in per_item.values())  # distinct, at most 2
    kinds = {by_id[i].kind for i in per_item}
    assert {"arithmetic", "capital", "repeat", "style"} <= kinds and "chat" not in kinds
    assert not any(by_id[i].split == "heldout" for i in per_item)
    assert sum(len(us) == 2 for us in per_item.values()) > 0.9 * len(per_item)
    with pytest.raises(ConfigError, match="spoken_rephrasings"):
        CorpusConfig(spoken_rephrasings=-1)


def test_prepare_text_refuses_what_a_voice_cannot_speak():
    en, zh = get_voice("espeak:en-us"), get_voice("espeak:cmn-latn-pinyin")
    assert prepare_text("Caf\u00e9 \u201cnoir\u201d", en) == 'Cafe "noir"'
    for text, voice, why in (("你好", en, "cannot speak"), ("", en, "empty"), ("hello", zh, "Latin"),
                             ("123", zh, "no Chinese"), ("...", en, "nothing to speak"), ("a" * 700, en, "longer")):
        with pytest.raises(UnspeakableText, match=why):
            prepare_text(text, voice)


def test_style_key_round_trip():
    s = Style(rate=1.4, pitch=-4)
    assert Style.parse(s.key()) == s
    assert Style().neutral and not s.neutral


def test_rephrase_keeps_the_request_and_never_uses_a_heldout_phrasing(items):
    heldout_questions = {it.question for it in items if it.split == "heldout"}
    rng = random.Random(0)
    seen: dict[str, set] = {}
    for it in items:
        if it.split != "train" or it.kind == "chat":
            continue
        for _ in range(3):
            q = texts.rephrase(it.kind, it.language, it.question, rng, it.style)
            assert q not in heldout_questions, (it, q)
            seen.setdefault(it.kind, set()).add(q != it.question)
            if it.kind == "arithmetic" and it.language == "en":  # the numbers and the operation survive
                expr = re.search(r"\d+ (plus|minus|times) \d+", it.question).group(0)
                assert expr in q, (it.question, q)
            if it.kind == "capital":
                assert it.answer[len("The capital of "):].split(" is ")[0] in q
    assert all(True in changed for changed in seen.values()), seen  # every templated kind gets re-worded
    # held-out and unknown questions come back unchanged
    for it in items:
        if it.split == "heldout":
            assert texts.rephrase(it.kind, it.language, it.question, rng, it.style) == it.question
    assert texts.rephrase("chat", "en", "Who made you?", rng) == "Who made you?"


def test_augmentation_phrasings_are_not_heldout_templates():
    for (key, lang), extra in texts.AUGMENT_TEMPLATES.items():
        kind, _, style = key.partition("-")
        table = texts.question_templates(kind, lang, style or "normal")
        assert table, key
        held = {t for _, t, h in table if h}
        assert not held & set(extra), key
        fields = set(re.findall(r"\{(\w+)\}", table[0][1]))
        for t in extra:  # same slots as the corpus templates, so a parsed question always re-formats
            assert set(re.findall(r"\{(\w+)\}", t)) == fields, t


def test_older_corpus_json_without_new_options_resumes(tmp_path):
    """A corpus made before ``spoken_rephrasings`` existed has no such key; it resumes with the default only."""
    import json
    from dataclasses import asdict

    from glm4voice.train import corpus

    old = asdict(CorpusConfig(seed=2, question_voices=3))
    old.pop("spoken_rephrasings")
    old.pop("augment_set")
    old.pop("extra_voices")
    old.pop("questions")
    old.pop("target_voice_phrasings")
    old.pop("target_voice_texts")
    old.pop("rephrasings_set3")
    old.pop("rephrasings_set4")
    old.pop("rephrasings_set6")
    old |= {"languages": ["en", "zh"], "kinds": None}
    (tmp_path / corpus.META).write_text(json.dumps({"config": old, "runs": []}))
    meta = corpus._check_meta(str(tmp_path), CorpusConfig(seed=2, question_voices=3))
    assert meta["config"] == old
    with pytest.raises(ConfigError, match="spoken_rephrasings"):
        corpus._check_meta(str(tmp_path), CorpusConfig(seed=2, question_voices=3, spoken_rephrasings=1))
    with pytest.raises(ConfigError, match="augment_set"):
        corpus._check_meta(str(tmp_path), CorpusConfig(seed=2, question_voices=3, augment_set=2))
    with pytest.raises(ConfigError, match="target_voice_phrasings"):
        corpus._check_meta(str(tmp_path), CorpusConfig(seed=2, question_voices=3, target_voice_phrasings=1))
    with pytest.raises(ConfigError, match="rephrasings_set3"):
        corpus._check_meta(str(tmp_path), CorpusConfig(seed=2, question_voices=3, rephrasings_set3=1))


def _pairs(text: str) -> set[tuple[str, str]]:
    """Adjacent word pairs (English, lower-cased) or character pairs (Chinese) of a phrasing's fixed words; slots
    and punctuation break a pair."""
    out = set()
    for seg in re.split(r"\{\w+\}", text):
        for run in re.findall(r"[a-z']+(?: [a-z']+)*|[\u4e00-\u9fff]+", seg.lower()):
            units = run.split(" ") if run[0].isascii() else list(run)
            out.update(zip(units, units[1:], strict=False))
    return out


def test_augmentation_set_2_avoids_word_pairs_only_a_heldout_phrasing_uses():
    assert ("work", "out") in _pairs("Could you work out {expr} for me?")  # the helper sees what it should
    checked = 0
    for (key, lang), extra in texts.AUGMENT_TEMPLATES_2.items():
        kind, _, style = key.partition("-")
        table = texts.question_templates(kind, lang, style or "normal")
        held_only = set().union(*(_pairs(t) for _, t, h in table if h)) - set().union(*(_pairs(t) for _, t, h in table
                                                                                        if not h))
        assert held_only, key
        fields = set(re.findall(r"\{(\w+)\}", table[0][1]))
        for t in extra:
            assert not _pairs(t) & held_only, (key, t, _pairs(t) & held_only)
            assert set(re.findall(r"\{(\w+)\}", t)) == fields, t
            assert t not in texts.AUGMENT_TEMPLATES.get((key, lang), ()), t  # new, not a repeat of set 1
            checked += 1
    for lang, table in (("en", texts.GREETINGS_EN), ("zh", texts.GREETINGS_ZH)):
        for intent, phrasings, _ in table:
            held_only = _pairs(phrasings[-1]) - set().union(*map(_pairs, phrasings[:-1]))
            for t in texts.GREETING_AUGMENT_2.get((lang, intent), ()):
                assert not _pairs(t) & held_only and t not in phrasings, (intent, t)
                checked += 1
    known = {(lang, intent) for lang, table in (("en", texts.GREETINGS_EN), ("zh", texts.GREETINGS_ZH))
             for intent, _, _ in table}
    assert set(texts.GREETING_AUGMENT_2) <= known
    assert checked > 150


def test_augmentation_set_2_widens_rephrasings_and_set_1_draws_stay(items):
    train = [it for it in items if it.split == "train" and it.kind != "chat"]
    heldout_questions = {it.question for it in items if it.split == "heldout"}
    one, two = set(), set()
    for it in train[::7]:
        r1, r_default, r2 = random.Random(it.id), random.Random(it.id), random.Random(it.id)
        q1 = texts.rephrase(it.kind, it.language, it.question, r1, it.style, augment=1)
        assert q1 == texts.rephrase(it.kind, it.language, it.question, r_default, it.style)  # default: set 1
        q2 = texts.rephrase(it.kind, it.language, it.question, r2, it.style, augment=2)
        assert q2 not in heldout_questions
        if it.kind == "arithmetic" and it.language == "en":
            assert re.search(r"\d+ (plus|minus|times) \d+", it.question).group(0) in q2
        one.add((it.kind, q1))
        two.add((it.kind, q2))
    kinds_with_new = {k for k, q in two - one}
    assert {"arithmetic", "capital", "greeting", "repeat", "definition", "style"} <= kinds_with_new, kinds_with_new
    with pytest.raises(ValueError, match="augmentation set"):
        texts.rephrase("capital", "en", train[0].question, random.Random(0), augment=max(texts.AUGMENT_SETS) + 1)


def _words(text: str) -> set[str]:
    """Words (English, lower-cased) or characters (Chinese) of a text."""
    return set(re.findall(r"[a-z']+", text.lower())) | set(re.findall(r"[\u4e00-\u9fff]", text))


def test_augmentation_set_3_uses_no_word_only_a_heldout_phrasing_uses():
    checked = 0
    for (key, lang), extra in texts.AUGMENT_TEMPLATES_3.items():
        kind, _, style = key.partition("-")
        table = texts.question_templates(kind, lang, style or "normal")
        held = [t for _, t, h in table if h]
        held_only = set().union(*(_words(re.sub(r"\{\w+\}", " ", t)) for t in held)) - set().union(
            *(_words(re.sub(r"\{\w+\}", " ", t)) for _, t, h in table if not h))
        assert held_only == texts.heldout_only_units(kind, lang, style or "normal"), key
        fields = set(re.findall(r"\{(\w+)\}", table[0][1]))
        earlier = {t for _, t, _ in table} | set(texts.AUGMENT_TEMPLATES.get((key, lang), ())) | set(
            texts.AUGMENT_TEMPLATES_2.get((key, lang), ()))
        for t in extra:
            assert not _words(re.sub(r"\{\w+\}", " ", t)) & held_only, (key, t)
            assert set(re.findall(r"\{(\w+)\}", t)) == fields, t
            assert t not in earlier, t
            checked += 1
    for lang, table in (("en", texts.GREETINGS_EN), ("zh", texts.GREETINGS_ZH)):
        for intent, phrasings, _ in table:
            held_only = texts.heldout_only_units("greeting", lang, intent=intent)
            assert held_only, (lang, intent)  # every held-out greeting has a word of its own
            earlier = set(phrasings) | set(texts.GREETING_AUGMENT_2.get((lang, intent), ()))
            for t in texts.GREETING_AUGMENT_3.get((lang, intent), ()):
                assert not _words(t) & held_only and t not in earlier, (intent, t)
                checked += 1
    assert checked > 150
    with pytest.raises(ValueError, match="greeting intent"):
        texts.heldout_only_units("greeting", "en", intent="no_such_intent")


def test_augmentation_set_3_fillers_keep_the_slot_and_avoid_heldout_words(items):
    train = [it for it in items if it.split == "train" and it.kind not in ("chat", "greeting")]
    heldout_questions = {it.question for it in items if it.split == "heldout"}
    prefixed = suffixed = 0
    for it in train[::3]:
        rng = random.Random(it.id)
        for _ in range(3):
            q = texts.rephrase(it.kind, it.language, it.question, rng, it.style, augment=3)
            assert q not in heldout_questions
            # the request's own content survives: the sum, the country, the word, the quoted phrase
            m = next(rx.fullmatch(it.question) for rx in texts._rephrasings(it.kind, it.language, it.style, 1)[0]
                     if rx.fullmatch(it.question))
            rest = q
            for value in m.groupdict().values():
                assert value in q, (it.question, q)
                rest = re.sub(r"(?<![A-Za-z])" + re.escape(value) + r"(?![A-Za-z])", " ", rest)  # not "mean"ing
            banned = texts.heldout_only_units(it.kind, it.language, it.style)
            prefixes, suffixes = texts._fillers(it.kind, it.language, it.style)
            filler_words = set().union(set(), *map(_words, prefixes + suffixes))
            assert not filler_words & banned
            pool = texts._rephrasings(it.kind, it.language, it.style, 3)[1]
            pool_words = set().union(*(_words(re.sub(r"\{\w+\}", " ", t)) for t in pool))
            assert _words(rest) - pool_words <= filler_words, q  # what is new around the phrasing is a filler
            prefixed += any(q.startswith(f) for f in texts.FILLERS[it.language][0])
            suffixed += any(f + q[-1] in q for f in texts.FILLERS[it.language][1])
    assert prefixed > 50 and suffixed > 20, (prefixed, suffixed)
    # the same draws again from the same seed (runs resume with the same batches)
    it = train[0]
    assert [texts.rephrase(it.kind, it.language, it.question, random.Random(5), it.style, augment=3)
            for _ in range(2)] == [texts.rephrase(it.kind, it.language, it.question, random.Random(5), it.style,
                                                  augment=3) for _ in range(2)]


def test_augmentation_set_3_reaches_new_greeting_phrasings():
    rng = random.Random(0)
    got = {texts.rephrase("greeting", "en", "Good night.", rng, augment=3) for _ in range(200)}
    assert set(texts.GREETING_AUGMENT_3[("en", "good_night")]) <= got
    assert "Have a good night." not in got  # the held-out phrasing stays unseen
    assert {texts.rephrase("greeting", "en", "Good night.", rng, augment=2) for _ in range(200)}.isdisjoint(
        texts.GREETING_AUGMENT_3[("en", "good_night")])


def _rephrased_pairs(items, lo: int, hi: int, step: int):
    """(item, its augmentation-set ``lo`` and ``hi`` rephrasings from one seed) for every ``step``-th templated or
    greeting training question, seeds 0 and 1."""
    train = [it for it in items if it.split == "train" and it.kind != "chat"]
    for it in train[::step]:
        for seed in range(2):
            yield it, *(texts.rephrase(it.kind, it.language, it.question, random.Random(seed), it.style, augment=a)
                        for a in (lo, hi))


def test_augmentation_set_4_adds_stray_words_from_other_kinds_only(items):
    heldout_questions = {it.question for it in items if it.split == "heldout"}
    noisy = checked = 0
    for it, q3, q4 in _rephrased_pairs(items, 3, 4, 4):
        checked += 1
        if it.language == "zh":
            assert q4 == q3  # English only
            continue
        assert q4 not in heldout_questions
        # set 4 is set 3's phrasing with at most two words put between its words
        w3, w4 = q3.split(" "), q4.split(" ")
        extra, j = [], 0
        for w in w4:
            if j < len(w3) and w == w3[j]:
                j += 1
            else:
                extra.append(w)
        assert j == len(w3) and len(extra) <= 2, (q3, q4)
        if not extra:
            continue
        noisy += 1
        assert w4[0] == w3[0], q4  # never before the first word
        vocab = texts.noise_words(it.kind)
        banned = (set().union(*(texts.heldout_only_units("greeting", "en", intent=i)
                                for i, _, _ in texts.GREETINGS_EN)) if it.kind == "greeting" else
                  texts.heldout_only_units(it.kind, "en", it.style))
        for w in extra:
            assert w in vocab and w not in banned and w not in {"one", "two", "plus", "minus", "times"}, (q4, w)
        if it.kind in ("repeat", "what_said", "style"):  # the phrase to say stays whole, nothing beside it
            phrase = next(rx.fullmatch(it.question) for rx in
                          texts._rephrasings(it.kind, "en", it.style, 1)[0] if rx.fullmatch(it.question))[1]
            assert phrase in q4
            k = q4.index(phrase)
            before, after = q4[:k].split(" ")[-2:-1], q4[k + len(phrase):].split(" ")[1:2]
            assert not set(before + after) & set(extra) - set(q3.split(" ")), (q3, q4)
    assert checked > 1000 and 0.2 < noisy / checked < 0.45, (noisy, checked)


def test_augmentation_set_5_adds_stray_characters_to_mandarin_questions(items):
    heldout_questions = {it.question for it in items if it.split == "heldout"}
    noisy = checked = 0
    for it, q4, q5 in _rephrased_pairs(items, 4, 5, 3):
        if it.language == "en":
            assert q5 == q4  # set 4's English draws are kept
            continue
        checked += 1
        assert q5 not in heldout_questions
        # q5 is set 3's (= set 4's, in Mandarin) phrasing with at most two chunks of 1-2 characters put in
        extra, j, run = [], 0, ""
        for ch in q5:
            if j < len(q4) and ch == q4[j]:
                j += 1
                if run:
                    extra.append(run)
                    run = ""
            else:
                run += ch
        assert j == len(q4) and not run and len(extra) <= 2 and all(len(e) <= 4 for e in extra), (q4, q5)
        if not extra:
            continue
        noisy += 1
        assert q5[0] == q4[0], q5  # never before the first character
        vocab = set(texts.noise_words(it.kind, "zh"))
        banned = (set().union(*(texts.heldout_only_units("greeting", "zh", intent=i)
                                for i, _, _ in texts.GREETINGS_ZH)) if it.kind == "greeting" else
                  texts.heldout_only_units(it.kind, "zh", it.style))
        for e in extra:  # two chunks put side by side read as one run
            assert e in vocab or any(e[:k] in vocab and e[k:] in vocab for k in range(1, len(e))), (q5, e)
            assert not set(e) & (banned | set("一二三四五六七八九十加减乘")), (q5, e)
        if it.kind in ("repeat", "what_said", "style"):  # the phrase to say stays whole, nothing beside it
            phrase = next(rx.fullmatch(it.question) for rx in
                          texts._rephrasings(it.kind, "zh", it.style, 1)[0] if rx.fullmatch(it.question))[1]
            k = q5.index(phrase)
            k4 = q4.index(phrase)
            assert q5[k - 1:k] == q4[k4 - 1:k4] and q5[k + len(phrase):][:1] == q4[k4 + len(phrase):][:1], (q4, q5)
    assert checked > 300 and 0.15 < noisy / checked < 0.5, (noisy, checked)  # some frames have no gap


def test_augmentation_set_6_adds_mandarin_phrasings_under_set_3s_rule(items):
    checked = 0
    for (key, lang), extra in texts.AUGMENT_TEMPLATES_6.items():
        kind, _, style = key.partition("-")
        assert lang == "zh", key
        held_only = texts.heldout_only_units(kind, lang, style or "normal")
        fields = set(re.findall(r"\{(\w+)\}", texts.question_templates(kind, lang, style or "normal")[0][1]))
        earlier = set(texts._rephrasings(kind, lang, style or "normal", 3)[1]) | {
            t for _, t, _ in texts.question_templates(kind, lang, style or "normal")}
        for t in extra:
            assert not texts._units(t) & held_only, (key, t)
            assert set(re.findall(r"\{(\w+)\}", t)) == fields and t not in earlier, t
            checked += 1
    owner: dict[str, str] = {}  # a phrasing belongs to one greeting intent only
    for intent, phrasings, _ in texts.GREETINGS_ZH:
        for t in texts._greeting_phrasings("zh", phrasings, intent, 6):
            assert owner.setdefault(t, intent) == intent, t
        for t in texts.GREETING_AUGMENT_6.get(("zh", intent), ()):
            assert not texts._units(t) & texts.heldout_only_units("greeting", "zh", intent=intent), (intent, t)
            assert t not in texts._greeting_phrasings("zh", phrasings, intent, 5)
            checked += 1
    assert checked > 90
    # English draws are set 5's; Mandarin ones reach the new phrasings and never a held-out question
    heldout_questions = {it.question for it in items if it.split == "heldout"}
    new = 0
    for it, q5, q6 in _rephrased_pairs(items, 5, 6, 3):
        if it.language == "en":
            assert q6 == q5
        else:
            assert q6 not in heldout_questions
            new += q6 != q5
    assert new > 100
    # set 6's stray characters come from its phrasings too, and a kind never gets its own new characters
    assert "朗" in texts.noise_words("arithmetic", "zh", 6) and "朗" not in texts.noise_words("arithmetic", "zh", 5)
    assert not set("朗读念") & set("".join(texts.noise_words("repeat", "zh", 6)))
    assert texts.noise_words("capital", "en", 6) == texts.noise_words("capital", "en", 5)


def test_mandarin_noise_words_keep_the_heldout_frames_unseen():
    for kind in ("arithmetic", "repeat", "what_said", "style", "greeting"):
        vocab = texts.noise_words(kind, "zh")
        chars = set("".join(vocab))
        own = set().union(*(texts._units(t) for t in texts._phrasings_by_kind("zh", False)[kind]))
        assert len(vocab) > 50 and not chars & own and not chars & set("一二三四五六七八九十加减乘"), kind
        assert {len(v) for v in vocab} == {1, 2}
    # "请你复述一遍" is held out for repeat: its new characters never become a repeat question's stray characters
    assert not set("你述") & set("".join(texts.noise_words("repeat", "zh")))
    assert "你" in texts.noise_words("chat", "zh")  # a kind with no such frame may carry it
    with pytest.raises(ValueError, match="language"):
        texts.noise_words("repeat", "fr")


def test_noise_words_never_carry_a_kind_own_or_heldout_word():
    every = texts._phrasings_by_kind("en", False)
    for kind in every:
        vocab = set(texts.noise_words(kind))
        own = set().union(*(_words(re.sub(r"\{\w+\}", " ", t)) for t in every[kind]))
        assert len(vocab) > 50 and not vocab & own, kind
        assert not vocab & {"one", "three", "ten", "i"}
    assert "capital" in texts.noise_words("definition") and "capital" not in texts.noise_words("capital")
    assert "explain" not in set().union(*map(texts.noise_words, every))  # a word only held-out phrasings use
    with pytest.raises(ValueError, match="kind"):
        texts.noise_words("no_such_kind")


def test_plan_with_augmentation_set_2(items):
    base = plan(items, CorpusConfig(seed=0))
    more = plan(items, CorpusConfig(seed=0, spoken_rephrasings=8, augment_set=2))
    ids = {u.id for u in base}
    assert [u for u in more if u.id in ids] == base
    extra = [u for u in more if u.id not in ids]
    heldout_questions = {it.question for it in items if it.split == "heldout"}
    assert not any(u.text in heldout_questions for u in extra)
    per_item: dict[str, set] = {}
    for u in extra:
        per_item.setdefault(u.item_id, set()).add(u.text)
    assert max(map(len, per_item.values())) == 8
    greeting = [t for i, ts in per_item.items() if i.startswith("greeting-en") for t in ts]
    assert set(greeting) & {t for ts in texts.GREETING_AUGMENT_2.values() for t in ts}
    with pytest.raises(ConfigError, match="augment_set"):
        CorpusConfig(augment_set=max(texts.AUGMENT_SETS) + 1)


def test_plan_with_set3_rephrasings_completes_an_older_plan(items):
    base = plan(items, CorpusConfig(seed=0, spoken_rephrasings=8, augment_set=2))
    more = plan(items, CorpusConfig(seed=0, spoken_rephrasings=8, augment_set=2, rephrasings_set3=3))
    ids = {u.id for u in base}
    assert [u for u in more if u.id in ids] == base  # the older rows are unchanged: a corpus completes in place
    extra = [u for u in more if u.id not in ids]
    assert extra and all(re.search(r"\.p[0-2]$", u.id) and u.split == "train" and u.role == "question"
                         for u in extra)
    heldout_questions = {it.question for it in items if it.split == "heldout"}
    assert not any(u.text in heldout_questions for u in extra)
    train_voices = {v.name for lang in ("en", "zh") for v in voices.train_voices(lang)}
    assert {u.voice for u in extra} <= train_voices
    by_item: dict[str, list] = {}
    for u in base:
        if u.role == "question":
            by_item.setdefault(u.item_id, []).append(u.text)
    per_item: dict[str, list] = {}
    for u in extra:
        per_item.setdefault(u.item_id, []).append(u.text)
    for item_id, texts_ in per_item.items():
        assert len(set(texts_)) == len(texts_) <= 3
        assert not set(texts_) & set(by_item[item_id]), item_id  # new phrasings only
    kinds = {u.kind for u in extra}
    assert {"arithmetic", "capital", "definition", "greeting"} <= kinds and "chat" not in kinds
    set3 = {t for ts in texts.AUGMENT_TEMPLATES_3.values() for t in ts}
    assert sum(any(texts._template_regex(t).fullmatch(u.text) for t in set3) for u in extra) > len(extra) // 10
    assert plan(items, CorpusConfig(seed=0, spoken_rephrasings=8, augment_set=2, rephrasings_set3=3)) == more
    with pytest.raises(ConfigError, match="rephrasings_set3"):
        CorpusConfig(rephrasings_set3=-1)


def _added_question_rows(items, base, more, tag: str, lang: str, k: int) -> list:
    """The rows ``more`` adds to ``base``, checked: ``base`` is unchanged (a corpus completes in place), and every
    added row is a training question ``<item>.<tag><j>`` (j < k) in ``lang`` by a training voice, never a held-out
    question, at most ``k`` distinct texts per item, none an earlier question text of its item."""
    ids = {u.id for u in base}
    assert [u for u in more if u.id in ids] == base
    extra = [u for u in more if u.id not in ids]
    assert extra and all(re.search(rf"\.{tag}[0-{k - 1}]$", u.id) and u.split == "train" and u.role == "question"
                         and u.language == lang for u in extra)
    assert {u.voice for u in extra} <= {v.name for v in voices.train_voices(lang)}
    heldout_questions = {it.question for it in items if it.split == "heldout"}
    assert not any(u.text in heldout_questions for u in extra)
    earlier: dict[str, set] = {}
    for u in base:
        if u.role == "question":
            earlier.setdefault(u.item_id, set()).add(u.text)
    per_item: dict[str, list] = {}
    for u in extra:
        per_item.setdefault(u.item_id, []).append(u.text)
    for item_id, texts_ in per_item.items():
        assert len(set(texts_)) == len(texts_) <= k and not set(texts_) & earlier[item_id], item_id
    return extra


def test_plan_with_set4_rephrasings_adds_english_rows_after_set3(items):
    cfg = dict(seed=0, spoken_rephrasings=8, augment_set=2, rephrasings_set3=4)
    base = plan(items, CorpusConfig(**cfg))
    more = plan(items, CorpusConfig(**cfg, rephrasings_set4=3))
    extra = _added_question_rows(items, base, more, "n", "en", 3)  # corpus_v7's rows unchanged
    # some carry a stray word: a word that no phrasing of the kind has, from the kind's noise words
    by_kind = texts._phrasings_by_kind("en", False)
    noisy = 0
    for u in extra:
        own = set().union(*(_words(re.sub(r"\{\w+\}", " ", t)) for t in by_kind[u.kind]))
        item = next(it for it in items if it.id == u.item_id)
        rest = u.text
        if u.kind != "greeting":  # the slot's value (a country, a word, a phrase) is not a stray word
            m = next(rx.fullmatch(item.question) for rx in texts._rephrasings(u.kind, "en", item.style, 1)[0]
                     if rx.fullmatch(item.question))
            for value in m.groupdict().values():
                rest = re.sub(r"(?<![A-Za-z])" + re.escape(value) + r"(?![A-Za-z])", " ", rest)
        stray = _words(rest) - own - set().union(
            *map(_words, texts.FILLERS["en"][0] + texts.FILLERS["en"][1]))
        assert stray <= set(texts.noise_words(u.kind)), (u.text, stray)
        noisy += bool(stray)
    assert 0.15 * len(extra) < noisy < 0.6 * len(extra), (noisy, len(extra))
    assert plan(items, CorpusConfig(**cfg, rephrasings_set4=3)) == more
    with pytest.raises(ConfigError, match="rephrasings_set4"):
        CorpusConfig(rephrasings_set4=-1)


def test_plan_with_set6_rephrasings_adds_mandarin_rows_after_set4(items):
    cfg = dict(seed=0, spoken_rephrasings=8, augment_set=2, rephrasings_set3=4, rephrasings_set4=4)
    base = plan(items, CorpusConfig(**cfg))
    more = plan(items, CorpusConfig(**cfg, rephrasings_set6=3))
    extra = _added_question_rows(items, base, more, "m", "zh", 3)  # corpus_v8's rows unchanged
    set6 = [t for ts in texts.AUGMENT_TEMPLATES_6.values() for t in ts]
    frames = [re.sub(r"\{\w+\}", "", t).strip("，。？：") for t in set6]
    assert sum(any(f and f in u.text for f in frames) for u in extra) > 0.2 * len(extra)
    assert plan(items, CorpusConfig(**cfg, rephrasings_set6=3)) == more
    with pytest.raises(ConfigError, match="rephrasings_set6"):
        CorpusConfig(rephrasings_set6=-1)


def test_extra_voices_add_new_training_speakers_only(items):
    from glm4voice.train.voices import EXTRA_VOICES_2, extra_voices

    held_variants = {v.engine_voice.partition("+")[2] for v in VOICES if v.heldout} - {"f3"}  # f3: en-us+f3 trains
    for v in EXTRA_VOICES_2:
        assert not v.heldout and v.name not in HELDOUT_VOICE_NAMES and get_voice(v.name) == v
        assert v.engine_voice.partition("+")[2] not in held_variants and "-x-rp" not in v.engine_voice, v
    base = plan(items, CorpusConfig(seed=0))
    more = plan(items, CorpusConfig(seed=0, extra_voices=3))
    ids = {u.id for u in base}
    assert [u for u in more if u.id in ids] == base
    extra = [u for u in more if u.id not in ids]
    by_id = {it.id: it for it in items}
    per_item: dict[str, list] = {}
    for u in extra:
        it = by_id[u.item_id]
        assert it.split == "train" and u.split == "train" and u.text == it.question and u.id.split(".")[-1][0] == "v"
        assert u.voice in {v.name for v in extra_voices(it.language)}
        per_item.setdefault(u.item_id, []).append(u.voice)
    assert all(len(set(vs)) == len(vs) == 3 for vs in per_item.values())
    assert len(per_item) == sum(it.split == "train" for it in items)
    assert len({u.voice for u in extra}) == len(EXTRA_VOICES_2)  # every new speaker is used
    with pytest.raises(ConfigError, match="extra_voices"):
        CorpusConfig(extra_voices=-1)


def test_target_voice_phrasings_add_plain_training_speech_for_the_decoder(items):
    base = plan(items, CorpusConfig(seed=0))
    more = plan(items, CorpusConfig(seed=0, target_voice_phrasings=3, augment_set=2))
    ids = {u.id for u in base}
    assert [u for u in more if u.id in ids] == base  # the rest of the plan is unchanged
    speech = [u for u in more if u.id not in ids]
    by_id = {it.id: it for it in items}
    per_item: dict[str, list[str]] = {}
    for u in speech:
        it = by_id[u.item_id]
        assert it.split == "train" and u.split == "train" and u.role == "speech"
        assert u.voice == TARGET_VOICES[it.language] and Style.parse(u.style).neutral
        assert u.path_22k and u.path_22k.startswith("audio22k/")
        per_item.setdefault(u.item_id, []).append(u.text)
    assert len(per_item) == sum(it.split == "train" for it in items)
    for item_id, said in per_item.items():
        assert said[0] == by_id[item_id].question and len(set(said)) == len(said) <= 3
    assert sum(len(t) == 3 for t in per_item.values()) > len(per_item) // 2  # most kinds have other phrasings

    only = plan(items, CorpusConfig(seed=0, target_voice_phrasings=3, augment_set=2, questions=False, answers=False))
    assert only == speech
    with pytest.raises(ConfigError, match="target_voice_phrasings"):
        CorpusConfig(target_voice_phrasings=-1)


def test_target_voice_texts_are_sentences_no_item_says(items):
    from glm4voice.train.corpus import extra_english_texts

    base = plan(items, CorpusConfig(seed=0))
    more = plan(items, CorpusConfig(seed=0, target_voice_texts=300))
    ids = {u.id for u in base}
    assert [u for u in more if u.id in ids] == base  # the rest of the plan is unchanged
    extra = [u for u in more if u.id not in ids]
    assert len(extra) == 300 and len({u.text for u in extra}) == 300
    assert all(u.role == "speech" and u.kind == "extra" and u.split == "train" and u.language == "en"
               and u.voice == TARGET_VOICES["en"] and Style.parse(u.style).neutral and u.path_22k for u in extra)
    said = {it.answer for it in items} | {it.question for it in items}
    assert not any(u.text in said or any(u.text in q for q in said) for u in extra)  # nothing held out leaks in
    definitions = [u for u in extra if " means " in u.text]
    assert 0 < len(extra) - len(definitions) <= 30 and len(definitions) >= 270  # mostly definitions, some fortunes
    defined = {it.answer.split(" means ")[0] for it in items if it.kind == "definition"}
    assert not defined & {u.text.split(" means ")[0] for u in definitions}
    assert [u.text for u in extra] == extra_english_texts(items, 300, 0) != extra_english_texts(items, 300, 1)
    assert plan(items, CorpusConfig(seed=0, target_voice_texts=300, languages=("zh",))) == \
        plan(items, CorpusConfig(seed=0, languages=("zh",)))  # English only
    with pytest.raises(ConfigError, match="target_voice_texts"):
        CorpusConfig(target_voice_texts=-1)
