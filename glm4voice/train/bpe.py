"""A byte-level BPE for our own models, trained with HF ``tokenizers`` and saved in the official GLM-4 format.

Official format (SPEC §2.5): ``tokenizer.model`` holds one line per BPE token, ``base64(token bytes) rank``, ranks
0..N-1, read by tiktoken with the GLM-4 pre-tokenisation regex; ``tokenizer_config.json`` (Hugging Face format) lists
the special tokens in ``added_tokens_decoder``, numbered right after the ranks: the 14 GLM-4 specials, then
``<|begin_of_audio|>``, ``<|end_of_audio|>`` and ``<|audio_0|>`` ... ``<|audio_{K-1}|>`` (contiguous). The official
checkpoint leaves a gap of other added tokens before ``<|audio_0|>``; readers look ids up by name, so a contiguous
layout is served by the same loader.

Ranks are the trainer's ids, which follow its merge order: the 256 single bytes first, then each merge's result.
tiktoken merges the adjacent pair whose concatenation has the lowest rank, which is the merge order HF applies, so
the two give the same ids (checked by tests/test_bpe.py on thousands of sentences).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Iterator
from functools import lru_cache

from glm4voice.constants import AUDIO_TOKEN_FORMAT, BEGIN_OF_AUDIO, END_OF_AUDIO, SPECIAL_TOKENS

# SPEC §2.5, the tiktoken pat_str of GLM-4 (GLM-4-9B tokenization_chatglm.py)
GLM4_PAT_STR = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
TOKENIZER_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
DEFAULT_VOCAB_SIZE = 4000  # BPE ranks for the embedded model (issue 7): small softmax, still whole common words
DEFAULT_MODEL_MAX_LENGTH = 8192


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """The byte -> printable character map of byte-level BPE (GPT-2), which HF ``ByteLevel`` uses.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to code points 256, 257, ... in byte order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _token_bytes(token: str) -> bytes:
    inverse = {c: b for b, c in byte_alphabet().items()}
    return bytes(inverse[c] for c in token)


def train_bpe(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, *, min_frequency: int = 2):
    """Train a byte-level BPE with ``vocab_size`` ranks (256 bytes + merges) and the GLM-4 pre-tokeniser.

    Returns a ``tokenizers.Tokenizer`` (no special tokens; they are numbered when saving).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size <= 256:
        raise ValueError(f"vocab_size must exceed the 256 byte tokens, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM4_PAT_STR), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def ranks_from_tokenizer(tok) -> dict[bytes, int]:
    """tiktoken ranks of a trained byte-level BPE: rank = the tokenizer's own id, so both give identical ids.

    The trainer numbers the 256 byte symbols 0..255 and then each merge's result in merge order; this checks that
    (all bytes present, ids contiguous, merge results increasing) instead of trusting it.
    """
    model = json.loads(tok.to_str())["model"]
    ranks = {_token_bytes(token): i for token, i in model["vocab"].items()}
    if sorted(ranks.values()) != list(range(len(ranks))) or len(ranks) != len(model["vocab"]):
        raise ValueError("BPE vocabulary ids are not contiguous 0..N-1 over distinct byte strings")
    if any(bytes([b]) not in ranks or ranks[bytes([b])] >= 256 for b in range(256)):
        raise ValueError("BPE vocabulary must hold all 256 single bytes as its first ids")
    last = 255
    for merge in model["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        rank = ranks[_token_bytes(left) + _token_bytes(right)]
        if rank <= last:
            raise ValueError(f"merge {left!r}+{right!r} gives rank {rank} out of merge order (after {last})")
        last = rank
    return ranks


def special_token_ids(n_ranks: int, codebook_size: int) -> dict[str, int]:
    """Specials in the official order, numbered from ``n_ranks``; audio tokens contiguous after begin/end of audio."""
    audio = [AUDIO_TOKEN_FORMAT.format(i) for i in range(codebook_size)]
    names = [*SPECIAL_TOKENS, BEGIN_OF_AUDIO, END_OF_AUDIO, *audio]
    return {name: n_ranks + i for i, name in enumerate(names)}


def save_glm4_tokenizer(ranks: dict[bytes, int], out_dir: str, *, codebook_size: int,
                        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> dict[str, int]:
    """Write ``tokenizer.model`` and ``tokenizer_config.json``; returns the special-token ids."""
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError("ranks must be exactly 0..N-1")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"byte-level BPE needs all 256 single bytes; missing {missing[:8]}")
    os.makedirs(out_dir, exist_ok=True)
    lines = [f"{base64.b64encode(t).decode()} {r}\n" for t, r in sorted(ranks.items(), key=lambda kv: kv[1])]
    _write_atomic(os.path.join(out_dir, TOKENIZER_MODEL), "".join(lines))
    specials = special_token_ids(len(ranks), codebook_size)
    added = {str(i): {"content": name, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for name, i in specials.items()}
    config = {
        "added_tokens_decoder": added,
        "clean_up_tokenization_spaces": False,
        "do_lower_case": False,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "model_input_names": ["input_ids", "attention_mask", "position_ids"],
        "model_max_length": model_max_length,
        "padding_side": "left",
        "remove_space": False,
        "tokenizer_class": "ChatGLM4Tokenizer",
    }
    _write_atomic(os.path.join(out_dir, TOKENIZER_CONFIG), json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return specials


def _write_atomic(path: str, text: str) -> None:
    with open(path + ".part", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".part", path)


def load_ranks(path: str) -> dict[bytes, int]:
    """Read a ``tokenizer.model`` (the official GLM-4 file or ours)."""
    ranks = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{path}:{n}: expected 'base64 rank', got {line[:60]!r}") from e
    return ranks


def load_specials(path: str) -> dict[str, int]:
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    return {v["content"]: int(k) for k, v in config.get("added_tokens_decoder", {}).items()}


def load_tiktoken(folder: str, name: str = "glm4voice-bpe"):
    """A ``tiktoken.Encoding`` over ``folder``'s ``tokenizer.model`` and its specials (both formats)."""
    import tiktoken

    ranks = load_ranks(os.path.join(folder, TOKENIZER_MODEL))
    specials = load_specials(os.path.join(folder, TOKENIZER_CONFIG))
    return tiktoken.Encoding(name, pat_str=GLM4_PAT_STR, mergeable_ranks=ranks, special_tokens=specials)


def corpus_texts(items_path: str | None = None, *, seed: int = 0, extra_sources: bool = True) -> Iterator[str]:
    """Text for BPE training: every item's question and answer, plus (optionally) the wider sources they came from
    (fortunes en/zh, chatterbot, WordNet glosses) so that rarer words still get sensible pieces."""
    from glm4voice.train import texts

    items = texts.read_items(items_path) if items_path else texts.build_items(seed)
    yield from texts.all_text(items)
    if extra_sources:
        yield from texts.english_phrases()
        yield from texts.chinese_phrases()
        for lang in ("en", "zh"):
            for q, a in texts.chatterbot_pairs(lang, 10_000):
                yield q
                yield a
        for word, gloss in texts.wordnet_definitions(20_000):
            yield f"{word}: {gloss}"


def build(out_dir: str, *, vocab_size: int = DEFAULT_VOCAB_SIZE, codebook_size: int, items_path: str | None = None,
          seed: int = 0, min_frequency: int = 2) -> dict:
    """Train on our text and save in the GLM-4 format; returns a summary (ranks, specials, first audio id)."""
    tok = train_bpe(corpus_texts(items_path, seed=seed), vocab_size, min_frequency=min_frequency)
    ranks = ranks_from_tokenizer(tok)
    specials = save_glm4_tokenizer(ranks, out_dir, codebook_size=codebook_size)
    return {"ranks": len(ranks), "specials": len(specials), "vocab_size": len(ranks) + len(specials),
            "audio_0": specials[AUDIO_TOKEN_FORMAT.format(0)], "out": out_dir}
