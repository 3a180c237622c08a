"""Refit a trained tokenizer's ASR branch on its frozen codes, with a word-piece CTC head or attention decoder.

``glm4voice train tokenizer-asr --tokenizer DIR --corpus DIR --out RUN --export DIR``

The tokenizer trainer's byte-level CTC head is small (one convolution over the post-VQ layers) and must spell every
word letter by letter; its transcripts are phonetically close and badly spelled ("do yu no what five timsris" for
"Do you know what 5 times 0 is?"), so the ASR error it reports mixes what the codes lose with what the head cannot
spell. This trainer keeps the encoder and the codebook fixed (the codes, and so the LM and the decoder, stay
valid), and trains the branch again, the post-VQ layers and a CTC head over byte-level BPE word pieces learned
from the corpus's training transcripts. Like the official tokenizer's Whisper decoder, it is a reader of the
codes: what it measures is how much of the transcript the codes carry. ``--head attention`` makes that reader the
paper's kind (session 22): a Whisper-style decoder over the same pieces (``asr_head.ASRHead``, ``--asr-layers``,
``--asr-dim``), which spells whole words from its own context instead of one CTC label per 20 ms; a branch refitted
before (word pieces already) can be refitted again, keeping its post-VQ layers.

Data: the corpus's cached codes (``tokens/<id>.npy`` from ``glm4voice data tokens`` with this tokenizer; a few are
re-encoded at the start to check that they match). Optional ``--code-noise p`` replaces that share of each
training utterance's codes with random ones, a crude stand-in for the code changes an unseen voice causes.

The export is a copy of the tokenizer folder with the new ``asr_branch.*`` (``"text": "pieces"`` and the pieces'
bytes in ``asr_branch.json``); ``glm4voice eval tokenizer`` reads either kind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from glm4voice.errors import CheckpointError, ConfigError
from glm4voice.train import tokenizer_trainer as tt

log = logging.getLogger("glm4voice.train.tokenizer_asr")
ASR_PIECES = "asr_pieces.json"  # the word-piece vocabulary of a refitted branch, beside it in the export


class CodesASR(nn.Module):
    """The tokenizer's ASR branch over given codes: codebook vectors -> post-VQ layers -> word-piece CTC head. The
    encoder and the codebook are frozen (no gradient); ``branch`` is the full ``TokenizerTrainModel``."""

    def __init__(self, branch: tt.TokenizerTrainModel):
        super().__init__()
        self.branch = branch
        for name, p in branch.named_parameters():
            p.requires_grad_(name.split(".")[0] in ("post", "post_ln", "asr"))

    def _on_device(self, codes: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        dev = self.branch.vq.codebook.weight.device  # batches are made on the CPU
        return codes.to(dev), valid.to(dev)

    def forward(self, codes: Tensor, valid: Tensor, targets: list[list[int]]) -> tuple[Tensor, dict]:
        b = self.branch
        codes, valid = self._on_device(codes, valid)
        q = b.vq.codebook(codes.clamp(min=0))
        loss = b.asr.loss(b.memory(q, valid), valid, targets)
        return loss, {"asr_loss": float(loss.detach())}

    @torch.no_grad()
    def transcribe_codes(self, codes: Tensor, valid: Tensor) -> list[str]:
        b = self.branch
        codes, valid = self._on_device(codes, valid)
        return b.greedy_text(b.memory(b.vq.codebook(codes.clamp(min=0)), valid), valid)


def train_pieces(texts: list[str], vocab_size: int):
    """A byte-level BPE over the lower-cased transcripts: (tokenizers.Tokenizer, pieces as bytes by id)."""
    from glm4voice.train.bpe import ranks_from_tokenizer, train_bpe

    tok = train_bpe([t.lower() for t in texts], vocab_size)
    ranks = ranks_from_tokenizer(tok)
    pieces = [b""] * len(ranks)
    for piece, i in ranks.items():
        pieces[i] = piece
    return tok, pieces


def read_pieces(path: str | Path):
    """A word-piece vocabulary saved by ``train_pieces``'s tokenizer (``Tokenizer.to_str``): (tokenizer, pieces)."""
    from tokenizers import Tokenizer

    from glm4voice.train.bpe import ranks_from_tokenizer

    try:
        tok = Tokenizer.from_str(Path(path).read_text(encoding="utf-8"))
        ranks = ranks_from_tokenizer(tok)
    except Exception as e:  # OSError, ValueError, or the plain Exception that tokenizers raises
        raise CheckpointError(f"{path}: not a word-piece vocabulary ({e})") from e
    return tok, sorted(ranks, key=ranks.get)


def load_codes(corpus_dir: str, split: str, max_codes: int) -> list[dict]:
    """Manifest rows of ``split`` with their cached codes (rows without a usable token file are skipped)."""
    from glm4voice.train.corpus import load_manifest, token_path

    out = []
    for r in load_manifest(corpus_dir).rows:
        if r["split"] != split:
            continue
        path = token_path(corpus_dir, r["id"])
        if not os.path.exists(path):
            continue
        codes = np.load(path, allow_pickle=False).astype(np.int64).reshape(-1)
        if 0 < codes.size <= max_codes:
            out.append({**r, "codes": codes})
    return out


def check_cache(model: tt.TokenizerTrainModel, corpus_dir: str, rows: list[dict], n: int = 4) -> None:
    """Re-encode ``n`` cached utterances: the cache must hold this tokenizer's codes."""
    import soundfile as sf

    for r in rows[:n]:
        pcm, _ = sf.read(os.path.join(corpus_dir, r["path"]), dtype="int16")
        _, ids = model.transcribe(*tt.featurize([pcm]))
        same = np.mean(np.asarray(ids[0][: len(r["codes"])]) == r["codes"][: len(ids[0])])
        if len(ids[0]) != len(r["codes"]) or same < 0.95:
            raise ConfigError(f"the cached codes of {r['id']} are not this tokenizer's ({same:.0%} equal): re-cache "
                              f"them with `glm4voice data tokens {corpus_dir} --tokenizer ...` (empty tokens/ first)")


def pad_codes(rows: list[dict]) -> tuple[Tensor, Tensor]:
    n = max(len(r["codes"]) for r in rows)
    codes = torch.full((len(rows), n), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        codes[i, : len(r["codes"])] = torch.from_numpy(r["codes"])
    return codes, codes >= 0


class CodeBatches:
    """batch(step, rank, world): ``batch_size`` length-neighbours from a seeded position, with their piece ids;
    ``noise``: share of codes replaced by random ones (from the step's RNG, so a resumed run sees the same)."""

    def __init__(self, rows: list[dict], piece_tok, batch_size: int, seed: int, *, noise: float = 0.0,
                 codebook: int = 1024):
        if not 0.0 <= noise < 1.0:
            raise ConfigError(f"--code-noise must be in [0, 1), not {noise}")
        self.rows = sorted(rows, key=lambda r: len(r["codes"]))
        self.targets = {r["id"]: piece_tok.encode(r["text"].lower()).ids for r in rows}
        self.batch_size, self.seed, self.noise, self.codebook = batch_size, seed, noise, codebook

    def __call__(self, step: int, rank: int, world: int):
        rng = random.Random((self.seed * 1_000_003 + step) * 997 + rank)
        start = rng.randrange(max(1, len(self.rows) - self.batch_size + 1))
        part = self.rows[start: start + self.batch_size]
        codes, valid = pad_codes(part)
        if self.noise:
            g = torch.Generator().manual_seed(rng.randrange(2**31))
            flip = (torch.rand(codes.shape, generator=g) < self.noise) & valid
            codes[flip] = torch.randint(0, self.codebook, (int(flip.sum()),), generator=g)
        return codes, valid, [self.targets[r["id"]][:250] for r in part]


def make_eval(rows: list[dict], batch_size: int = 32):
    def evaluate(model: CodesASR) -> dict:
        hyps = []
        for i in range(0, len(rows), batch_size):
            hyps += model.transcribe_codes(*pad_codes(rows[i: i + batch_size]))
        for r, h in list(zip(rows, hyps, strict=True))[:3]:
            log.info("ref: %s | hyp: %s", r["text"], h)
        return tt.error_rates([r["text"] for r in rows], hyps, [r["language"] for r in rows])

    return evaluate


def export(model: CodesASR, tokenizer_dir: str | Path, folder: str | Path, piece_tok=None) -> Path:
    """A copy of the tokenizer folder with the refitted branch (and, given ``piece_tok``, the vocabulary that
    turns transcripts into its pieces, ``asr_pieces.json``, which ``train tokenizer-adapt`` needs)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file() and f.name not in (tt.ASR_BRANCH_WEIGHTS, tt.ASR_BRANCH_CONFIG, ASR_PIECES):
            shutil.copy2(f, folder / f.name)
    if piece_tok is not None:
        (folder / ASR_PIECES).write_text(piece_tok.to_str(), encoding="utf-8")
    return tt.export_branch(model.branch, folder)


def add_args(parser: argparse.ArgumentParser) -> None:
    from glm4voice.train.engine import add_train_args

    parser.add_argument("--tokenizer", required=True, help="a glm4voice-trained tokenizer folder (with asr_branch.*)")
    parser.add_argument("--corpus", required=True, help="corpus folder with this tokenizer's cached codes")
    parser.add_argument("--export", default=None, help="write the tokenizer with the new branch here at the end")
    parser.add_argument("--pieces", type=int, default=1000, help="word-piece vocabulary (256 bytes + merges)")
    parser.add_argument("--code-noise", type=float, default=0.0, help="share of training codes made random")
    parser.add_argument("--head", choices=("ctc", "attention"), default="ctc",
                        help="ctc: a CTC classifier over the pieces; attention: the paper's attention decoder "
                             "(Whisper-style, cross-attending to the post-VQ states)")
    parser.add_argument("--post-full", action="store_true",
                        help="the post-VQ layers attend over the whole utterance (default: the encoder's 2 s blocks)")
    parser.add_argument("--asr-layers", type=int, default=None, help="attention decoder blocks (default: the spec's)")
    parser.add_argument("--asr-dim", type=int, default=None, help="attention decoder width (default: the spec's)")
    parser.add_argument("--keep-layers", type=int, default=1,
                        help="1: start the post-VQ layers from the tokenizer's branch; 0: fresh")
    parser.add_argument("--max-codes", type=int, default=250, help="skip longer utterances (12.5 codes/s)")
    parser.add_argument("--eval-size", type=int, default=200, help="held-out utterances evaluated")
    parser.add_argument("--until", type=int, default=None, help="stop at this step (continue later)")
    add_train_args(parser, lr=1e-3, steps=3000, batch_size=48, warmup=100, eval_every=500, save_every=200)


def main(args: argparse.Namespace) -> int:
    from glm4voice.train.engine import Trainer, config_from_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = config_from_args(args)
    torch.manual_seed(cfg.seed)
    branch = tt.load_for_asr(args.tokenizer)
    if branch.pieces is not None:  # its post-VQ layers are kept (--keep-layers 1); the head is replaced
        log.info("%s has a word-piece branch already: its head is replaced by a fresh one", args.tokenizer)
    if args.asr_layers is not None and args.asr_layers < 1 or args.asr_dim is not None and args.asr_dim < 8:
        raise ConfigError(f"--asr-layers must be >= 1 and --asr-dim >= 8, not {args.asr_layers} / {args.asr_dim}")
    if args.head == "ctc" and (args.asr_layers is not None or args.asr_dim is not None):
        raise ConfigError("--asr-layers and --asr-dim size the attention decoder: use them with --head attention")
    head = {"ctc": int(args.head == "ctc"), "post_full": int(args.post_full)}
    if args.head == "attention":
        head.update(asr_layers=args.asr_layers or branch.spec.asr_layers, asr_dim=args.asr_dim or branch.spec.asr_dim)
        if head["asr_dim"] % branch.spec.asr_heads:
            raise ConfigError(f"--asr-dim {head['asr_dim']} is not a multiple of {branch.spec.asr_heads} heads")
    branch.spec = replace(branch.spec, **head)
    train = load_codes(args.corpus, "train", args.max_codes)
    held = load_codes(args.corpus, "heldout", args.max_codes)
    if not train:
        raise ConfigError(f"{args.corpus}: no cached training codes (run `glm4voice data tokens` first)")
    check_cache(branch, args.corpus, train)
    held = random.Random(1).sample(held, min(args.eval_size, len(held)))
    saved = Path(cfg.out_dir) / "pieces.json"  # a resumed run keeps its vocabulary
    if saved.is_file():
        piece_tok, pieces = read_pieces(saved)
    else:
        piece_tok, pieces = train_pieces(sorted({r["text"] for r in train}), args.pieces)
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        saved.write_text(piece_tok.to_str())
    old_post = {k: v.clone() for k, v in branch.state_dict().items() if k.split(".")[0] in ("post", "post_ln")}
    branch.use_pieces(pieces)
    if not args.keep_layers:
        for m in list(branch.post) + [branch.post_ln]:
            for p in m.parameters():
                nn.init.normal_(p, std=0.02) if p.dim() > 1 else nn.init.zeros_(p)
        branch.post_ln.weight.data.fill_(1.0)
    else:
        branch.load_state_dict(old_post, strict=False)
    model = CodesASR(branch)
    log.info("tokenizer-asr: %d train / %d held-out utterances, %d pieces, %.2fM trained parameters", len(train),
             len(held), len(pieces), sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out_dir) / "run.json").write_text(json.dumps({"tokenizer": args.tokenizer, "pieces": args.pieces,
                                                            "code_noise": args.code_noise, "head": args.head,
                                                            "spec": asdict(branch.spec)}, indent=2))
    trainer = Trainer(cfg, model, batch_fn=CodeBatches(train, piece_tok, cfg.batch_size, cfg.seed,
                                                        noise=args.code_noise, codebook=branch.spec.codebook),
                      loss_fn=lambda m, b: m(*b), eval_fn=make_eval(held) if held else None)
    trainer.fit(until=args.until)
    if args.export and trainer.step >= cfg.steps:
        export(trainer.model, args.tokenizer, args.export, piece_tok)
        log.info("exported the tokenizer with its word-piece ASR branch to %s", args.export)
    return 0
