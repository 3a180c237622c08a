"""Split generated ids into text, speech codes and the end of the answer (SPEC §2.7, web_demo.py).

The official demo sends every id >= ``<|audio_0|>`` to the speech decoder, which overflows the decoder's codebook
for the padding ids above ``<|audio_16383|>`` (SPEC §6.12). Here an id is a speech code only if it is one of the
tokenizer's ``<|audio_N|>`` tokens; text is only BPE tokens; every other id (markup such as ``<|begin_of_audio|>``,
padding rows) is reported as ``Other`` and reaches neither the text nor the decoder.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from glm4voice.lm.text_tokenizer import TextTokenizer


@dataclass(frozen=True)
class TextPiece:
    id: int
    text: str  # the text that became final with this id ("" while a UTF-8 character is incomplete)


@dataclass(frozen=True)
class AudioCode:
    id: int
    code: int  # speech-codebook index, 0 <= code < codebook size


@dataclass(frozen=True)
class Stop:
    reason: str  # "stop_token" or "length"
    id: int | None = None  # the stop id (<|user|>, <|endoftext|>, <|observation|>) or None at the limit
    text: str = ""  # text still held by the UTF-8 decoder, flushed at the end


@dataclass(frozen=True)
class Other:
    id: int  # neither text nor a speech code: never shown, never decoded


class Router:
    """``route(id)`` for one answer; holds the incremental UTF-8 decoder of its text."""

    def __init__(self, tok: TextTokenizer, stop_ids: Iterable[int] | None = None):
        self.tok = tok
        self.stop_ids = frozenset(tok.stop_ids if stop_ids is None else stop_ids)
        self._text = tok.stream_decoder()

    def route(self, token_id: int) -> TextPiece | AudioCode | Stop | Other:
        if token_id in self.stop_ids:
            return Stop("stop_token", token_id, self._text.flush())
        if self.tok.is_audio(token_id):
            return AudioCode(token_id, self.tok.audio_code(token_id))
        if 0 <= token_id < self.tok.n_ranks:
            return TextPiece(token_id, self._text.push(token_id))
        return Other(token_id)

    def finish(self) -> Stop:
        """The answer ended without a stop id (token limit or full context)."""
        return Stop("length", None, self._text.flush())


def route_stream(tok: TextTokenizer, ids: Iterable[int], stop_ids: Iterable[int] | None = None
                 ) -> Iterator[TextPiece | AudioCode | Stop | Other]:
    """Route a stream of generated ids; always ends with exactly one ``Stop``."""
    router = Router(tok, stop_ids)
    for token_id in ids:
        event = router.route(int(token_id))
        yield event
        if isinstance(event, Stop):
            return
    yield router.finish()
