"""The prompt format of GLM-4-Voice, in one place (SPEC §2.6, web_demo.py).

First turn, as ids (SPEC §2.6)::

    [gMASK] <sop> <|system|> BPE("\\n" + system)
    <|user|> BPE("\\n" + text)                                                  (text input)
    <|user|> BPE("\\n") <|begin_of_audio|> <|audio_c|>... <|end_of_audio|>       (speech input)
    <|assistant|> BPE("streaming_transcription\\n")

The official demo builds a string and tokenizes it, so each span between added tokens is BPE-encoded on its own:
``"\\n" + text`` is one span (equal to BPE("\\n") + BPE(text) unless the text starts with whitespace). Only the
first turn's input mode picks the system prompt.

Later turns: the official demo decodes the previous prompt and completion to a string and re-tokenizes it. We keep
the conversation as ids instead (``history`` = previous prompt + generated ids), so the KV cache of earlier turns is
reused and nothing depends on a decode/encode round trip. A trailing ``<|user|>`` (the stop token that ended the
previous answer) is dropped because the new turn starts with it, as in the official demo.
"""

from __future__ import annotations

from collections.abc import Sequence

from glm4voice.errors import TokenError
from glm4voice.lm.text_tokenizer import TextTokenizer

# web_demo.py, exact strings (SPEC §2.6). The audio-input prompt ends with a space; the text-input one does not.
SYSTEM_PROMPT_AUDIO = (
    "User will provide you with a speech instruction. Do it step by step. First, think about the instruction "
    "and respond in a interleaved manner, with 13 text token followed by 26 audio tokens. "
)
SYSTEM_PROMPT_TEXT = (
    "User will provide you with a text instruction. Do it step by step. First, think about the instruction "
    "and respond in a interleaved manner, with 13 text token followed by 26 audio tokens."
)
ASSISTANT_TAG = "streaming_transcription\n"  # follows <|assistant|>; the model then answers text+audio interleaved


def audio_span(tok: TextTokenizer, codes: Sequence[int]) -> list[int]:
    """``<|begin_of_audio|> <|audio_c|>... <|end_of_audio|>`` for speech-tokenizer codes."""
    return [tok.begin_of_audio, *tok.audio_ids(codes), tok.end_of_audio]


def user_turn(tok: TextTokenizer, *, text: str | None = None, audio: Sequence[int] | None = None) -> list[int]:
    """``<|user|> ... <|assistant|> streaming_transcription\\n`` for one user input (text or speech codes)."""
    if (text is None) == (audio is None):
        raise TokenError("a user turn needs exactly one of text= or audio=")
    if audio is not None:
        if len(audio) == 0:
            raise TokenError("a spoken user turn needs at least one speech code")
        content = tok.encode("\n") + audio_span(tok, audio)
    else:
        content = tok.encode("\n" + text)
    return [tok.token_id("<|user|>"), *content, *answer_start(tok)]


def answer_start(tok: TextTokenizer) -> list[int]:
    """The ids every answer prompt ends with: ``<|assistant|> BPE("streaming_transcription\\n")``."""
    return [tok.token_id("<|assistant|>"), *tok.encode(ASSISTANT_TAG)]


def at_answer_start(tok: TextTokenizer, ids: Sequence[int]) -> bool:
    """Whether ``ids`` end where a streaming-thoughts answer begins (its first id is text, not a speech code)."""
    tail = answer_start(tok)
    return len(ids) >= len(tail) and list(ids[-len(tail):]) == tail


def build_turn(tok: TextTokenizer, *, text: str | None = None, audio: Sequence[int] | None = None,
               history: Sequence[int] | None = None, system: str | None = None) -> list[int]:
    """All prompt ids for the next answer: ``history`` (ids of earlier prompts and answers, or None for the first
    turn) followed by this user turn. On the first turn the system prompt is ``system`` or the official one for
    the input mode (audio / text)."""
    if history:
        head = list(history)
        if head[-1] == tok.token_id("<|user|>"):
            head.pop()
    else:
        if system is None:
            system = SYSTEM_PROMPT_AUDIO if audio is not None else SYSTEM_PROMPT_TEXT
        head = [*tok.prefix_ids, tok.token_id("<|system|>"), *tok.encode("\n" + system)]
    return head + user_turn(tok, text=text, audio=audio)
