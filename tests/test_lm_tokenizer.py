"""Text tokenizer: official file format (synthetic ranks), special and audio tokens, safe and streaming decoding,
corrupt files, and our own BPE (glm4voice.train.bpe) loading through the same reader."""

import base64
import json
import random

import pytest

from glm4voice.constants import AUDIO_TOKEN_FORMAT, SPECIAL_TOKENS
from glm4voice.errors import CheckpointError, TokenError
from glm4voice.lm.text_tokenizer import TOKENIZER_CONFIG, TOKENIZER_MODEL, TextTokenizer

MERGES = [b"he", b"ll", b"hell", b"hello", b" w", b" wor", b"ld", b" world", b"12", b"123"]
N = 256 + len(MERGES)
GAP = 5  # other added tokens between <|end_of_audio|> and <|audio_0|>, as in the release
CODEBOOK = 20

pytestmark = pytest.mark.usefixtures("one_thread")

def write_tokenizer(folder, *, merges=MERGES, added=None, lines=None):
    ranks = [bytes([b]) for b in range(256)] + list(merges)
    if lines is None:
        lines = [f"{base64.b64encode(t).decode()} {r}" for r, t in enumerate(ranks)]
    (folder / TOKENIZER_MODEL).write_text("\n".join(lines) + "\n")
    if added is None:
        names = [*SPECIAL_TOKENS, "<|begin_of_audio|>", "<|end_of_audio|>"]
        names += [f"<|other_{i}|>" for i in range(GAP)] + [AUDIO_TOKEN_FORMAT.format(i) for i in range(CODEBOOK)]
        added = {name: len(ranks) + i for i, name in enumerate(names)}
    decoder = {str(i): {"content": name, "special": True} for name, i in added.items()}
    (folder / TOKENIZER_CONFIG).write_text(json.dumps({"added_tokens_decoder": decoder}))
    return folder


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return TextTokenizer.from_dir(write_tokenizer(tmp_path_factory.mktemp("tok")))


def test_bpe_merges_follow_ranks_and_glm4_pretokenisation(tok):
    assert tok.encode("hello") == [256 + MERGES.index(b"hello")]
    assert tok.encode("hello world") == [256 + MERGES.index(b"hello"), 256 + MERGES.index(b" world")]
    # digits are cut into runs of at most 3 before BPE: "12345" -> "123" "45"
    assert tok.encode("12345") == [256 + MERGES.index(b"123"), ord("4"), ord("5")]
    # "hellohello" is one pre-token; "'ll" is split off as a contraction, so "ll" cannot merge across it
    assert tok.encode("we'll") == [ord("w"), ord("e"), ord("'"), 256 + MERGES.index(b"ll")]
    assert tok.decode(tok.encode("hello world 12345 we'll")) == "hello world 12345 we'll"


def test_special_tokens_by_name_and_prefix(tok):
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.token_id(name) == N + i
    assert tok.prefix_ids == [tok.token_id("[gMASK]"), tok.token_id("<sop>")]
    assert tok.stop_ids == {N + 0, N + 7, N + 9}  # <|endoftext|>, <|user|>, <|observation|>
    with pytest.raises(TokenError, match="no token"):
        tok.token_id("<|nope|>")


def test_special_strings_in_text_are_plain_text_unless_allowed(tok):
    text = "hello<|user|>"
    plain = tok.encode(text)
    assert tok.token_id("<|user|>") not in plain and tok.decode(plain) == text
    assert tok.encode(text, allow_special=True) == [256 + MERGES.index(b"hello"), tok.token_id("<|user|>")]
    assert tok.decode(tok.encode(text, allow_special=True)) == text


def test_audio_ids_and_codes(tok):
    offset = N + len(SPECIAL_TOKENS) + 2 + GAP
    assert tok.audio_offset == offset == tok.token_id("<|audio_0|>") and tok.codebook_size == CODEBOOK
    assert [tok.audio_code(tok.audio_id(c)) for c in range(CODEBOOK)] == list(range(CODEBOOK))
    assert not tok.is_audio(offset - 1) and not tok.is_audio(offset + CODEBOOK) and tok.is_audio(offset)
    for bad in (offset - 1, offset + CODEBOOK, 5):
        with pytest.raises(TokenError):
            tok.audio_code(bad)
    with pytest.raises(TokenError, match="codebook"):
        tok.audio_id(CODEBOOK)
    assert tok.decode(tok.audio_ids([3, 0])) == "<|audio_3|><|audio_0|>"
    assert tok.encode("<|audio_3|>", allow_special=True) == [offset + 3]


def test_decode_is_byte_safe_and_rejects_unknown_ids(tok):
    ni = list("你".encode())  # 3 byte tokens
    assert tok.decode(ni) == "你"
    assert tok.decode(ni[:2]) == "\ufffd"  # a cut character is replaced, never an exception
    assert tok.decode(ni[:2] + [tok.token_id("<|user|>")] + ni) == "\ufffd<|user|>你"
    with pytest.raises(TokenError, match="not in the vocabulary"):
        tok.decode([tok.vocab_size + 3])


def test_streaming_decode_holds_partial_characters(tok):
    dec = tok.stream_decoder()
    ids = list("a你😀".encode())
    pieces = [dec.push(i) for i in ids]
    assert pieces[0] == "a" and pieces[1:3] == ["", ""] and pieces[3] == "你" and pieces[4:7] == [""] * 3
    assert pieces[7] == "😀" and dec.flush() == ""


def test_streaming_decode_equals_decode_on_random_ids(tok):
    rng = random.Random(0)
    pool = [*range(N), *range(N, N + len(SPECIAL_TOKENS)), tok.audio_offset, tok.audio_offset + 7]
    pool += list("你好 😀 é".encode())
    for _ in range(200):
        ids = [rng.choice(pool) for _ in range(rng.randint(0, 12))]
        dec = tok.stream_decoder()
        assert "".join(dec.push(i) for i in ids) + dec.flush() == tok.decode(ids)


def test_built_in_specials_default_when_config_omits_them(tmp_path):
    write_tokenizer(tmp_path, added={"<|begin_of_audio|>": N + 14, "<|end_of_audio|>": N + 15})
    t = TextTokenizer.from_dir(tmp_path)
    assert t.token_id("[gMASK]") == N + 2 and t.token_id("<|user|>") == N + 7
    assert t.codebook_size == 0


@pytest.mark.parametrize("lines, match", [
    (["!!!notbase64 0"], "base64 rank"),
    (["YQ== 0 extra"], "base64 rank"),
    ([f"{base64.b64encode(bytes([b])).decode()} {b + 1}" for b in range(256)], "0..N-1"),
    ([f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(255)], "256 single bytes"),
])
def test_corrupt_ranks_file_raises(tmp_path, lines, match):
    write_tokenizer(tmp_path, lines=lines)
    with pytest.raises(CheckpointError, match=match):
        TextTokenizer.from_dir(tmp_path)


def test_corrupt_or_missing_config_raises(tmp_path):
    write_tokenizer(tmp_path)
    (tmp_path / TOKENIZER_CONFIG).write_text("{not json")
    with pytest.raises(CheckpointError, match="added_tokens_decoder"):
        TextTokenizer.from_dir(tmp_path)
    (tmp_path / TOKENIZER_CONFIG).unlink()
    with pytest.raises(CheckpointError, match="lacks"):
        TextTokenizer.from_dir(tmp_path)
    write_tokenizer(tmp_path, added={"<|x|>": 10})
    with pytest.raises(CheckpointError, match="overlap"):
        TextTokenizer.from_dir(tmp_path)


def test_our_trained_bpe_loads_with_identical_ids(tmp_path):
    pytest.importorskip("tokenizers")
    from glm4voice.train import bpe

    sentences = ["Hello there, how are you today?", "I'm fine; we'll see 12345 cats.", "你好，世界！今天天气很好。",
                 "The quick brown fox jumps over the lazy dog.", "naïve café — “quotes” 😀", "tab\there\n\nnew line"]
    hf = bpe.train_bpe(sentences * 20, 400, min_frequency=1)
    specials = bpe.save_glm4_tokenizer(bpe.ranks_from_tokenizer(hf), str(tmp_path), codebook_size=64)
    t = TextTokenizer.from_dir(tmp_path)
    assert t.codebook_size == 64 and t.audio_offset == specials["<|audio_0|>"]
    assert all(t.token_id(name) == i for name, i in specials.items())
    for s in sentences + ["unseen wörds ✓ 987654"]:
        assert t.encode(s) == hf.encode(s).ids, s
        assert t.decode(t.encode(s)) == s
    ids = t.prefix_ids + t.encode("hi") + [t.begin_of_audio, *t.audio_ids([0, 63, 5]), t.end_of_audio]
    assert t.decode(ids) == "[gMASK]<sop>hi<|begin_of_audio|><|audio_0|><|audio_63|><|audio_5|><|end_of_audio|>"
    assert [t.audio_code(i) for i in ids if t.is_audio(i)] == [0, 63, 5]
