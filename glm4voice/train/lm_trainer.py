"""Train the GLM language model: pre-training on a sample mixture, then SFT; or fine-tune an official checkpoint.

Stages (``--stage``) are separate runs, each with its own run folder, chained by ``--init``::

    glm4voice train lm --stage pretrain --corpus C --tokenizer T --out runs/lm-pt --export models/lm-pt
    glm4voice train lm --stage sft --corpus C --init models/lm-pt --out runs/lm-sft --export models/lm

``--stage`` only picks the default mixture (``lm_samples.DEFAULT_MIX``); ``--mix kind=ratio,...`` sets any other.
With ``--init`` the run starts from an official-format folder (``config.json`` + safetensors + tokenizer files,
the released GLM-4-Voice-9B or one of ours) and trains all weights, or with ``--lora-rank R`` only low-rank adapters
on the attention and MLP projections (merged into the weights on export). Without ``--init`` a new model of the
``--hidden/--layers/...`` size is made for the tokenizer in ``--tokenizer``.

Batches are packed rows of whole documents (``lm_samples.pack_batch``), a pure function of (seed, step, row), so a
run killed at any moment resumes exactly (the engine keeps model, optimizer and RNG in ``last.pt``). Attention stays
inside each packed document (a block-diagonal causal mask) and positions restart at 0 per document, as at inference.
The export is an official-format folder (``config.json`` + ``model.safetensors`` in bf16 or fp16 + the tokenizer
files) that ``glm4voice.lm.load_lm`` and ``TextTokenizer.from_dir`` read.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glm4voice.errors import CheckpointError, ConfigError
from glm4voice.lm.load import TOKENIZER_FILES
from glm4voice.train import lm_samples as ls

log = logging.getLogger("glm4voice.train.lm")

VOCAB_MULTIPLE = 64  # pad the vocabulary (embedding rows) to a multiple of this, as the official 168960 is
LORA_TARGETS = ("qkv", "out", "up", "down")  # glm4voice.lm.model names of query_key_value, dense, h_to_4h, 4h_to_h
EXPORT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class LMSpec:
    """Size of a new model (no ``--init``). Defaults: the embedded model's LM (issue 7)."""

    hidden: int = 384
    layers: int = 6
    heads: int = 6
    kv_heads: int = 2
    head_dim: int = 64
    ffn: int = 1024
    seq_length: int = 2048  # longest context the model supports (RoPE table rows)

    def glm_config(self, tok, torch_dtype: str = "bfloat16"):
        """A GLMConfig for ``tok``'s vocabulary; stop ids: the tokenizer's <|endoftext|>, <|user|>, <|observation|>."""
        from glm4voice.lm.config import GLMConfig

        n_vocab = math.ceil(tok.vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        eos = tuple(tok.token_id(n) for n in ("<|endoftext|>", "<|user|>", "<|observation|>"))
        return GLMConfig(hidden_size=self.hidden, num_layers=self.layers, num_attention_heads=self.heads,
                         kv_channels=self.head_dim, multi_query_attention=True, multi_query_group_num=self.kv_heads,
                         ffn_hidden_size=self.ffn, padded_vocab_size=n_vocab,
                         seq_length=self.seq_length, torch_dtype=torch_dtype, eos_token_id=eos, pad_token_id=eos[0])


# ---- LoRA ----------------------------------------------------------------------------------------------------------

class LoRALinear(nn.Module):
    """``base(x) + scale * x A^T B^T`` with a frozen ``base``; B starts at zero so training starts from the base model
    (Hu et al. 2021). ``merged()`` folds the adapter into a plain Linear."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.lora_a.to(x.dtype), self.lora_b.to(x.dtype)
        return self.base(x) + (self.dropout(x) @ a.t() @ b.t()) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device, dtype=self.base.weight.dtype)
        delta = (self.lora_b.float() @ self.lora_a.float()) * self.scale
        out.weight.copy_((self.base.weight.float() + delta).to(out.weight.dtype))
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        return out


def add_lora(model: nn.Module, *, rank: int, alpha: float, dropout: float = 0.0,
             targets: tuple[str, ...] = LORA_TARGETS) -> list[str]:
    """Freeze ``model`` and wrap every Linear whose attribute name is in ``targets``; returns the wrapped names."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank, alpha, dropout))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    if not wrapped:
        raise ConfigError(f"no Linear layer named {targets} to put LoRA adapters on")
    return wrapped


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its merged Linear (in place); the model's keys are the plain ones again."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
    return model


# ---- forward and loss --------------------------------------------------------------------------------------------

def call_model(model: nn.Module, input_ids: Tensor, position_ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """Logits (B, T, V) for every position; ``mask`` (B, 1, T, T) boolean, None = causal."""
    return model(input_ids, position_ids=position_ids, mask=mask)


def forward_logits(model: nn.Module, batch: ls.PackedBatch) -> Tensor:
    """Logits (B, T, V) of a packed batch: positions restart per document and attention stays inside it."""
    from glm4voice.lm.model import packed_mask

    return call_model(model, batch.input_ids, batch.position_ids, packed_mask(batch.doc_ids))


def _mean_targets_per_process(n: Tensor) -> Tensor:
    """Targets of this process, or under DDP the mean over processes: DDP averages the processes' gradients, so
    dividing each sum by the global mean makes the step that of one process with the whole global batch (every
    target token weighs the same wherever it landed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return n.float()
    total = n.detach().float().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def lm_loss(model: nn.Module, batch: ls.PackedBatch, sp: ls.Specials, *,
            ctc_weight: float = 0.0) -> tuple[Tensor, dict]:
    """Mean cross-entropy over the loss-masked targets of the (global) batch; text and speech parts reported.
    A model with a CTC head (``lm_ctc.AudioCTC``) adds ``ctc_weight`` times the CTC loss of the batch's spans."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    logits = forward_logits(model, batch)
    ctc_logits = None
    if isinstance(logits, tuple):
        logits, ctc_logits = logits
    logits = logits[:, :-1]
    targets, mask = batch.input_ids[:, 1:], batch.loss_mask[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none")
    ce = ce.view_as(targets)
    n = mask.sum()
    loss = (ce * mask).sum() / _mean_targets_per_process(n).clamp(min=1)
    with torch.no_grad():
        audio = sp.is_audio(targets) & mask
        text = mask & ~audio
        metrics = {"text_loss": float((ce * text).sum() / text.sum().clamp(min=1)),
                   "speech_loss": float((ce * audio).sum() / audio.sum().clamp(min=1)),
                   "target_tokens": float(n), "pad_share": float(batch.stats.get("pad_share", 0.0))}
    if ctc_logits is not None and batch.ctc and ctc_weight:
        from glm4voice.train.lm_ctc import ctc_loss

        # the mean over this process's spans (each DDP process weighs its spans alike; spans are per-sample here)
        ctc = ctc_loss(ctc_logits, batch.ctc, getattr(model, "module", model).blank)  # DDP wraps the AudioCTC
        loss = loss + ctc_weight * ctc
        metrics["ctc_loss"] = float(ctc.detach())
    return loss, metrics


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: list[ls.PackedBatch], sp: ls.Specials) -> dict:
    """Held-out loss (text / speech) and teacher-forced next-token accuracy on the text and speech targets."""
    device = next(model.parameters()).device
    sums = {"ce_text": 0.0, "ce_speech": 0.0, "ok_text": 0.0, "ok_speech": 0.0, "n_text": 0.0, "n_speech": 0.0}
    ctc = {"loss": 0.0, "spans": 0, "refs": [], "hyps": []}
    for b in batches:
        b = b.to(device)
        logits = forward_logits(model, b)
        if isinstance(logits, tuple):  # a CTC head (lm_ctc.AudioCTC): its held-out loss and piece error rate
            from glm4voice.train.lm_ctc import ctc_loss, greedy_ctc

            logits, ctc_logits = logits
            if b.ctc:
                ctc["loss"] += float(ctc_loss(ctc_logits, b.ctc, model.blank)) * len(b.ctc)
                ctc["spans"] += len(b.ctc)
                ctc["refs"] += [list(t) for *_, t in b.ctc]
                ctc["hyps"] += greedy_ctc(ctc_logits, b.ctc, model.blank)
        logits = logits[:, :-1].float()
        targets, mask = b.input_ids[:, 1:], b.loss_mask[:, 1:]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        ce = ce.view_as(targets)
        ok = (logits.argmax(-1) == targets).float()
        audio = sp.is_audio(targets) & mask
        for name, sel in (("text", mask & ~audio), ("speech", audio)):
            sums[f"ce_{name}"] += float((ce * sel).sum())
            sums[f"ok_{name}"] += float((ok * sel).sum())
            sums[f"n_{name}"] += float(sel.sum())
    out = {}
    for name in ("text", "speech"):
        if sums[f"n_{name}"]:
            out[f"eval_{name}_loss"] = sums[f"ce_{name}"] / sums[f"n_{name}"]
            out[f"eval_{name}_acc"] = sums[f"ok_{name}"] / sums[f"n_{name}"]
    if ctc["spans"]:
        out["eval_ctc_loss"] = ctc["loss"] / ctc["spans"]
        from glm4voice.train.tokenizer_trainer import sequence_error_rate

        out["eval_ctc_per"] = sequence_error_rate(ctc["refs"], ctc["hyps"])  # piece error of the greedy CTC path
    return out


# ---- model, export -------------------------------------------------------------------------------------------------

def build_model(args: argparse.Namespace, tok) -> nn.Module:
    """A new GLM of ``--hidden/--layers/...`` or the ``--init`` checkpoint (fp32 weights to train)."""
    from glm4voice.lm.load import load_lm
    from glm4voice.lm.model import GLM

    if args.init:
        # LoRA with bf16 autocast keeps the frozen base in bf16 (half the memory; a 9B base is 19 GB instead of 38);
        # the adapters are fp32 parameters either way
        frozen_bf16 = args.lora_rank > 0 and args.precision == "bf16"
        model = load_lm(args.init, device="cpu", dtype=torch.bfloat16 if frozen_bf16 else torch.float32)
        n_vocab = tok.vocab_size
        if model.cfg.padded_vocab_size < n_vocab:
            raise ConfigError(f"{args.init}: the model has {model.cfg.padded_vocab_size} embedding rows but the "
                              f"tokenizer {n_vocab} ids")
        return model
    spec = LMSpec(**{f.name: getattr(args, f.name) for f in fields(LMSpec)})
    torch.manual_seed(args.seed)
    model = GLM(spec.glm_config(tok))
    model.init_weights()
    return model


def export(model: nn.Module, folder: str | os.PathLike, tokenizer_dir: str | os.PathLike, *,
           dtype: str = "bf16") -> Path:
    """Write an official-format folder: config.json + model.safetensors (LoRA merged) + the tokenizer files."""
    import copy

    from glm4voice.lm.load import save_pretrained

    if dtype not in EXPORT_DTYPES:
        raise ConfigError(f"export dtype must be one of {sorted(EXPORT_DTYPES)}, not {dtype!r}")
    from glm4voice.train.lm_ctc import AudioCTC

    if isinstance(model, AudioCTC):  # the CTC head is training-only
        model = model.lm
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plain = merge_lora(copy.deepcopy(model)) if any(isinstance(m, LoRALinear) for m in model.modules()) else model
    save_pretrained(plain, folder, dtype=EXPORT_DTYPES[dtype])
    for name in TOKENIZER_FILES:
        src = Path(tokenizer_dir) / name
        if not src.exists():
            raise ConfigError(f"tokenizer file {src} is missing")
        if src.resolve() != (folder / name).resolve():
            shutil.copyfile(src, folder / name)
    return folder


# ---- entry point ---------------------------------------------------------------------------------------------------

def add_args(parser: argparse.ArgumentParser) -> None:
    from glm4voice.train.engine import add_train_args

    parser.add_argument("--corpus", help="corpus folder with cached speech tokens (tokens/<id>.npy)")
    parser.add_argument("--tokens", default="tokens", metavar="NAME",
                        help="the corpus's token subfolder: another tokenizer's codes (`data tokens --out "
                             "CORPUS/NAME`), e.g. with --init from `train remap-codes`")
    parser.add_argument("--tokenizer", default=None,
                        help="text tokenizer folder (tokenizer.model + tokenizer_config.json); default: --init")
    parser.add_argument("--init", default=None, help="start from this official-format model folder")
    parser.add_argument("--stage", choices=("pretrain", "sft"), default="pretrain", help="default mixture")
    parser.add_argument("--mix", default=None, help="kind=ratio,... over " + ", ".join(ls.KINDS))
    parser.add_argument("--sft-loss", choices=ls.SFT_LOSS, default="split",
                        help="split: the paper's text-loss and speech-loss copies; joint: one copy, both losses")
    parser.add_argument("--seq-len", type=int, default=1024, help="packed row length (tokens)")
    parser.add_argument("--max-audio", type=int, default=None, help="cut pre-training utterances to this many codes")
    parser.add_argument("--pack-tries", type=int, default=1,
                        help="draws that may miss the room left in a row before it is padded (more: less padding)")
    parser.add_argument("--rephrase", type=float, default=0.0,
                        help="probability that a typed question (sft_text) is re-worded with another training "
                             "phrasing (augmentation; held-out phrasings are never used)")
    parser.add_argument("--augment-set", type=int, choices=ls.AUGMENT_SETS, default=1,
                        help="augmentation phrasings --rephrase draws from: 1; 1 and 2 (more phrasings); 1 to 3 "
                             "(more again, and filler words around the request: texts.AUGMENT_TEMPLATES_3); 4 (set "
                             "3 with stray words in English questions); 5 (set 4 with stray characters in "
                             "Mandarin ones too); or 6 (set 5 with more Mandarin phrasings)")
    parser.add_argument("--code-noise", type=float, default=0.0,
                        help="probability that each code of a speech *input* (spoken question, ASR audio) is "
                             "replaced by a random code, dropped or doubled (augmentation against memorising "
                             "utterances; 0: off)")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="hidden dropout while training (each block's attention and MLP outputs; the config's "
                             "hidden_dropout; exports keep the release's 0)")
    parser.add_argument("--attention-dropout", type=float, default=0.0,
                        help="dropout on the attention weights while training (the config's attention_dropout)")
    parser.add_argument("--ctc-weight", type=float, default=0.0,
                        help="> 0: add this times a CTC loss over word pieces of each input utterance's transcript, "
                             "read from the hidden states of --ctc-layer at its positions (training only; the "
                             "export is the plain LM)")
    parser.add_argument("--ctc-layer", type=int, default=None,
                        help="the block (1-based, below the last) whose output the CTC head reads; default: half")
    parser.add_argument("--ctc-warmup", type=int, default=0,
                        help="first steps in which the CTC loss trains its new head only, not the LM")
    parser.add_argument("--ctc-pieces", type=int, default=1000, help="word-piece vocabulary of the CTC head")
    parser.add_argument("--extra-corpus", nargs="*", default=[], metavar="DIR[:KINDS]",
                        help="more corpus folders with cached codes (their --tokens subfolder), training split: "
                             "their utterances join the asr/tts/speech pools and their dialogues the dialogue "
                             "kinds (e.g. `glm4voice data reading`); DIR:K1,K2 gives that folder its own "
                             "--extra-kinds (e.g. data/reading_w2:asr data/reading_t1:tts)")
    parser.add_argument("--extra-repeat", type=int, default=1, metavar="K",
                        help="each --extra-corpus row appears K times in its pools (drawn K times as often)")
    parser.add_argument("--extra-kinds", default="asr,tts,speech", metavar="K1,K2",
                        help="the utterance kinds whose pools the --extra-corpus utterances join (default all three; "
                             "e.g. asr: new voices are heard but never spoken, so the LM's own speech keeps its "
                             "voice)")
    parser.add_argument("--interleaved", nargs="*", default=[], help="jsonl files from `glm4voice train interleave`")
    parser.add_argument("--texts", nargs="*", default=[], help="extra text-only files, one document per line")
    parser.add_argument("--eval-batches", type=int, default=4, help="held-out batches per evaluation")
    parser.add_argument("--eval-seed", type=int, default=0,
                        help="draws the held-out batches and questions (not --seed: runs that differ only in "
                             "--seed are evaluated on the same held-out data)")
    parser.add_argument("--eval-answers", type=int, default=32,
                        help="SFT: held-out spoken questions answered greedily per evaluation (0: off)")
    parser.add_argument("--eval-speech", type=int, default=0,
                        help="SFT: held-out spoken questions answered in full per evaluation whose speech codes the "
                             "--eval-speech-tokenizer's ASR branch transcribes, against the answer's own text (0: off)")
    parser.add_argument("--eval-speech-tokenizer", default="embedded",
                        help="the glm4voice-trained tokenizer (with asr_branch.*) whose codes the corpus tokens are")
    parser.add_argument("--export", default=None, help="write the final model here (official format)")
    parser.add_argument("--export-dtype", choices=sorted(EXPORT_DTYPES), default="bf16")
    parser.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                        help="keep an exponential moving average of the weights (e.g. 0.998: about the last 500 "
                             "steps); evaluations and --export then use the average (0: off)")
    parser.add_argument("--export-raw", default=None, metavar="DIR",
                        help="with --ema: also export the last step's own weights here, to compare")
    parser.add_argument("--export-only", action="store_true",
                        help="only export the run in --out (its last.pt, finished or not) to --export")
    parser.add_argument("--until", type=int, default=None, help="stop at this step (continue later)")
    parser.add_argument("--lora-rank", type=int, default=0, help="> 0: train LoRA adapters only (needs --init)")
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    for f in fields(LMSpec):
        parser.add_argument("--" + f.name.replace("_", "-"), type=int, default=f.default, help="new model size")
    add_train_args(parser, lr=1e-3, steps=2000, batch_size=8, warmup=100, eval_every=200, save_every=100)


def export_run(run: str | os.PathLike, folder: str | os.PathLike, *, dtype: str = "bf16",
               average: bool = True) -> tuple[int, int]:
    """Export a run folder's ``last.pt`` (finished or not; LoRA adapters merged) to an official-format folder with
    the run's text tokenizer: its weight average when it keeps one (``--ema``) and ``average``, else the last
    step's weights. Returns (the step the checkpoint reached, the run's planned steps)."""
    from glm4voice.lm.config import GLMConfig
    from glm4voice.lm.model import GLM

    run = Path(run)
    for name in ("run.json", "last.pt"):
        if not (run / name).is_file():
            raise CheckpointError(f"{run}: no {name}; is this an LM run folder (`glm4voice train lm --out`)?")
    info = json.loads((run / "run.json").read_text())
    model = GLM(GLMConfig.from_dict(info["config"], source=str(run / "run.json")))
    if info.get("lora_rank"):
        add_lora(model, rank=info["lora_rank"], alpha=info.get("lora_alpha", 16.0))
    if info.get("ctc"):
        from glm4voice.train.lm_ctc import AudioCTC

        model = AudioCTC(model, info["ctc"]["pieces"], info["ctc"]["layer"])
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)  # tensors only: no code runs
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{run / 'last.pt'} does not match run.json: missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}")
    from contextlib import nullcontext

    from glm4voice.train.engine import WeightAverage

    kept = state.get("extra", {}).get("ema")
    with WeightAverage.from_state(kept).swapped_in(model) if average and kept else nullcontext():
        export(model, folder, info["tokenizer"], dtype=dtype)
    return int(state["step"]), int(state["config"]["steps"])


def load_text_tokenizer(folder: str | os.PathLike):
    from glm4voice.lm.text_tokenizer import TextTokenizer

    return TextTokenizer.from_dir(str(folder))


def load_frozen_lm(folder: str | os.PathLike, *, device: str = "cpu"):
    """An official-format LM folder for measuring (the probes in scripts/): (its text tokenizer, its special ids,
    the model in fp32, eval mode, no parameter requiring gradients)."""
    from glm4voice.lm.load import load_lm

    tok = load_text_tokenizer(folder)
    model = load_lm(folder, device=device, dtype=torch.float32).eval().requires_grad_(False)
    return tok, ls.Specials.from_tokenizer(tok), model


def main(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from glm4voice.train.engine import Trainer, WeightAverage, config_from_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.export_only:
        if not args.export:
            raise ConfigError("--export-only needs --export DIR")
        step, steps = export_run(args.out_dir, args.export, dtype=args.export_dtype)
        log.info("exported %s (step %d of %d) to %s", args.out_dir, step, steps, args.export)
        if args.export_raw:
            export_run(args.out_dir, args.export_raw, dtype=args.export_dtype, average=False)
            log.info("exported its last step's own weights to %s", args.export_raw)
        return 0
    if not args.corpus:
        raise ConfigError("--corpus is required (a folder made by `glm4voice data synth` with cached tokens)")
    cfg = config_from_args(args)
    for flag, p in (("--dropout", args.dropout), ("--attention-dropout", args.attention_dropout)):
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"{flag} must be in [0, 1), not {p}")
    if not 0.0 <= args.ema < 1.0:
        raise ConfigError(f"--ema is a decay in [0, 1) (0: off), not {args.ema}")
    if args.export_raw and not args.ema:
        raise ConfigError("--export-raw exports the raw weights beside the --ema average: give --ema too")
    if args.extra_repeat < 1:
        raise ConfigError(f"--extra-repeat must be >= 1, not {args.extra_repeat}")
    tok_dir = args.tokenizer or args.init
    if not tok_dir:
        raise ConfigError("give --tokenizer (a new model) or --init (a model folder with its tokenizer)")
    if args.lora_rank and not args.init:
        raise ConfigError("--lora-rank adapts an existing model: give --init")
    tok = load_text_tokenizer(tok_dir)
    sp = ls.Specials.from_tokenizer(tok)
    mix = args.mix or args.stage
    train = ls.load_lm_data(args.corpus, split="train", interleaved_files=args.interleaved, text_files=args.texts,
                            tokens=args.tokens)
    extras = extra_corpora(args.extra_corpus, args.extra_kinds)
    for extra, extra_kinds in extras:  # e.g. `data reading`: more utterances for the asr / tts / speech pools
        more = ls.load_lm_data(extra, split="train", with_item_texts=False, tokens=args.tokens)
        if not more.utterances:
            raise ConfigError(f"--extra-corpus {extra}: no utterance with cached codes in {extra}/{args.tokens} "
                              f"(run `glm4voice data tokens {extra}`); left out: {dict(more.problems)}")
        log.info("extra corpus %s: %s (x%d)", extra, more.summary(), args.extra_repeat)
        if set(extra_kinds) == {"asr", "tts", "speech"}:
            train.utterances += more.utterances * args.extra_repeat
        else:  # only those kinds' pools (LMData.pool)
            for k in extra_kinds:
                train.kind_utterances.setdefault(k, []).extend(more.utterances * args.extra_repeat)
        train.dialogues += more.dialogues * args.extra_repeat
        train.problems.update({f"{extra}: {k}": v for k, v in more.problems.items()})
    log.info("lm %s: train data %s", args.stage, train.summary())
    if args.ctc_weight < 0:
        raise ConfigError(f"--ctc-weight must be >= 0, not {args.ctc_weight}")
    ctc_encode, n_pieces = None, 0
    if args.ctc_weight:
        from glm4voice.train.lm_ctc import piece_vocabulary

        ctc_encode, n_pieces = piece_vocabulary(cfg.out_dir, [u.text for u in train.utterances], args.ctc_pieces)
    batches = ls.MixtureBatches(ls.Mixture(tok, sp, train, mix, sft_loss=args.sft_loss, max_audio=args.max_audio,
                                           rephrase=args.rephrase, augment_set=args.augment_set,
                                           code_noise=args.code_noise, ctc_encode=ctc_encode),
                                batch_size=cfg.batch_size, seq_len=args.seq_len, seed=cfg.seed,
                                fill_tries=args.pack_tries)
    eval_fn = _make_eval(args, tok, sp, mix, cfg, ctc_encode, extras)

    model = build_model(args, tok)
    model.set_dropout(args.dropout, args.attention_dropout)
    if args.seq_len > model.cfg.seq_length:
        raise ConfigError(f"--seq-len {args.seq_len} exceeds the model's context {model.cfg.seq_length}")
    if args.lora_rank:
        wrapped = add_lora(model, rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout)
        log.info("LoRA rank %d on %d layers", args.lora_rank, len(wrapped))
    ctc_info = None
    if args.ctc_weight:
        from glm4voice.train.lm_ctc import AudioCTC

        layer = args.ctc_layer if args.ctc_layer is not None else max(1, model.cfg.num_layers // 2)
        model = AudioCTC(model, n_pieces, layer)
        ctc_info = {"weight": args.ctc_weight, "layer": layer, "pieces": n_pieces, "warmup": args.ctc_warmup}
        log.info("CTC objective: %d word pieces read from block %d of %d, weight %g", n_pieces, layer,
                 model.cfg.num_layers, args.ctc_weight)
    _check_resume_matches(Path(cfg.out_dir), ctc_info)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model: %.2fM parameters, %.2fM trained", sum(p.numel() for p in model.parameters()) / 1e6, n_train / 1e6)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out_dir) / "run.json").write_text(json.dumps(
        {"stage": args.stage, "mix": ls.parse_mix(mix), "sft_loss": args.sft_loss, "rephrase": args.rephrase,
         "augment_set": args.augment_set, "code_noise": args.code_noise, "seq_len": args.seq_len,
         "init": args.init, "tokenizer": tok_dir, "extra_corpus": args.extra_corpus,
         "extra_repeat": args.extra_repeat,
         "extra_kinds": _kinds_record(extras), "ema": args.ema, "lora_rank": args.lora_rank,
         "lora_alpha": args.lora_alpha, "ctc": ctc_info,
         "dropout": {"hidden": args.dropout, "attention": args.attention_dropout}, "config": asdict(model.cfg),
         "data": train.summary()}, indent=2, default=str))
    def loss_fn(m: nn.Module, b: ls.PackedBatch) -> tuple[Tensor, dict]:
        if ctc_info:  # a function of the step alone, so a resumed run warms up as an uninterrupted one
            getattr(m, "module", m).head_only = trainer.step < args.ctc_warmup
        return lm_loss(m, b, sp, ctc_weight=args.ctc_weight)

    average = WeightAverage(args.ema) if args.ema else None
    if average is not None and eval_fn is not None:  # the held-out numbers of the weights that are exported
        eval_fn = _on_average(eval_fn, average)
    trainer = Trainer(cfg, model, batch_fn=batches, loss_fn=loss_fn, eval_fn=eval_fn,
                      extra_state={"ema": average} if average else None,
                      after_step=average.update if average else None)
    trainer.fit(until=args.until)
    if trainer.step >= cfg.steps and trainer.is_main:
        if args.export_raw:
            export(trainer.model, args.export_raw, tok_dir, dtype=args.export_dtype)
            log.info("exported the LM's own last weights to %s", args.export_raw)
        if args.export:
            with average.swapped_in(trainer.model) if average else nullcontext():
                export(trainer.model, args.export, tok_dir, dtype=args.export_dtype)
            log.info("exported the LM%s to %s", " (weight average)" if average else "", args.export)
    return 0


def _on_average(eval_fn, average):
    """``eval_fn`` run with the weight average swapped into the model."""
    def run(m: nn.Module) -> dict:
        with average.swapped_in(m):
            return eval_fn(m)
    return run


def _check_resume_matches(out_dir: Path, ctc_info: dict | None) -> None:
    """A run resumed with or without the CTC head as it started: its checkpoint has (or lacks) the head's weights."""
    if not (out_dir / "last.pt").is_file() or not (out_dir / "run.json").is_file():
        return
    before = json.loads((out_dir / "run.json").read_text()).get("ctc")
    shape = (lambda c: (c["layer"], c["pieces"]) if c else None)  # noqa: E731
    if shape(before) != shape(ctc_info):
        raise ConfigError(f"{out_dir} was started with CTC objective {before}, resumed with {ctc_info}: give the same "
                          f"--ctc-weight (0 or not) and --ctc-layer, or a new --out")


def _make_eval(args, tok, sp: ls.Specials, mix: str, cfg, ctc_encode=None, extras=()):
    """Held-out batches (split ``heldout``: held-out phrasings and voices) of the kinds that have held-out data, and
    for SFT mixtures the spoken-question answer accuracy on ``--eval-answers`` held-out dialogues."""
    held = ls.load_lm_data(args.corpus, split="heldout", with_item_texts=True, tokens=args.tokens)
    ratios = {k: v for k, v in ls.parse_mix(mix).items() if held.pool(k)}
    fixed = []
    if ratios and args.eval_batches:
        m = ls.Mixture(tok, sp, held, ratios, sft_loss=args.sft_loss, max_audio=args.max_audio,
                       ctc_encode=ctc_encode)
        fixed = [ls.pack_batch(m.draw, seed=10_000 + args.eval_seed, step=i, rank=0, batch_size=cfg.batch_size,
                               seq_len=args.seq_len, pad_id=sp.eot) for i in range(args.eval_batches)]
    extra_fixed = _extra_heldout_batches(args, tok, sp, cfg, extras) if args.eval_batches else []
    dialogues, spoken, asr = [], [], None
    if args.eval_answers and set(ratios) & set(ls.SFT_KINDS):
        dialogues = random.Random(args.eval_seed).sample(held.dialogues, min(args.eval_answers, len(held.dialogues)))
    if args.eval_speech and set(ratios) & set(ls.SFT_KINDS):
        from glm4voice.checkpoints import resolve
        from glm4voice.train.tokenizer_asr import CodesASR
        from glm4voice.train.tokenizer_trainer import load_for_asr

        spoken = random.Random(args.eval_seed + 1).sample(held.dialogues, min(args.eval_speech, len(held.dialogues)))
        asr = CodesASR(load_for_asr(resolve(args.eval_speech_tokenizer, "tokenizer", allow_download=False),
                                    device=cfg.device)).eval()
    if not fixed and not extra_fixed and not dialogues and not spoken:
        log.info("no held-out data for the mixture: evaluation off")
        return None

    def evaluate(model: nn.Module) -> dict:
        out = evaluate_batches(model, fixed, sp) if fixed else {}
        for tag, kind, batches in extra_fixed:  # the extra corpora's held-out rows: transcripts / their speech
            got = evaluate_batches(model, batches, sp)
            part = "text" if kind == "asr" else "speech"
            out.update({f"eval_{tag}_{kind}_{m}": got[f"eval_{part}_{m}"] for m in ("loss", "acc")
                        if f"eval_{part}_{m}" in got})
        model = getattr(model, "lm", model)  # answers come from the plain LM (a CTC head is training-only)
        if dialogues:
            out.update(answer_accuracy(model, tok, sp, dialogues))
        if spoken:
            out.update(speech_consistency(model, tok, sp, spoken, asr))
        return out

    return evaluate


EXTRA_KINDS = ("asr", "tts", "speech")


def extra_corpora(specs: list, default_kinds: str) -> list[tuple[str, list[str]]]:
    """``--extra-corpus`` entries as (folder, utterance kinds): ``DIR`` takes ``default_kinds`` (``--extra-kinds``),
    ``DIR:K1,K2`` its own kinds (a suffix after the last colon that names only kinds among asr, tts, speech; any
    other colon is part of the path)."""
    def kinds_of(text: str) -> list[str]:
        return [k.strip() for k in text.split(",") if k.strip()]

    out = []
    for spec in map(str, specs):
        folder, kinds = spec, kinds_of(default_kinds)
        head, sep, tail = spec.rpartition(":")
        if sep and head and kinds_of(tail) and set(kinds_of(tail)) <= set(EXTRA_KINDS):
            folder, kinds = head, kinds_of(tail)
        bad = sorted(set(kinds) - set(EXTRA_KINDS))
        if bad or not kinds:
            raise ConfigError(f"--extra-kinds takes utterance kinds among asr, tts, speech, not {default_kinds!r} "
                              f"(for --extra-corpus {spec})")
        out.append((folder, list(dict.fromkeys(kinds))))
    return out


def _kinds_record(extras: list[tuple[str, list[str]]]) -> list[str] | dict[str, list[str]]:
    """run.json's ``extra_kinds``: the list when every extra folder has the same kinds (as before per-folder kinds),
    else folder -> kinds."""
    if not extras:
        return []
    kinds = {tuple(k) for _, k in extras}
    return list(extras[0][1]) if len(kinds) == 1 else {folder: k for folder, k in extras}


def _extra_heldout_batches(args, tok, sp: ls.Specials, cfg, extras) -> list[tuple[str, str, list[ls.PackedBatch]]]:
    """For each extra corpus (``extras``: ``extra_corpora``'s folders and kinds) with rows of split ``heldout`` (e.g.
    `data reading --heldout-en`: new sentences read by held-out voices), fixed ASR batches of those rows, named by
    the folder (``eval_<name>_asr_loss``: the transcript's text loss), and, if the folder trains the tts pool, fixed
    TTS batches too (``eval_<name>_tts_loss``: the speech loss of its codes from its text)."""
    out, seen = [], set()
    for i, (extra, kinds) in enumerate(extras):
        held = ls.load_lm_data(extra, split="heldout", with_item_texts=False, tokens=args.tokens)
        if not held.utterances:
            continue
        tag = re.sub(r"[^0-9A-Za-z]+", "_", Path(extra).name).strip("_") or f"extra{i + 1}"
        tag = tag if tag not in seen else f"{tag}_{i + 1}"
        seen.add(tag)
        for kind in ("asr", "tts") if "tts" in kinds else ("asr",):
            m = ls.Mixture(tok, sp, held, {kind: 1.0}, max_audio=args.max_audio)
            out.append((tag, kind, [ls.pack_batch(m.draw, seed=20_000 + args.eval_seed, step=j, rank=0,
                                                  batch_size=cfg.batch_size, seq_len=args.seq_len, pad_id=sp.eot)
                                    for j in range(args.eval_batches)]))
            log.info("held-out rows of %s: %d utterances, reported as eval_%s_%s_loss", extra, len(held.utterances),
                     tag, kind)
    return out


@torch.no_grad()
def answer_accuracy(model: nn.Module, tok, sp: ls.Specials, dialogues: list[ls.Dialogue]) -> dict:
    """Greedy answers to spoken questions, through the inference prompt and KV-cache generator: the share whose
    text tokens equal the reference answer's exactly (``eval_answer_acc``), and the share that also starts the
    audio of its first block in the streaming-thoughts layout (``eval_layout_acc``). See ``checked_answers``."""
    from glm4voice.constants import TEXT_TOKENS_PER_BLOCK

    prompts = [ls.dialogue_prompt(tok, sp, d.question.codes) for d in dialogues]
    refs = [tok.encode(d.answer.text) for d in dialogues]
    text_ok = layout_ok = 0
    for ref, out in zip(refs, checked_answers(model, sp, prompts, refs), strict=True):
        audio = [bool(sp.is_audio(t)) for t in out]
        good = [t for t, a in zip(out, audio, strict=True) if not a] == ref
        text_ok += good
        first_audio = audio.index(True) if True in audio else -1
        layout_ok += good and first_audio == min(len(ref), TEXT_TOKENS_PER_BLOCK)
    return {"eval_answer_acc": text_ok / len(dialogues), "eval_layout_acc": layout_ok / len(dialogues)}


def checked_answers(model: nn.Module, sp: ls.Specials, prompts: list[list[int]],
                    refs: list[list[int]]) -> list[list[int]]:
    """Greedy answers to ``prompts``, each checked against its reference text ids as it is generated: generation
    stops per prompt at the first wrong text token, or once the reference text could be complete (its text plus
    the audio blocks between), so this costs at most a few dozen decode steps. An answer is exactly right when its
    text tokens (``not sp.is_audio``) equal the reference."""
    from glm4voice.constants import AUDIO_TOKENS_PER_BLOCK, TEXT_TOKENS_PER_BLOCK

    budgets = [len(r) + AUDIO_TOKENS_PER_BLOCK * ((len(r) - 1) // TEXT_TOKENS_PER_BLOCK) + 1 for r in refs]
    n_text = [0] * len(prompts)

    def right_so_far(slot: int, token: int) -> bool:  # a text token: stop at the first wrong one
        if sp.is_audio(token):
            return True
        k = n_text[slot]
        n_text[slot] += 1
        return k < len(refs[slot]) and refs[slot][k] == token

    outs, _ = greedy_answers(model, prompts, {sp.user, sp.eot}, budgets, keep=right_so_far)
    return outs


@torch.no_grad()
def greedy_answers(model: nn.Module, prompts: list[list[int]], stops: set[int], max_new_tokens: int | list[int], *,
                   keep=None) -> tuple[list[list[int]], list[bool]]:
    """Greedy continuations of several prompts at once (one KV-cache slot each): (generated ids without the stop
    id, whether each one stopped on a stop id). ``max_new_tokens``: one limit, or one per prompt; ``keep(slot,
    token)``, called after each generated id, ends that prompt's generation when it returns False."""
    from glm4voice.lm.generate import Generator

    limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    gen = Generator(model, len(prompts), min(max(len(p) + n for p, n in zip(prompts, limits, strict=True)) + 1,
                                             model.cfg.seq_length))
    logits = torch.stack([gen.prefill(p, slot=i) for i, p in enumerate(prompts)])
    outs: list[list[int]] = [[] for _ in prompts]
    stopped = [False] * len(prompts)
    active = list(range(len(prompts)))
    while active:
        still = []
        for slot, token in zip(active, logits.argmax(-1).tolist(), strict=True):
            if token in stops:
                stopped[slot] = True
                continue
            outs[slot].append(token)
            if keep is not None and not keep(slot, token):
                continue
            if len(outs[slot]) < limits[slot] and len(gen.held[slot]) < gen.max_seq:
                still.append((slot, token))
        active = [s for s, _ in still]
        if active:
            logits = gen.decode_step([t for _, t in still], active)
    return outs, stopped


@torch.no_grad()
def speech_consistency(model: nn.Module, tok, sp: ls.Specials, dialogues: list[ls.Dialogue], asr, *,
                       max_new_tokens: int = 400) -> dict:
    """Does the speech of an answer say its text? Greedy full answers to spoken questions; their speech codes are
    transcribed by a tokenizer's ASR branch (``asr``: ``tokenizer_asr.CodesASR`` of the tokenizer whose codes the
    LM speaks) and compared with the answer's own text. A proxy for the intelligibility of the answers (the judge
    of ``glm4voice eval`` needs the decoder and an ASR model; this needs neither) that a run can watch while it
    trains. ``eval_speech_wer_en`` / ``eval_speech_cer_en`` / ``eval_speech_cer_zh``: error of the transcript
    against the text;
    ``eval_runaway``: share of answers that reached ``max_new_tokens`` without a stop (loops)."""
    from glm4voice.train.tokenizer_asr import pad_codes
    from glm4voice.train.tokenizer_trainer import error_rates

    prompts = [ls.dialogue_prompt(tok, sp, d.question.codes) for d in dialogues]
    outs, stopped = greedy_answers(model, prompts, {sp.user, sp.eot}, max_new_tokens)
    texts, rows = [], []
    for out in outs:
        audio = [bool(sp.is_audio(t)) for t in out]
        texts.append(tok.decode([t for t, a in zip(out, audio, strict=True) if not a and t not in (sp.boa, sp.eoa)]))
        rows.append({"codes": np.asarray([t - sp.audio_offset for t, a in zip(out, audio, strict=True) if a],
                                         dtype=np.int64)})
    spoken = [i for i, r in enumerate(rows) if len(r["codes"]) and texts[i].strip()]
    hyps = []
    for i in range(0, len(spoken), 16):
        hyps += asr.transcribe_codes(*pad_codes([rows[j] for j in spoken[i:i + 16]]))
    langs = [dialogues[j].answer.language for j in spoken]
    rates = error_rates([texts[j] for j in spoken], hyps, langs)
    en = [(texts[j], h) for j, h, lang in zip(spoken, hyps, langs, strict=True) if lang == "en"]
    if en:  # the ASR branch spells by pieces: characters grade its near-misses ("turnalals") that words cannot
        from glm4voice.eval.metrics import corpus_error_rate

        refs, hyps_en = map(list, zip(*en, strict=True))
        rates["cer_en"] = corpus_error_rate(refs, hyps_en, ["zh"] * len(en))  # "zh": compared by characters
    out = {f"eval_speech_{k}": v for k, v in rates.items()}
    out["eval_runaway"] = 1 - sum(stopped) / len(dialogues)
    out["eval_speechless"] = 1 - len(spoken) / len(dialogues)  # answers without speech codes or without text
    for j, h in list(zip(spoken, hyps, strict=True))[:2]:
        log.info("answer text: %s | its speech: %s", texts[j], h)
    return out
