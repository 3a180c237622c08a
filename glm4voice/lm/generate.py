"""Fast generation: a static KV cache with explicit positions, prefill and one-token decode steps over batch slots.

- ``KVCache`` preallocates keys/values for ``max_batch`` slots x ``max_seq`` positions; the model writes each
  chunk at its explicit positions (no ``torch.cat`` per step, SPEC §6.11) and attends to entries 0..position.
- ``Generator`` owns a cache and remembers, per slot, the ids whose keys/values it holds. ``prefill(ids, slot)``
  reuses the longest common prefix with what the slot holds (a new turn of a conversation only computes its own
  tokens) and returns the next-token logits; ``decode_step(ids, slots)`` advances several slots by one token
  each, every slot at its own position.
- ``Generator.generate`` is an iterator of ids for one slot: sample, yield, stop on a stop id or the limit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from glm4voice.errors import ContextLengthError, TokenError
from glm4voice.lm.model import GLM
from glm4voice.lm.sampling import SamplingParams, make_generator, sample_first

DEFAULT_SAMPLING = SamplingParams()


class KVCache:
    """Keys and values of every layer: (layers, max_batch, kv_heads, max_seq, head_dim) each."""

    def __init__(self, model: GLM, max_batch: int, max_seq: int, *, device=None, dtype=None):
        cfg = model.cfg
        shape = (cfg.num_layers, max_batch, cfg.num_kv_heads, max_seq, cfg.head_dim)
        device, dtype = device or model.device, dtype or model.dtype
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_batch, self.max_seq = max_batch, max_seq
        self._range = torch.arange(max_seq, device=device)

    def update(self, layer: int, k: Tensor, v: Tensor, positions: Tensor, slots: Tensor | None,
               kv_len: int | None) -> tuple[Tensor, Tensor]:
        """Write k, v (B, kv_heads, T, head_dim) of batch row b at (slot b, positions[b]); return the first
        ``kv_len`` entries of those slots (B, kv_heads, kv_len, head_dim)."""
        kc, vc = self.k[layer], self.v[layer]
        rows = slots if slots is not None else torch.arange(k.shape[0], device=k.device)
        kc[rows[:, None], :, positions] = k.transpose(1, 2)
        vc[rows[:, None], :, positions] = v.transpose(1, 2)
        n = kv_len or self.max_seq
        if slots is None:
            return kc[: k.shape[0], :, :n], vc[: k.shape[0], :, :n]
        return kc[slots, :, :n], vc[slots, :, :n]

    def mask(self, positions: Tensor, kv_len: int | None) -> Tensor:
        """Bool (B, 1, T, kv_len): query at position p sees cache entries 0..p of its slot."""
        return (self._range[: kv_len or self.max_seq] <= positions[..., None])[:, None]


class Generator:
    """Prefill / decode over a static cache of ``max_batch`` slots (one per conversation)."""

    def __init__(self, model: GLM, max_batch: int = 1, max_seq: int | None = None, *, device=None, dtype=None,
                 static_shapes: bool = False):
        """``static_shapes``: decode steps attend over the whole cache (masked) instead of its used part, so every
        step of a given batch size has the same shapes (what CUDA graphs / torch.compile need); slower in eager
        mode for short contexts."""
        max_seq = max_seq or model.cfg.seq_length
        if max_seq > model.cfg.seq_length:
            raise ContextLengthError(f"max_seq {max_seq} exceeds the model's context {model.cfg.seq_length}")
        self.model = model
        self.cache = KVCache(model, max_batch, max_seq, device=device, dtype=dtype)
        self.device = self.cache.k.device
        self.held: list[list[int]] = [[] for _ in range(max_batch)]  # ids whose keys/values each slot holds
        self.static_shapes = static_shapes

    @property
    def max_seq(self) -> int:
        return self.cache.max_seq

    def reset(self, slot: int) -> None:
        """Forget a slot's contents (its cache rows are simply overwritten later)."""
        self.held[slot] = []

    def _check(self, ids: Sequence[int]) -> None:
        vocab = self.model.cfg.padded_vocab_size
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise TokenError(f"token id {bad[0]} outside the model's vocabulary 0..{vocab - 1}")

    @torch.inference_mode()
    def prefill(self, ids: Sequence[int], slot: int = 0) -> Tensor:
        """Make ``slot`` hold ``ids`` (reusing the common prefix it already holds); logits (vocab,) of the next id."""
        ids = [int(i) for i in ids]
        if not ids:
            raise TokenError("cannot prefill an empty prompt")
        if len(ids) > self.max_seq:
            raise ContextLengthError(f"prompt of {len(ids)} tokens exceeds the context of {self.max_seq}")
        self._check(ids)
        held = self.held[slot]
        start = 0
        while start < min(len(held), len(ids) - 1) and held[start] == ids[start]:
            start += 1  # keep at least one new token: its logits are the answer
        self.held[slot] = ids[:start]  # what stays valid if the forward fails
        new = torch.tensor(ids[start:], device=self.device)[None]
        positions = torch.arange(start, len(ids), device=self.device)[None]
        logits = self.model(new, positions, cache=self.cache, slots=torch.tensor([slot], device=self.device),
                            kv_len=len(ids), last_only=True)
        self.held[slot] = ids
        return logits[0, -1]

    @torch.inference_mode()
    def decode_step(self, ids: Sequence[int] | Tensor, slots: Sequence[int]) -> Tensor:
        """Append one id to each slot (every slot at its own position); logits (len(slots), vocab)."""
        ids, slots = [int(i) for i in ids], [int(s) for s in slots]
        self._check(ids)
        if len(set(slots)) != len(slots):
            raise ValueError(f"a slot appears twice in one decode step: {slots}")
        lengths = [len(self.held[s]) for s in slots]
        if max(lengths) >= self.max_seq:
            raise ContextLengthError(f"slot {slots[lengths.index(max(lengths))]} is full ({self.max_seq} tokens)")
        # slots 0..B-1 in any order run in slot order on views of the cache (no gather of the slots' keys/values)
        order = sorted(range(len(slots)), key=slots.__getitem__)
        first = [slots[i] for i in order] == list(range(len(slots)))
        if not first:
            order = list(range(len(slots)))
        pick = lambda xs: torch.tensor([xs[i] for i in order], device=self.device)[:, None]  # noqa: E731
        logits = self.model(pick(ids), pick(lengths), cache=self.cache, slots=None if first else pick(slots)[:, 0],
                            kv_len=None if self.static_shapes else max(lengths) + 1)[:, -1]
        for s, i in zip(slots, ids, strict=True):
            self.held[s].append(i)
        if order == sorted(order):
            return logits
        return logits[torch.tensor(order, device=self.device).argsort()]

    def generate(self, prompt: Sequence[int], *, slot: int = 0, params: SamplingParams = DEFAULT_SAMPLING,
                 max_new_tokens: int = 2000, stop_ids: Sequence[int] = (), allowed: Tensor | None = None,
                 first: Tensor | None = None) -> Iterator[int]:
        """Generated ids (a stop id included, then nothing more); ends at ``max_new_tokens`` or a full context.
        ``allowed``: bool (V,) mask of the ids that may be drawn; ``first``: the ids the first one must be among
        (drawn again among them if the free draw is not; ``sampling.sample_first``)."""
        rng = make_generator(params.seed, self.device)
        stop = set(stop_ids)
        logits = self.prefill(prompt, slot)
        for n in range(max_new_tokens):
            token = sample_first(logits, params, rng, allowed, first if n == 0 else None)
            yield token
            if token in stop or n + 1 == max_new_tokens or len(self.held[slot]) >= self.max_seq:
                return
            logits = self.decode_step([token], [slot])[0]


def generate(model: GLM, prompt: Sequence[int], *, params: SamplingParams = DEFAULT_SAMPLING,
             max_new_tokens: int = 2000, stop_ids: Sequence[int] = (), allowed: Tensor | None = None,
             max_seq: int | None = None, first: Tensor | None = None) -> Iterator[int]:
    """One-off generation with a fresh one-slot cache sized to the prompt plus the new tokens."""
    if len(prompt) > model.cfg.seq_length:
        raise ContextLengthError(f"prompt of {len(prompt)} tokens exceeds the context of {model.cfg.seq_length}")
    gen = Generator(model, 1, min(max_seq or len(prompt) + max_new_tokens, model.cfg.seq_length))
    return gen.generate(prompt, params=params, max_new_tokens=max_new_tokens, stop_ids=stop_ids, allowed=allowed,
                        first=first)
