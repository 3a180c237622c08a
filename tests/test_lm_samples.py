"""LM training samples: the streaming-thoughts layout, loss masks, the text/speech-loss copies, pre-training formats,
data loading from a corpus folder, the mixture and deterministic packing.

Also holds the toy tokenizer and corpus the other LM training tests import (``from test_lm_samples import ...``).
"""

import difflib
import json
import os
import random
from collections import Counter

import numpy as np
import pytest

from glm4voice.errors import ConfigError, TokenError
from glm4voice.lm.prompt import SYSTEM_PROMPT_AUDIO, SYSTEM_PROMPT_TEXT
from glm4voice.train import bpe
from glm4voice.train import lm_samples as ls

CODEBOOK = 64
SENTENCES = [
    "What is two plus three?", "Five.", "What is the capital of France?", "Paris.", "Hello! How can I help you?",
    "Say this faster: the cat sat on the mat.", "the cat sat on the mat.", "Say this slowly: a dog ran home.",
    "a dog ran home.", "你好！有什么可以帮你的？", "二加三等于几？", "五。", "Repeat after me: good morning.",
    "Transcribe the speech:", "Speak the text: ", "streaming_transcription\n",
    "User will provide you with a speech instruction. Do it step by step.",
]


# ---- toy tokenizer and corpus (shared with test_interleave / test_train_lm / test_text2token) ------------------

def make_tokenizer_dir(path, codebook: int = CODEBOOK) -> str:
    tok = bpe.train_bpe(SENTENCES * 3 + [SYSTEM_PROMPT_AUDIO, SYSTEM_PROMPT_TEXT], 400, min_frequency=2)
    bpe.save_glm4_tokenizer(bpe.ranks_from_tokenizer(tok), str(path), codebook_size=codebook)
    return str(path)


def load_tokenizer(path):
    from glm4voice.lm.text_tokenizer import TextTokenizer

    return TextTokenizer.from_dir(str(path))


def fake_codes(text: str, style: str = "normal") -> np.ndarray:
    """Deterministic 'speech' for a text: 2 codes per character; fast keeps every other one, slow doubles them."""
    base = [(ord(c) * 7 + k) % CODEBOOK for c in text for k in range(2)]
    if style == "fast":
        base = base[::2]
    elif style == "slow":
        base = [c for c in base for _ in range(2)]
    return np.asarray(base, dtype=np.int32)


TOY_ITEMS = [  # id, kind, language, question, answer, split, style
    ("arith-0", "arithmetic", "en", "What is two plus three?", "Five.", "train", "normal"),
    ("cap-0", "capital", "en", "What is the capital of France?", "Paris.", "train", "normal"),
    ("greet-0", "greeting", "en", "Hello!", "Hello! How can I help you?", "train", "normal"),
    ("style-fast-0", "style", "en", "Say this faster: the cat sat on the mat.", "the cat sat on the mat.", "train",
     "fast"),
    ("style-slow-0", "style", "en", "Say this slowly: a dog ran home.", "a dog ran home.", "train", "slow"),
    ("arith-zh-0", "arithmetic", "zh", "二加三等于几？", "五。", "train", "normal"),
    ("arith-1h", "arithmetic", "en", "Do you know what two plus three is?", "Five.", "heldout", "normal"),
]


def make_corpus(root, *, voices=("v1", "v2"), broken: bool = True, items=TOY_ITEMS) -> str:
    """A corpus folder in the layout of train/corpus.py: items.jsonl, manifest.jsonl, tokens/<id>.npy (no audio).

    ``broken`` adds rows the loader must leave out and count: a missing token file, an empty one, a torn line.
    """
    from glm4voice.train.corpus import ANSWER_STYLES

    root = str(root)
    os.makedirs(os.path.join(root, "tokens"), exist_ok=True)
    rows = []
    with open(os.path.join(root, "items.jsonl"), "w", encoding="utf-8") as f:
        for iid, kind, lang, q, a, split, style in items:
            f.write(json.dumps({"id": iid, "kind": kind, "language": lang, "question": q, "answer": a,
                                "split": split, "template": "", "style": style}, ensure_ascii=False) + "\n")
            for k, v in enumerate(voices):
                rows.append(dict(id=f"{iid}.q{k}", item_id=iid, kind=kind, role="question", text=q, language=lang,
                                 voice=v, style="rate=1.00,pitch=+0.0", split=split, duration=1.0,
                                 path=f"audio16k/{kind}/{iid}.q{k}.flac", codes=fake_codes(q)))
            rows.append(dict(id=f"{iid}.a", item_id=iid, kind=kind, role="answer", text=a, language=lang,
                             voice="target", style=ANSWER_STYLES[style].key(), split=split, duration=1.0,
                             path=f"audio16k/{kind}/{iid}.a.flac", codes=fake_codes(a, style)))
    with open(os.path.join(root, "manifest.jsonl"), "w", encoding="utf-8") as f:
        for r in rows:
            np.save(os.path.join(root, "tokens", r["id"] + ".npy"), r.pop("codes"))
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        if broken:
            f.write(json.dumps(dict(id="gone.q0", item_id="gone", kind="chat", role="question", text="x",
                                    language="en", voice="v1", style="", split="train")) + "\n")
            f.write(json.dumps(dict(id="empty.q0", item_id="empty", kind="chat", role="question", text="y",
                                    language="en", voice="v1", style="", split="train")) + "\n")
            np.save(os.path.join(root, "tokens", "empty.q0.npy"), np.zeros(0, np.int32))
            f.write('{"id": "torn", "te')
    return root


# ---- fixtures ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(make_tokenizer_dir(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def sp(tok):
    return ls.Specials.from_tokenizer(tok, CODEBOOK)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return ls.load_lm_data(make_corpus(tmp_path_factory.mktemp("corpus")))


# ---- streaming thoughts ------------------------------------------------------------------------------------------

def _runs(is_text):
    """Run-length encoding of a text/audio flag list: [("t", 13), ("a", 26), ...]."""
    out = []
    for x in is_text:
        k = "t" if x else "a"
        if out and out[-1][0] == k:
            out[-1][1] += 1
        else:
            out.append([k, 1])
    return [tuple(r) for r in out]


@pytest.mark.parametrize("n_text,n_audio,expected", [
    (30, 100, [("t", 13), ("a", 26), ("t", 13), ("a", 26), ("t", 4), ("a", 48)]),
    (13, 40, [("t", 13), ("a", 40)]),
    (26, 26, [("t", 13), ("a", 26), ("t", 13)]),  # the audio ran out first: the last text block ends the answer
    (40, 10, [("t", 13), ("a", 10), ("t", 27)]),  # then the remaining text, with no audio left to follow
    (5, 3, [("t", 5), ("a", 3)]),
    (0, 7, [("a", 7)]),
])
def test_interleave_answer_blocks(n_text, n_audio, expected):
    text = list(range(1000, 1000 + n_text))
    audio = list(range(5000, 5000 + n_audio))
    ids, is_text = ls.interleave_answer(text, audio)
    assert _runs(is_text) == expected
    assert [i for i, t in zip(ids, is_text, strict=True) if t] == text  # every token once, in order
    assert [i for i, t in zip(ids, is_text, strict=True) if not t] == audio


def test_audio_dialogue_layout_and_copies(tok, sp):
    q = fake_codes("What is two plus three?")
    answer = "Hello! How can I help you? " * 3  # > 13 text tokens: at least two blocks
    a = fake_codes(answer)
    text_copy, speech_copy = ls.dialogue_samples(tok, sp, q, answer, a)
    expected_prompt = ([sp.gmask, sp.sop, sp.system] + tok.encode("\n" + SYSTEM_PROMPT_AUDIO) + [sp.user]
                       + tok.encode("\n") + [sp.boa] + [sp.audio_offset + int(c) for c in q] + [sp.eoa]
                       + [sp.assistant] + tok.encode("streaming_transcription\n"))
    assert text_copy.ids == speech_copy.ids  # the two copies differ only in where the loss is
    ids = text_copy.ids
    assert ids[:len(expected_prompt)] == expected_prompt
    assert ids[-1] == sp.user  # the official stop token closes the answer
    body = ids[len(expected_prompt):-1]
    t_ids, a_ids = tok.encode(answer), [sp.audio_offset + int(c) for c in a]
    assert len(t_ids) > 13
    is_text = [not (sp.audio_offset <= i < sp.audio_offset + CODEBOOK) for i in body]
    n_blocks = -(-len(t_ids) // 13)
    want = []
    for b in range(n_blocks):
        want.append(("t", min(13, len(t_ids) - 13 * b)))
        want.append(("a", 26 if b < n_blocks - 1 else len(a_ids) - 26 * (n_blocks - 1)))
    assert _runs(is_text) == want
    # loss masks by hand: nothing in the prompt; text copy = answer text, speech copy = answer audio + <|user|>
    n_p = len(expected_prompt)
    assert not any(text_copy.mask[:n_p]) and not any(speech_copy.mask[:n_p])
    assert text_copy.mask[n_p:] == is_text + [False]
    assert speech_copy.mask[n_p:] == [not x for x in is_text] + [True]
    assert text_copy.kind == "sft:text" and speech_copy.kind == "sft:speech"
    (joint,) = ls.dialogue_samples(tok, sp, q, answer, a, loss="joint")
    assert joint.ids == ids and joint.mask == [x or y for x, y in zip(text_copy.mask, speech_copy.mask, strict=True)]


def test_text_question_uses_the_text_system_prompt(tok, sp):
    s, _ = ls.dialogue_samples(tok, sp, "What is two plus three?", "Five.", fake_codes("Five."))
    head = [sp.gmask, sp.sop, sp.system] + tok.encode("\n" + SYSTEM_PROMPT_TEXT) + [sp.user]
    assert s.ids[:len(head)] == head
    rest = s.ids[len(head):]
    q = tok.encode("\nWhat is two plus three?")
    assert rest[:len(q) + 1] == q + [sp.assistant]
    assert sp.boa not in s.ids  # no audio in a text question


def test_pretraining_formats(tok, sp):
    codes = fake_codes("a dog ran home.")
    audio = [sp.audio_offset + int(c) for c in codes]
    head = [sp.gmask, sp.sop]

    s = ls.text_sample(tok, sp, "Paris.")
    assert s.ids == head + tok.encode("Paris.") + [sp.eot] and s.mask == [False] * 2 + [True] * (len(s) - 2)
    s = ls.speech_sample(tok, sp, codes)
    assert s.ids == head + [sp.boa] + audio + [sp.eoa, sp.eot] and s.mask == [False] * 2 + [True] * (len(s) - 2)
    s = ls.asr_sample(tok, sp, codes, "a dog ran home.")
    prefix = head + tok.encode(ls.ASR_PROMPT) + [sp.boa] + audio + [sp.eoa]
    assert s.ids == prefix + tok.encode("a dog ran home.") + [sp.eot]
    assert s.mask == [False] * len(prefix) + [True] * (len(s) - len(prefix))  # loss on the transcript only
    s = ls.tts_sample(tok, sp, "a dog ran home.", codes)
    prefix = head + tok.encode(ls.TTS_PROMPT + "a dog ran home.") + [sp.boa]
    assert s.ids == prefix + audio + [sp.eoa, sp.eot]
    assert s.mask == [False] * len(prefix) + [True] * (len(audio) + 2)  # loss on the speech only
    s = ls.interleaved_sample(tok, sp, [("text", "the cat"), ("audio", codes[:4]), ("text", " on the mat.")])
    assert s.ids == (head + tok.encode("the cat") + [sp.boa] + audio[:4] + [sp.eoa] + tok.encode(" on the mat.")
                     + [sp.eot])
    with pytest.raises(ValueError, match="segment kind"):
        ls.interleaved_sample(tok, sp, [("video", "x")])


def test_codes_outside_the_codebook_raise(tok, sp):
    with pytest.raises(TokenError, match="64"):
        ls.speech_sample(tok, sp, [1, 2, CODEBOOK])
    with pytest.raises(TokenError, match="-1"):
        ls.dialogue_samples(tok, sp, [-1], "Five.", [1])


def test_specials_follow_the_tokenizer(tmp_path):
    tok = load_tokenizer(make_tokenizer_dir(tmp_path / "t", codebook=37))
    sp = ls.Specials.from_tokenizer(tok)
    assert sp.codebook_size == 37 and sp.audio_offset == tok.token_id("<|audio_0|>") == sp.eoa + 1
    assert sp.user == tok.token_id("<|user|>") and sp.eot in tok.stop_ids


# ---- data --------------------------------------------------------------------------------------------------------

def test_load_lm_data_pairs_and_reports(data):
    n_train_items = sum(1 for it in TOY_ITEMS if it[5] == "train")
    assert len(data.utterances) == 3 * n_train_items  # 2 questions + 1 answer per train item
    assert len(data.dialogues) == 2 * n_train_items
    assert data.problems == Counter({"no token file": 1, "empty token file": 1, "unparsable manifest line": 1})
    styles = {d.question.text: d.style for d in data.dialogues}
    assert styles["Say this faster: the cat sat on the mat."] == "fast"
    assert styles["Say this slowly: a dog ran home."] == "slow"
    assert styles["What is two plus three?"] == "normal"
    d = next(d for d in data.dialogues if d.style == "slow")
    assert np.array_equal(d.answer.codes, fake_codes("a dog ran home.", "slow"))
    assert "Do you know what two plus three is?" not in data.texts  # held-out phrasings stay out of training text
    assert "What is two plus three?" in data.texts and len(data.pool("style")) == 4


def test_another_token_subfolder_is_read_instead(tmp_path):
    import shutil
    from pathlib import Path

    root = Path(make_corpus(tmp_path, broken=False))
    shutil.copytree(root / "tokens", root / "tokens_b")
    first = sorted((root / "tokens_b").glob("*.npy"))[0]
    np.save(first, np.load(first) * 0 + 7)  # the other tokenizer's codes for this row
    for f in (root / "tokens").glob("*.npy"):
        f.unlink()
    data = ls.load_lm_data(str(root), tokens="tokens_b")
    assert data.utterances and not data.problems
    assert any(u.id == first.stem and set(u.codes.tolist()) == {7} for u in data.utterances)
    assert ls.load_lm_data(str(root)).problems["no token file"] > 0


def test_heldout_split(tmp_path):
    held = ls.load_lm_data(make_corpus(tmp_path, broken=False), split="heldout")
    assert [d.question.text for d in held.dialogues] == ["Do you know what two plus three is?"] * 2


# ---- mixture and packing -----------------------------------------------------------------------------------------

def test_parse_mix():
    assert ls.parse_mix("text=1,asr=3") == {"text": 0.25, "asr": 0.75}
    assert ls.parse_mix("sft") == ls.parse_mix(ls.DEFAULT_MIX["sft"])
    for bad, msg in (("txt=1", "unknown sample kinds"), ("text=-1,asr=1", ">= 0"), ("text", "kind=ratio")):
        with pytest.raises(ConfigError, match=msg):
            ls.parse_mix(bad)


def test_mixture_follows_ratios_and_keeps_copies_together(tok, sp, data):
    mix = ls.Mixture(tok, sp, data, "text=0.5,sft=0.25,tts=0.25")
    rng = random.Random(0)
    draws = [mix.draw(rng) for _ in range(2000)]
    kinds = Counter(ds[0].kind.split(":")[0] for ds in draws)
    assert abs(kinds["text"] / 2000 - 0.5) < 0.05 and abs(kinds["tts"] / 2000 - 0.25) < 0.05
    orders = Counter()
    for ds in draws:
        if ds[0].kind.startswith("sft"):
            orders[tuple(s.kind for s in ds)] += 1
            assert ds[0].ids == ds[1].ids
    assert set(orders) == {("sft:text", "sft:speech"), ("sft:speech", "sft:text")}  # random order: no cut bias


def test_mixture_rejects_kinds_without_data(tok, sp):
    with pytest.raises(ConfigError, match="interleaved"):
        ls.Mixture(tok, sp, ls.LMData(texts=["a"]), "text=1,interleaved=1")


def test_interleaved_pool_uses_real_tokens(tok, sp, data):
    mix = ls.Mixture(tok, sp, data, "interleaved=1")
    s = mix.draw(random.Random(3))[0]
    assert s.kind == "interleaved" and sp.boa in s.ids and all(s.mask[2:])


def test_pack_batch_layout(tok, sp, data):
    mix = ls.Mixture(tok, sp, data, "sft=0.5,text=0.3,asr=0.2")
    b = ls.pack_batch(mix.draw, seed=1, step=0, rank=0, batch_size=6, seq_len=300, pad_id=sp.eot)
    assert b.input_ids.shape == b.loss_mask.shape == b.position_ids.shape == b.doc_ids.shape == (6, 300)
    pad = b.doc_ids == -1
    assert not b.loss_mask[pad].any() and (b.input_ids[pad] == sp.eot).all()
    assert b.stats["pad_share"] == pytest.approx(pad.float().mean().item())
    for row in range(6):
        docs = b.doc_ids[row]
        for d in docs[docs >= 0].unique().tolist():
            where = (docs == d).nonzero().flatten()
            assert where.tolist() == list(range(where[0].item(), where[-1].item() + 1))  # contiguous
            assert b.position_ids[row, where].tolist() == list(range(len(where)))  # positions restart
            assert b.input_ids[row, where[0]].item() == sp.gmask  # a whole document, from its first token
        assert (docs[1:] >= docs[:-1]).all() or (docs == -1).any()


def test_more_fill_tries_pack_rows_tighter(tok, sp, data):
    mix = ls.Mixture(tok, sp, data, "sft=0.5,text=0.3,asr=0.2")
    one, four = (ls.pack_batch(mix.draw, seed=1, step=0, rank=0, batch_size=16, seq_len=300, pad_id=sp.eot,
                               fill_tries=k) for k in (1, 4))
    assert four.stats["pad_share"] < one.stats["pad_share"]
    assert one.stats["unfit"] <= 16 < four.stats["unfit"]  # one try: a row ends at its first misfit
    pad = four.doc_ids == -1
    assert not four.loss_mask[pad].any() and four.stats["pad_share"] == pytest.approx(pad.float().mean().item())


def test_long_documents_are_cut(tok, sp, data):
    mix = ls.Mixture(tok, sp, data, "sft=1")
    b = ls.pack_batch(mix.draw, seed=0, step=0, rank=0, batch_size=2, seq_len=40, pad_id=sp.eot)
    assert b.stats["cut"] == 2 and (b.doc_ids == 0).all()  # one cut copy fills each row


def test_copies_of_a_dialogue_stay_together(tok, sp, data):
    mix = ls.Mixture(tok, sp, data, "sft=1")
    pair = len(mix.draw(random.Random(0))[0]) * 2
    b = ls.pack_batch(mix.draw, seed=0, step=0, rank=0, batch_size=8, seq_len=pair * 2 + 50, pad_id=sp.eot)
    for row in range(8):
        n_docs = int(b.doc_ids[row].max()) + 1
        assert n_docs % 2 == 0  # never a lone copy
        for d in range(0, n_docs, 2):
            a, c = (b.input_ids[row][b.doc_ids[row] == k] for k in (d, d + 1))
            assert a.equal(c)


def test_packing_is_deterministic_and_independent_of_world_size(tok, sp, data):
    mix = ls.Mixture(tok, sp, data, "pretrain")
    batches = ls.MixtureBatches(mix, batch_size=4, seq_len=128, seed=7)
    a, b = batches(5, 0, 1), batches(5, 0, 1)
    assert a.input_ids.equal(b.input_ids) and a.loss_mask.equal(b.loss_mask)
    assert not batches(6, 0, 1).input_ids.equal(a.input_ids)
    half = ls.MixtureBatches(mix, batch_size=2, seq_len=128, seed=7)
    assert half(5, 0, 2).input_ids.equal(a.input_ids[:2]) and half(5, 1, 2).input_ids.equal(a.input_ids[2:])
    assert not ls.MixtureBatches(mix, batch_size=4, seq_len=128, seed=8)(5, 0, 1).input_ids.equal(a.input_ids)


def test_conversation_turns_follow_the_inference_prompt_builder(tok, sp):
    from glm4voice.lm.prompt import build_turn

    turns = [(fake_codes("What is two plus three?"), "Five.", fake_codes("Five.")),
             ("What is the capital of France?", "Paris.", fake_codes("Paris.")),
             (fake_codes("Hello!"), "Hello! How can I help you?", fake_codes("Hello! How can I help you?"))]
    text_copy, speech_copy = ls.conversation_samples(tok, sp, turns)
    ids, want, n_prev = text_copy.ids, [], 0
    for q, a_text, a_codes in turns:
        prompt = (build_turn(tok, text=q, history=want or None) if isinstance(q, str)
                  else build_turn(tok, audio=[int(c) for c in q], history=want or None))
        answer, is_text = ls.interleave_answer(tok.encode(a_text), [sp.audio_offset + int(c) for c in a_codes])
        n0 = len(prompt)
        want = prompt + answer + [sp.user]
        assert ids[:len(want)] == want  # what inference feeds on turn k+1 is exactly the training prefix
        assert text_copy.mask[n0:len(want)] == is_text + [False]
        assert speech_copy.mask[n0:len(want)] == [not x for x in is_text] + [True]
        # no loss in the prompt: nothing between the previous answer's <|user|> and this answer
        assert not any(text_copy.mask[n_prev:n0]) and not any(speech_copy.mask[n_prev:n0])
        n_prev = len(want)
    assert ids == want and ids.count(sp.system) == 1 and ids.count(sp.user) == 4


def test_multi_turn_draws(tok, sp, data):
    mix = ls.Mixture(tok, sp, data, "multi=1")
    rng = random.Random(1)
    users = Counter(ds[0].ids.count(sp.user) for ds in (mix.draw(rng) for _ in range(40)))
    assert set(users) == {3, 4}  # 2 or 3 turns: one <|user|> per turn plus the closing one


def test_rephrase_rewords_typed_questions_only(tok, sp, data):
    plain = ls.Mixture(tok, sp, data, "sft_text=1", sft_loss="joint")
    aug = ls.Mixture(tok, sp, data, "sft_text=1", sft_loss="joint", rephrase=1.0)
    questions = {d.question.text for d in data.dialogues}
    texts_plain, texts_aug = set(), set()
    for seed in range(60):
        texts_plain.add(tok.decode(plain.draw(random.Random(seed))[0].ids))
        texts_aug.add(tok.decode(aug.draw(random.Random(seed))[0].ids))
    assert all(any(q in t for q in questions) for t in texts_plain)
    reworded = [t for t in texts_aug if not any(q in t for q in questions)]
    assert reworded, "rephrase=1 never re-worded a templated question"
    with pytest.raises(ConfigError, match="rephrase"):
        ls.Mixture(tok, sp, data, "sft_text=1", rephrase=1.5)
    # set 2 adds phrasings: drawn with the same seeds, some typed questions differ from set 1's
    aug2 = ls.Mixture(tok, sp, data, "sft_text=1", sft_loss="joint", rephrase=1.0, augment_set=2)
    texts_aug2 = {tok.decode(aug2.draw(random.Random(seed))[0].ids) for seed in range(60)}
    assert texts_aug2 - texts_aug
    with pytest.raises(ConfigError, match="augmentation set"):
        ls.Mixture(tok, sp, data, "sft_text=1", rephrase=1.0, augment_set=0)


def test_perturb_codes_edits_about_p_of_the_codes():
    rng = random.Random(0)
    codes = list(range(2000))  # distinct: every edit is visible in the alignment below
    assert ls.perturb_codes(codes, 0.0, rng, 4096) == codes
    out = ls.perturb_codes(codes, 0.3, rng, 4096)
    assert out != codes and all(0 <= c < 4096 for c in out)
    assert 0.8 * len(codes) < len(out) < 1.2 * len(codes)  # drops and doubles roughly balance
    # p of the codes are edited and a third of the edits (the doubles) keep the code: about 0.8 survive in order
    kept = sum(b.size for b in difflib.SequenceMatcher(None, codes, out, autojunk=False).get_matching_blocks())
    assert 0.75 * len(codes) < kept < 0.85 * len(codes)
    assert ls.perturb_codes([5], 0.99, random.Random(3), 8)  # never empty


def test_code_noise_touches_speech_inputs_only(tok, sp, data):
    def draws(kind, noise):
        mix = ls.Mixture(tok, sp, data, f"{kind}=1", sft_loss="joint", code_noise=noise)
        return [mix.draw(random.Random(seed))[0] for seed in range(20)]

    for kind in ("sft", "asr"):  # the question / ASR audio changes; what the model must produce does not
        for a, b in zip(draws(kind, 0.0), draws(kind, 0.5), strict=True):
            assert a.ids != b.ids
            assert [i for i, m in zip(a.ids, a.mask, strict=True) if m] == \
                   [i for i, m in zip(b.ids, b.mask, strict=True) if m]
    for kind in ("tts", "sft_text"):  # no speech input: identical samples
        assert [s.ids for s in draws(kind, 0.0)] == [s.ids for s in draws(kind, 0.5)]
    with pytest.raises(ConfigError, match="code noise"):
        ls.Mixture(tok, sp, data, "sft=1", code_noise=1.0)
