"""Next-token choice as small pure functions on logits (B, V).

The official server samples with transformers 4.44 warpers in this order (SPEC §2.7): temperature, top-k (50, the
transformers default), top-p, then softmax and ``torch.multinomial``. We apply the same filters in the same order
(each one skipped at its neutral value, as transformers does) and sample from fp32 probabilities.
Temperature 0 means greedy (argmax).

``language_mask`` builds the language lock: a bool mask over the vocabulary that keeps every added token (audio
codes, begin/end of audio, stop tokens) and only those BPE tokens whose bytes belong to the language.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from glm4voice.errors import TokenError

# the official web demo's defaults (SPEC §2.7); top_k is transformers' default
DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_P = 0.8
DEFAULT_TOP_K = 50
LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = DEFAULT_TEMPERATURE  # 0: greedy
    top_k: int = DEFAULT_TOP_K  # 0: off
    top_p: float = DEFAULT_TOP_P  # 1.0: off
    seed: int | None = None

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"invalid sampling parameters {self}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (ties with the k-th kept), the rest -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (at least one), the rest -inf.

    transformers' order: ascending sort, drop tokens while the cumulative probability is <= 1 - p.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative <= 1 - p
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample(logits: Tensor, params: SamplingParams, generator: torch.Generator | None = None,
           allowed: Tensor | None = None) -> Tensor:
    """Next ids (B,) from logits (B, V). ``allowed``: bool (V,) mask of tokens that may be chosen."""
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed[: logits.shape[-1]], float("-inf"))
    if params.greedy:
        return logits.argmax(-1)
    logits = apply_temperature(logits, params.temperature)
    k = params.top_k
    if 0 < k < logits.shape[-1]:
        # Same distribution, without sorting the whole vocabulary (15 ms per token on CPU for 168,960 ids): when
        # exactly k logits reach the k-th value, top-p and the draw run on those k alone. Ties at the k-th value
        # (frequent with bf16 logits) are kept by transformers' top-k, so they take the full path below.
        values, index = torch.topk(logits, k, dim=-1)
        if bool(((logits >= values[:, -1:]).sum(-1) == k).all()):
            probs = top_p_filter(values, params.top_p).softmax(-1)
            return index.gather(-1, torch.multinomial(probs, 1, generator=generator))[:, 0]
    logits = top_p_filter(top_k_filter(logits, k), params.top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def sample_first(logits: Tensor, params: SamplingParams, generator: torch.Generator | None = None,
                 allowed: Tensor | None = None, first: Tensor | None = None) -> int:
    """One id from ``logits`` (V,) for the first position of an answer. Drawn as ``sample`` does; when ``first``
    (bool (V,)) is given and that draw falls outside it, drawn again among ``first`` (and ``allowed``). A first
    draw inside ``first`` is returned as is, with the random generator advanced exactly as ``sample`` advances it,
    so seeded and greedy answers that already start inside ``first`` are unchanged."""
    token = int(sample(logits[None], params, generator, allowed)[0])
    if first is None or bool(first[token]):
        return token
    return int(sample(logits[None], params, generator, first if allowed is None else allowed & first)[0])


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A seeded generator on ``device`` (None without a seed: the global RNG)."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


# --- language lock -----------------------------------------------------------------------------------------
def _ascii_ok(b: int) -> bool:
    return b in (9, 10, 13) or 32 <= b < 127


def _cjk_char(c: str) -> bool:
    o = ord(c)
    return 0x4E00 <= o <= 0x9FFF or 0x3000 <= o <= 0x303F or 0xFF00 <= o <= 0xFFEF or 0x3400 <= o <= 0x4DBF


def token_in_language(token: bytes, language: str) -> bool:
    """Whether a BPE token may appear in text of ``language``: "en" = printable ASCII and whitespace only;
    "zh" = ASCII plus CJK ideographs and CJK/full-width punctuation (fragments of such characters included)."""
    if language == "en":
        return all(_ascii_ok(b) for b in token)
    if language == "zh":  # bytes of a cut character: continuation bytes and the lead bytes of U+3000-U+FFFF
        text = token.decode("utf-8", errors="ignore")
        return (all(_ascii_ok(b) or 0x80 <= b <= 0xBF or 0xE3 <= b <= 0xE9 or b == 0xEF for b in token)
                and all(c.isascii() or _cjk_char(c) for c in text))
    raise TokenError(f"unknown language {language!r}; expected one of {LANGUAGES}")


def language_mask(tok, language: str, vocab_size: int, device: torch.device | str = "cpu") -> Tensor:
    """Bool (vocab_size,): True for every added token of ``tok`` and the BPE tokens of ``language``.

    Ids the tokenizer does not define (the padding rows of the embedding) are never allowed.
    """
    if language not in LANGUAGES:
        raise TokenError(f"unknown language {language!r}; expected one of {LANGUAGES}")
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    n = min(tok.n_ranks, vocab_size)
    allowed[:n] = torch.tensor([token_in_language(tok.token_bytes(i), language) for i in range(n)], dtype=torch.bool)
    added = [i for i in tok.added.values() if i < vocab_size]
    allowed[added] = True
    return allowed.to(device)


def no_audio_mask(tok, vocab_size: int, device: torch.device | str = "cpu") -> Tensor:
    """Bool (vocab_size,): True for every id but the ``<|audio_N|>`` speech codes of ``tok`` (the ids a
    streaming-thoughts answer may start with: its text comes first, SPEC §2.6)."""
    mask = torch.ones(vocab_size, dtype=torch.bool)
    if tok.codebook_size > 0:
        mask[tok.audio_offset:tok.audio_offset + tok.codebook_size] = False
    return mask.to(device)
