"""Our BPE: trained with HF tokenizers, saved in the official GLM-4 format, read by tiktoken with the same ids."""

import base64
import json
import os
import random

import pytest

from glm4voice.constants import SPECIAL_TOKENS
from glm4voice.train import bpe, texts

CODEBOOK = 300
VOCAB = 1500


@pytest.fixture(scope="module")
def sentences():
    items = texts.build_items(0)
    pool = list(texts.all_text(items))
    random.Random(0).shuffle(pool)
    tricky = ["Hello   world\n\n  x", "I'm here, you'll see. DON'T 12345 678", "表情 😀 ok", "tab\there",
              "  leading", "trailing  ", "a\r\nb", "x\u00a0y \u3000z", "naïve café", "3.14159 + 2,718", "",
              "Ünïcödé — dash… “quotes”", "混合 English 和中文 123。", "\n", "a'S 'LL"]
    return pool[:800] + tricky


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sentences):
    train = list(texts.all_text(texts.build_items(0)))  # includes the test sentences: the vocabulary covers them
    tok = bpe.train_bpe(train, VOCAB)
    out = str(tmp_path_factory.mktemp("bpe"))
    ranks = bpe.ranks_from_tokenizer(tok)
    specials = bpe.save_glm4_tokenizer(ranks, out, codebook_size=CODEBOOK)
    return tok, ranks, specials, out


def test_tokenizer_model_file_format(trained):
    _, ranks, _, out = trained
    with open(os.path.join(out, bpe.TOKENIZER_MODEL), encoding="ascii") as f:
        lines = f.read().splitlines()
    assert len(lines) == len(ranks) == VOCAB
    read = {}
    for n, line in enumerate(lines):
        token, rank = line.split(" ")
        assert int(rank) == n  # ranks 0..N-1, one per line, in order
        read[base64.b64decode(token, validate=True)] = int(rank)
    assert read == ranks == bpe.load_ranks(os.path.join(out, bpe.TOKENIZER_MODEL))
    assert all(bytes([b]) in read for b in range(256))


def test_every_token_has_a_merge_path(trained):
    """tiktoken can only produce a multi-byte token from two lower-ranked tokens that concatenate to it."""
    _, ranks, _, _ = trained
    for token, rank in ranks.items():
        if len(token) > 1:
            assert any(ranks.get(token[:i], rank) < rank and ranks.get(token[i:], rank) < rank
                       for i in range(1, len(token))), token


def test_special_tokens_layout(trained):
    _, ranks, specials, out = trained
    with open(os.path.join(out, bpe.TOKENIZER_CONFIG), encoding="utf-8") as f:
        config = json.load(f)
    added = config["added_tokens_decoder"]
    expected = [*SPECIAL_TOKENS, "<|begin_of_audio|>", "<|end_of_audio|>", *(f"<|audio_{i}|>" for i in range(CODEBOOK))]
    assert [added[str(VOCAB + i)]["content"] for i in range(len(expected))] == expected
    assert len(added) == len(expected) == 14 + 2 + CODEBOOK
    for entry in added.values():
        assert entry == {"content": entry["content"], "special": True, "lstrip": False, "rstrip": False,
                         "normalized": False, "single_word": False}
    assert specials["<|endoftext|>"] == VOCAB and specials["<|audio_0|>"] == VOCAB + 16
    assert specials[f"<|audio_{CODEBOOK - 1}|>"] == VOCAB + 16 + CODEBOOK - 1
    assert config["eos_token"] == "<|endoftext|>" and config["padding_side"] == "left"


def test_tiktoken_reproduces_hf_ids_and_round_trips(trained, sentences):
    tok, _, _, out = trained
    enc = bpe.load_tiktoken(out)
    assert enc.n_vocab == VOCAB + 16 + CODEBOOK
    mismatches = []
    for s in sentences:
        hf = tok.encode(s).ids
        tt = enc.encode(s, disallowed_special=())
        if hf != tt:
            mismatches.append((s, hf, tt))
        assert enc.decode(tt) == s
        assert tok.decode(hf) == s
    assert not mismatches, mismatches[:3]
    # specials are single ids and sit between text pieces exactly as the official prompt builds them
    ids = enc.encode("<|user|>\nhi<|begin_of_audio|><|audio_7|><|end_of_audio|>", allowed_special="all")
    spec = bpe.load_specials(os.path.join(out, bpe.TOKENIZER_CONFIG))
    assert ids[0] == spec["<|user|>"] and ids[-3:] == [spec["<|begin_of_audio|>"], spec["<|audio_0|>"] + 7,
                                                       spec["<|end_of_audio|>"]]
    assert enc.decode(ids[1:-3]) == "\nhi"


def test_bpe_compresses_our_domain(trained, sentences):
    _, _, _, out = trained
    enc = bpe.load_tiktoken(out)
    chars = sum(len(s) for s in sentences)
    tokens = sum(len(enc.encode(s, disallowed_special=())) for s in sentences)
    assert tokens < 0.5 * chars  # byte-level would be >= 1 token per char


def test_training_is_deterministic(trained):
    tok, _, _, _ = trained
    again = bpe.train_bpe(list(texts.all_text(texts.build_items(0))), VOCAB)
    assert bpe.ranks_from_tokenizer(again) == bpe.ranks_from_tokenizer(tok)


def test_bad_inputs():
    with pytest.raises(ValueError, match="256"):
        bpe.train_bpe(["abc"], 100)
    with pytest.raises(ValueError, match="0..N-1"):
        bpe.save_glm4_tokenizer({bytes([b]): b + 1 for b in range(256)}, "/nonexistent", codebook_size=1)
