"""The text-to-token model: text -> speech tokens, used to make interleaved speech-text data from text (paper §2.2).

A small decoder-only GLM (the same ``glm4voice.lm`` model and tokenizer as the LM, so its export is an ordinary
official-format folder) over ``[gMASK] <sop> BPE(text) <|begin_of_audio|> codes <|end_of_audio|>``, trained with the
loss on the codes and ``<|end_of_audio|>``, on the (text, cached speech tokens) pairs of a corpus. Generation
prefills the text and ``<|begin_of_audio|>`` and samples audio tokens only until ``<|end_of_audio|>``.

Train: ``glm4voice train text2token --corpus C --tokenizer T --out runs/t2t --export models/t2t``;
use: ``TextToToken.from_dir("models/t2t").generate(["some text"])`` or ``glm4voice train interleave``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from glm4voice.errors import ConfigError
from glm4voice.train import lm_samples as ls
from glm4voice.train.lm_trainer import (
    EXPORT_DTYPES,
    LMSpec,
    evaluate_batches,
    export,
    lm_loss,
    load_text_tokenizer,
)

log = logging.getLogger("glm4voice.train.text2token")

CODES_PER_TEXT_TOKEN = 12  # generation budget: at most this many codes per text token (+ MIN_CODES)
MIN_CODES = 25  # 2 s at 12.5 Hz


# Size of the text-to-token model: a few million parameters, enough for our narrow domain (an LMSpec, since the
# model is a GLM like the LM; only the defaults differ).
T2T_DEFAULTS = LMSpec(hidden=256, layers=4, heads=4, kv_heads=2, head_dim=64, ffn=768, seq_length=1024)


def t2t_sample(tok, sp: ls.Specials, text: str, codes) -> ls.Sample:
    """``[gMASK] <sop> BPE(text) <|begin_of_audio|> | codes <|end_of_audio|>`` with the loss after the bar."""
    prompt = [sp.gmask, sp.sop, *tok.encode(text), sp.boa]
    target = [*sp.audio_ids(codes), sp.eoa]
    return ls.Sample(prompt + target, [False] * len(prompt) + [True] * len(target), "t2t")


class T2TData:
    """Draws (text, codes) utterances uniformly; a ``draw`` for ``lm_samples.pack_batch``."""

    def __init__(self, tok, sp: ls.Specials, utts: list[ls.Utt]):
        if not utts:
            raise ConfigError("no utterances with speech tokens for the text-to-token model")
        self.tok, self.sp, self.utts = tok, sp, utts

    def draw(self, rng: random.Random) -> list[ls.Sample]:
        u = self.utts[rng.randrange(len(self.utts))]
        return [t2t_sample(self.tok, self.sp, u.text, u.codes)]


class TextToToken:
    """A trained text-to-token model with its tokenizer."""

    def __init__(self, model: nn.Module, tok, sp: ls.Specials):
        self.model, self.tok, self.sp = model.eval(), tok, sp

    @classmethod
    def from_dir(cls, folder: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> TextToToken:
        from glm4voice.lm.load import load_lm

        tok = load_text_tokenizer(folder)
        return cls(load_lm(folder, device=device, dtype=dtype), tok, ls.Specials.from_tokenizer(tok))

    @torch.inference_mode()
    def generate(self, texts: list[str], *, temperature: float = 0.8, top_k: int = 50, seed: int = 0,
                 max_codes: int | None = None) -> list[np.ndarray]:
        """Speech codes for each text (temperature 0: greedy). The texts decode together, one KV-cache slot each
        (``glm4voice.lm.generate.Generator``); a text stops at ``<|end_of_audio|>`` or its budget of codes."""
        from glm4voice.lm.generate import Generator
        from glm4voice.lm.sampling import SamplingParams, make_generator, sample

        if not texts:
            return []
        sp = self.sp
        prompts = [[sp.gmask, sp.sop, *self.tok.encode(t), sp.boa] for t in texts]
        budgets = [max_codes or MIN_CODES + CODES_PER_TEXT_TOKEN * (len(p) - 3) for p in prompts]
        max_seq = min(max(len(p) + b + 1 for p, b in zip(prompts, budgets, strict=True)),
                      self.model.cfg.seq_length)
        gen = Generator(self.model, len(texts), max_seq)
        allowed = torch.zeros(self.model.cfg.padded_vocab_size, dtype=torch.bool, device=gen.device)
        allowed[sp.audio_offset:sp.audio_offset + sp.codebook_size] = True
        allowed[sp.eoa] = True
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=1.0, seed=seed)
        rng = make_generator(seed, gen.device)
        logits = torch.stack([gen.prefill(p, slot=i) for i, p in enumerate(prompts)])
        codes: list[list[int]] = [[] for _ in texts]
        active = list(range(len(texts)))
        while active:
            nxt = sample(logits, params, rng, allowed).tolist()
            still = []
            for slot, token in zip(active, nxt, strict=True):
                if token == sp.eoa:
                    continue
                codes[slot].append(token - sp.audio_offset)
                if len(codes[slot]) < budgets[slot] and len(gen.held[slot]) + 1 < max_seq:
                    still.append((slot, token))
            active = [s for s, _ in still]
            if active:
                logits = gen.decode_step([t for _, t in still], active)
        return [np.asarray(c, dtype=np.int32) for c in codes]


# ---- entry point ---------------------------------------------------------------------------------------------------

def add_args(parser: argparse.ArgumentParser) -> None:
    from glm4voice.train.engine import add_train_args

    parser.add_argument("--corpus", required=True, help="corpus folder with cached speech tokens")
    parser.add_argument("--tokenizer", required=True, help="text tokenizer folder (the LM's)")
    parser.add_argument("--role", choices=("all", "answer", "question"), default="all",
                        help="train on these utterances (answer: the target voice only)")
    parser.add_argument("--seq-len", type=int, default=512, help="packed row length (tokens)")
    parser.add_argument("--eval-batches", type=int, default=4)
    parser.add_argument("--export", default=None, help="write the final model here (official format)")
    parser.add_argument("--export-dtype", choices=sorted(EXPORT_DTYPES), default="bf16")
    parser.add_argument("--until", type=int, default=None, help="stop at this step (continue later)")
    for f in fields(LMSpec):
        parser.add_argument("--" + f.name.replace("_", "-"), type=int, default=getattr(T2T_DEFAULTS, f.name),
                            help="model size")
    add_train_args(parser, lr=1e-3, steps=2000, batch_size=16, warmup=100, eval_every=200, save_every=100)


def _utterances(corpus: str, split: str, role: str) -> list[ls.Utt]:
    data = ls.load_lm_data(corpus, split=split, with_item_texts=False)
    if role == "all":
        return data.utterances
    from glm4voice.train.corpus import MANIFEST

    with open(Path(corpus) / MANIFEST, encoding="utf-8") as f:
        roles = {}
        for line in f:
            try:
                r = json.loads(line)
                roles[r["id"]] = r.get("role")
            except (json.JSONDecodeError, KeyError):
                continue
    return [u for u in data.utterances if roles.get(u.id) == role]


def main(args: argparse.Namespace) -> int:
    from glm4voice.lm.model import GLM
    from glm4voice.train.engine import Trainer, config_from_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = config_from_args(args)
    tok = load_text_tokenizer(args.tokenizer)
    sp = ls.Specials.from_tokenizer(tok)
    train = T2TData(tok, sp, _utterances(args.corpus, "train", args.role))
    held = _utterances(args.corpus, "heldout", args.role)
    spec = LMSpec(**{f.name: getattr(args, f.name) for f in fields(LMSpec)})
    torch.manual_seed(cfg.seed)
    model = GLM(spec.glm_config(tok))
    model.init_weights()
    log.info("text2token: %d train / %d held-out utterances, %.2fM parameters", len(train.utts), len(held),
             sum(p.numel() for p in model.parameters()) / 1e6)
    eval_fn = None
    if held and args.eval_batches:
        hd = T2TData(tok, sp, held)
        fixed = [ls.pack_batch(hd.draw, seed=10_000 + cfg.seed, step=i, rank=0, batch_size=cfg.batch_size,
                               seq_len=args.seq_len, pad_id=sp.eot) for i in range(args.eval_batches)]
        eval_fn = lambda m: evaluate_batches(m, fixed, sp)  # noqa: E731
    batch_fn = lambda step, rank, world: ls.pack_batch(  # noqa: E731
        train.draw, seed=cfg.seed, step=step, rank=rank, batch_size=cfg.batch_size, seq_len=args.seq_len,
        pad_id=sp.eot)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out_dir) / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
    trainer = Trainer(cfg, model, batch_fn=batch_fn, loss_fn=lambda m, b: lm_loss(m, b, sp), eval_fn=eval_fn)
    trainer.fit(until=args.until)
    if args.export and trainer.step >= cfg.steps and trainer.is_main:
        export(trainer.model, args.export, args.tokenizer, dtype=args.export_dtype)
        log.info("exported the text-to-token model to %s", args.export)
    return 0
