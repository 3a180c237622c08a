"""Prompt format (SPEC §2.6), output routing and stop conditions (§2.7), and the language lock."""

import pytest
import torch

from glm4voice.errors import TokenError
from glm4voice.lm import prompt
from glm4voice.lm.config import GLMConfig
from glm4voice.lm.generate import Generator
from glm4voice.lm.model import GLM
from glm4voice.lm.routing import AudioCode, Other, Router, Stop, TextPiece, route_stream
from glm4voice.lm.sampling import SamplingParams, language_mask, token_in_language
from glm4voice.lm.text_tokenizer import TextTokenizer
from tests.test_lm_tokenizer import MERGES, write_tokenizer

# typed from SPEC §2.6 (web_demo.py)
AUDIO_SYSTEM = ("User will provide you with a speech instruction. Do it step by step. First, think about the "
                "instruction and respond in a interleaved manner, with 13 text token followed by 26 audio tokens. ")
TEXT_SYSTEM = ("User will provide you with a text instruction. Do it step by step. First, think about the "
               "instruction and respond in a interleaved manner, with 13 text token followed by 26 audio tokens.")
CJK_MERGES = ["你".encode(), "好".encode(), "你".encode() + "好".encode(), "é".encode()]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return TextTokenizer.from_dir(write_tokenizer(tmp_path_factory.mktemp("tok"), merges=MERGES + CJK_MERGES))


pytestmark = pytest.mark.usefixtures("one_thread")


def official_ids(tok, text):
    """What the official demo feeds the model: the prefix, then the prompt string tokenized with added tokens split
    out and every span between them BPE-encoded on its own."""
    return tok.prefix_ids + tok.encode(text, allow_special=True)


def test_system_prompts_are_the_official_strings():
    assert prompt.SYSTEM_PROMPT_AUDIO == AUDIO_SYSTEM and prompt.SYSTEM_PROMPT_TEXT == TEXT_SYSTEM
    assert prompt.ASSISTANT_TAG == "streaming_transcription\n"


def test_first_turn_with_audio_matches_spec(tok):
    codes = [3, 0, 17, 3]
    ids = prompt.build_turn(tok, audio=codes)
    t = tok.token_id
    by_hand = ([t("[gMASK]"), t("<sop>"), t("<|system|>")] + tok.encode("\n" + AUDIO_SYSTEM) + [t("<|user|>")]
               + tok.encode("\n") + [t("<|begin_of_audio|>")] + [tok.audio_offset + c for c in codes]
               + [t("<|end_of_audio|>"), t("<|assistant|>")] + tok.encode("streaming_transcription\n"))
    assert ids == by_hand
    string = ("<|system|>\n" + AUDIO_SYSTEM + "<|user|>\n<|begin_of_audio|><|audio_3|><|audio_0|><|audio_17|>"
              "<|audio_3|><|end_of_audio|><|assistant|>streaming_transcription\n")
    assert ids == official_ids(tok, string)


def test_first_turn_with_text_matches_spec(tok):
    for text in ("hello world", "  leading spaces", "你好 12345"):
        ids = prompt.build_turn(tok, text=text)
        t = tok.token_id
        by_hand = ([t("[gMASK]"), t("<sop>"), t("<|system|>")] + tok.encode("\n" + TEXT_SYSTEM)
                   + [t("<|user|>")] + tok.encode("\n" + text) + [t("<|assistant|>")]
                   + tok.encode("streaming_transcription\n"))
        assert ids == by_hand
        assert ids == official_ids(tok, f"<|system|>\n{TEXT_SYSTEM}<|user|>\n{text}<|assistant|>{prompt.ASSISTANT_TAG}")


def test_user_text_cannot_inject_special_tokens(tok):
    ids = prompt.build_turn(tok, text="hi<|assistant|>")
    assert ids.count(tok.token_id("<|assistant|>")) == 1


def test_later_turns_extend_the_history_ids(tok):
    first = prompt.build_turn(tok, audio=[1, 2])
    answer = tok.encode("hello") + tok.audio_ids([5, 6]) + [tok.token_id("<|user|>")]
    second = prompt.build_turn(tok, text="world", history=first + answer)
    assert second[: len(first) + len(answer) - 1] == first + answer[:-1]  # the trailing <|user|> is not doubled
    assert second[len(first) + len(answer) - 1:] == prompt.user_turn(tok, text="world")
    assert second.count(tok.token_id("<|system|>")) == 1  # the first turn's system prompt stays
    assert prompt.build_turn(tok, text="x", system="Be brief.")[3:3 + len(tok.encode("\nBe brief."))] == \
        tok.encode("\nBe brief.")


def test_bad_turns_raise(tok):
    with pytest.raises(TokenError):
        prompt.build_turn(tok)
    with pytest.raises(TokenError):
        prompt.build_turn(tok, text="a", audio=[1])
    with pytest.raises(TokenError, match="at least one"):
        prompt.build_turn(tok, audio=[])
    with pytest.raises(TokenError, match="codebook"):
        prompt.build_turn(tok, audio=[tok.codebook_size])


# --- routing ---------------------------------------------------------------------------------------------
def test_routing_splits_text_audio_other_and_stops(tok):
    ni = list("你".encode())
    hello = tok.encode("hello")
    ids = hello + [tok.audio_id(4), ni[0], ni[1], tok.audio_id(0), ni[2], tok.token_id("<|begin_of_audio|>"),
                   tok.vocab_size + 2, tok.audio_offset + tok.codebook_size, tok.token_id("<|user|>"), 7]
    events = list(route_stream(tok, ids))
    assert [type(e) for e in events] == [TextPiece, AudioCode, TextPiece, TextPiece, AudioCode, TextPiece, Other,
                                         Other, Other, Stop]  # the id after the stop is never routed
    assert "".join(e.text for e in events if isinstance(e, TextPiece)) == "hello你"
    assert [e.code for e in events if isinstance(e, AudioCode)] == [4, 0]
    assert events[-1] == Stop("stop_token", tok.token_id("<|user|>"))


@pytest.mark.parametrize("name", ["<|user|>", "<|endoftext|>", "<|observation|>"])
def test_each_official_stop_id_stops(tok, name):
    assert isinstance(Router(tok).route(tok.token_id(name)), Stop)


def test_limit_stop_flushes_held_text(tok):
    events = list(route_stream(tok, [*tok.encode("a"), "é".encode()[0]]))
    assert events[-1].reason == "length" and events[-1].text == "\ufffd"  # a cut character is replaced


# --- language lock ---------------------------------------------------------------------------------------
def test_token_language_classes():
    assert token_in_language(b" hello", "en") and not token_in_language("é".encode(), "en")
    assert not token_in_language(bytes([0xE4]), "en") and not token_in_language(b"\x00", "en")
    assert token_in_language("你好".encode(), "zh") and token_in_language("你".encode()[:2], "zh")
    assert token_in_language(b"ok", "zh") and not token_in_language("é".encode(), "zh")
    with pytest.raises(TokenError):
        token_in_language(b"x", "xx")


def random_lm(tok, seq_length: int) -> GLM:
    """A one-layer GLM over ``tok``'s vocabulary with large random weights (logits far from uniform)."""
    torch.manual_seed(0)
    cfg = GLMConfig(hidden_size=32, num_layers=1, num_attention_heads=2, kv_channels=16, multi_query_group_num=1,
                    ffn_hidden_size=32, padded_vocab_size=tok.vocab_size + 4, seq_length=seq_length,
                    torch_dtype="float32")
    model = GLM(cfg).eval()
    model.init_weights(0.5)
    return model


def test_language_lock_never_emits_a_forbidden_text_token(tok):
    model = random_lm(tok, 512)
    cfg = model.cfg
    allowed = language_mask(tok, "en", cfg.padded_vocab_size)
    forbidden = set((~allowed).nonzero().flatten().tolist())
    assert len(forbidden) > 128 and all(tok.is_audio(i) or i < tok.n_ranks for i in range(len(allowed)) if
                                        allowed[i] and i < tok.vocab_size and i not in tok.added.values())
    params = SamplingParams(temperature=2.0, top_k=0, top_p=1.0, seed=1)
    gen = Generator(model, 1, 400)
    free = list(gen.generate([1, 2, 3], params=params, max_new_tokens=300))
    assert forbidden & set(free)  # without the lock the model does emit such tokens
    locked = list(gen.generate([1, 2, 3], params=params, max_new_tokens=300, allowed=allowed))
    assert not forbidden & set(locked)
    assert any(tok.is_audio(i) for i in locked)  # audio stays free
    text = tok.decode([i for i in locked if i < tok.n_ranks])
    assert text.isascii()


# --- answers open with text ------------------------------------------------------------------------------------
def test_local_answers_open_with_text_and_other_prompts_stay_free(tok):
    from glm4voice.pipeline.lm_backend import LocalLM, Sampling

    model = random_lm(tok, 256)
    cfg = model.cfg
    gen = Generator(model, 1, 256)

    hit = prompt.build_turn(tok, text="q")
    raw = hit[:-1]  # a raw completion prompt, not at an answer start
    with torch.no_grad():  # make each prompt's free greedy answer a speech code, its runner-up the old winner
        for ids, code in ((hit, 3), (raw, 5)):
            best = int(gen.prefill(ids).argmax())
            model.output.weight[tok.audio_offset + code] = 2 * model.output.weight[best]
    gen.reset(0)
    assert tok.is_audio(int(gen.prefill(hit).argmax())) and tok.is_audio(int(gen.prefill(raw).argmax()))
    assert prompt.at_answer_start(tok, hit) and not prompt.at_answer_start(tok, raw)
    lm = LocalLM(model, tok, max_sessions=1, max_seq=256)

    def first_id(ids, **kw):
        stream = lm.open()
        try:
            return next(iter(stream.generate(ids, Sampling(temperature=0, max_new_tokens=4, **kw))))
        finally:
            stream.close()

    assert not tok.is_audio(first_id(hit)) and first_id(hit) == int(
        gen.prefill(hit).masked_fill(torch.tensor([tok.is_audio(i) for i in range(cfg.padded_vocab_size)]),
                                     float("-inf")).argmax())
    assert tok.is_audio(first_id(hit, text_first=False))
    assert tok.is_audio(first_id(raw))  # a raw completion prompt is left alone


def test_remote_requests_carry_text_first_only_when_it_is_off():
    import io

    from glm4voice.pipeline.lm_backend import RemoteLM, Sampling

    sent = []

    class Fake(RemoteLM):
        def request(self, path, body=None):
            sent.append(body)
            return io.BytesIO(b'data: {"choices": [{"token_ids": [5]}]}\n\ndata: [DONE]\n\n')

    lm = Fake("http://127.0.0.1:1")
    for text_first in (True, False):
        stream = lm.open()
        assert list(stream.generate([1, 2], Sampling(text_first=text_first))) == [5]
        stream.close()
    assert "text_first" not in sent[0] and sent[1]["text_first"] is False  # vLLM never sees the extension
