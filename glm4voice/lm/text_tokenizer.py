"""The GLM-4 text tokenizer (tiktoken BPE + added tokens), reading the official files (SPEC §2.5).

Files: ``tokenizer.model`` (one ``base64(bytes) rank`` line per BPE token, ranks 0..N-1) and
``tokenizer_config.json`` (Hugging Face format; ``added_tokens_decoder`` maps ids >= N to the special and audio
tokens). The same format is written by ``glm4voice.train.bpe`` for our own models; the official checkpoint has a
gap of other added tokens before ``<|audio_0|>``, ours does not, and both are read by name.

Encoding: the official (HF) tokenizer first splits text on added tokens, then BPE-encodes each span with the GLM-4
pre-tokenisation pattern. ``encode(text)`` by default treats ``<|...|>`` strings in the text as plain text (so a
user cannot inject a turn marker); ``allow_special=True`` reproduces the official string-level behaviour.
Decoding concatenates token bytes and decodes UTF-8 with ``errors="replace"`` (special tokens as their names).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import os
from pathlib import Path

from glm4voice.constants import AUDIO_TOKEN_FORMAT, BEGIN_OF_AUDIO, END_OF_AUDIO, SPECIAL_TOKENS
from glm4voice.errors import CheckpointError, TokenError

# SPEC §2.5: the tiktoken pat_str of GLM-4 (tokenization_chatglm.py of GLM-4-9B)
GLM4_PAT_STR = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
TOKENIZER_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
PREFIX_TOKENS = ("[gMASK]", "<sop>")  # get_prefix_tokens() of ChatGLM4Tokenizer
STOP_TOKENS = ("<|user|>", "<|endoftext|>", "<|observation|>")  # the release's eos_token_id list (SPEC §2.7)


def read_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """``tokenizer.model`` -> {token bytes: rank}; a corrupt file raises CheckpointError naming the line."""
    ranks: dict[bytes, int] = {}
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as e:
        raise CheckpointError(f"cannot read tokenizer ranks {path}: {e}") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as e:
            raise CheckpointError(f"{path}:{n}: expected 'base64 rank', got {line[:60]!r}") from e
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise CheckpointError(f"{path}: ranks must be 0..N-1 over distinct tokens ({len(ranks)} tokens read)")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise CheckpointError(f"{path}: a byte-level BPE needs all 256 single bytes; missing {missing[:8]}")
    return ranks


def read_added_tokens(path: str | os.PathLike) -> dict[str, int]:
    """``tokenizer_config.json`` -> {added token: id} from ``added_tokens_decoder``."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
        return {v["content"]: int(k) for k, v in config.get("added_tokens_decoder", {}).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a tokenizer_config.json with added_tokens_decoder ({e})") from e


class TextTokenizer:
    """Text <-> ids of the GLM-4 vocabulary, special tokens by name, audio tokens <-> speech codes."""

    def __init__(self, ranks: dict[bytes, int], added: dict[str, int], *, name: str = "glm4"):
        import tiktoken

        n = len(ranks)
        added = dict(added)
        for i, special in enumerate(SPECIAL_TOKENS):  # built-ins numbered from N when a config omits them
            added.setdefault(special, n + i)
        clash = sorted(k for k, v in added.items() if v < n)
        if clash or len(set(added.values())) != len(added):
            raise CheckpointError(f"added tokens overlap the BPE ranks or each other: {clash[:5]}")
        self._enc = tiktoken.Encoding(name, pat_str=GLM4_PAT_STR, mergeable_ranks=ranks, special_tokens=added)
        self.n_ranks = n
        self.added = added
        self._names = {v: k for k, v in added.items()}
        self._bytes = [b"" for _ in range(n)]
        for token, rank in ranks.items():
            self._bytes[rank] = token
        self.vocab_size = max(added.values()) + 1
        self.audio_offset = added.get(AUDIO_TOKEN_FORMAT.format(0), -1)
        self.codebook_size = 0  # number of contiguous <|audio_N|> tokens
        while added.get(AUDIO_TOKEN_FORMAT.format(self.codebook_size)) == self.audio_offset + self.codebook_size:
            self.codebook_size += 1

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> TextTokenizer:
        folder = Path(path)
        for f in (TOKENIZER_MODEL, TOKENIZER_CONFIG):
            if not (folder / f).is_file():
                raise CheckpointError(f"tokenizer folder {folder} lacks {f}")
        return cls(read_ranks(folder / TOKENIZER_MODEL), read_added_tokens(folder / TOKENIZER_CONFIG))

    # --- ids by name ------------------------------------------------------------------------------------
    def token_id(self, name: str) -> int:
        if name not in self.added:
            raise TokenError(f"the tokenizer has no token {name!r}")
        return self.added[name]

    @property
    def prefix_ids(self) -> list[int]:
        """[gMASK] <sop>, which the official tokenizer puts before every prompt."""
        return [self.token_id(t) for t in PREFIX_TOKENS]

    @property
    def stop_ids(self) -> frozenset[int]:
        return frozenset(self.token_id(t) for t in STOP_TOKENS)

    # --- text -------------------------------------------------------------------------------------------
    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """BPE ids of ``text`` (no prefix). ``allow_special``: added-token strings become their ids (official)."""
        if allow_special:
            return self._enc.encode(text, allowed_special="all")
        return self._enc.encode_ordinary(text)

    def token_bytes(self, token_id: int) -> bytes:
        """Bytes of a BPE token; an added token's name as UTF-8."""
        if 0 <= token_id < self.n_ranks:
            return self._bytes[token_id]
        if token_id in self._names:
            return self._names[token_id].encode()
        raise TokenError(f"token id {token_id} is not in the vocabulary (0..{self.vocab_size - 1}, with gaps)")

    def decode(self, ids) -> str:
        """Text of ``ids``: byte tokens joined and decoded as UTF-8 (errors replaced), added tokens by name."""
        dec = self.stream_decoder()
        return "".join(dec.push(int(i)) for i in ids) + dec.flush()

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    # --- audio ------------------------------------------------------------------------------------------
    def is_audio(self, token_id: int) -> bool:
        return 0 <= token_id - self.audio_offset < self.codebook_size

    def audio_code(self, token_id: int) -> int:
        """Speech-codebook index of an ``<|audio_N|>`` id."""
        if not self.is_audio(token_id):
            raise TokenError(f"token id {token_id} is not an audio token ({self.audio_offset}.."
                             f"{self.audio_offset + self.codebook_size - 1})")
        return token_id - self.audio_offset

    def audio_id(self, code: int) -> int:
        if not 0 <= code < self.codebook_size:
            raise TokenError(f"speech code {code} outside the codebook 0..{self.codebook_size - 1}")
        return self.audio_offset + code

    def audio_ids(self, codes) -> list[int]:
        """Ids of speech codes (without the begin/end-of-audio markers; see ``prompt.py``)."""
        return [self.audio_id(int(c)) for c in codes]

    @property
    def begin_of_audio(self) -> int:
        return self.token_id(BEGIN_OF_AUDIO)

    @property
    def end_of_audio(self) -> int:
        return self.token_id(END_OF_AUDIO)


class StreamDecoder:
    """Incremental decoding: ``push(id)`` returns the text that became final, holding back a partial UTF-8
    character until its last byte arrives; ``flush()`` ends the stream. ``"".join(pushes) + flush()`` equals
    ``decode(ids)`` for any id sequence."""

    def __init__(self, tok: TextTokenizer):
        self.tok = tok
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if 0 <= token_id < self.tok.n_ranks:
            return self._utf8.decode(self.tok.token_bytes(token_id))
        name = self.tok.token_bytes(token_id).decode()  # raises TokenError for an unknown id
        return self.flush() + name

    def flush(self) -> str:
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text
