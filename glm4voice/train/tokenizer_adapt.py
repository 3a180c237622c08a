"""Adapt a trained tokenizer's encoder to new speakers while its codes keep their meaning.

``glm4voice train tokenizer-adapt --tokenizer DIR --corpus DIR --out RUN --export DIR``

A tokenizer trained on a few voices turns an unseen voice into codes that its own ASR branch (and so the LM, which
learned the codes) misreads. Retraining it from scratch on more voices gives new codes, and the LM and decoder
trained on the old ones would have to start again. This trainer changes only the encoder before the quantiser (the
convolutions and attention layers that make the 12.5 Hz states). The codebook, the post-VQ layers and the
word-piece ASR branch of ``train tokenizer-asr`` stay frozen: the branch fixes what each code means, and the encoder
learns to send the new voices' speech to the codes that mean the right words. The loss, per utterance:

- CTC of the frozen word-piece branch reading the quantised states. ``--assign ste``: the nearest codes with the
  straight-through gradient, as in the tokenizer trainer. ``--assign soft``: the codebook average weighted by
  softmax(-squared distance / tau), tau the batch's mean gap between the nearest and the second-nearest code's
  squared distance (detached), so the gradient says which *code* would read better, not only where the state
  should move;
- the commitment term (``vq_loss_scale`` x 0.25 x MSE to the nearest code), so states stay near their codes;
- ``--distill`` x a term that keeps the codes of voices the original tokenizer was trained on (``--teacher-corpus``:
  the corpus it was trained on; every utterance if not given) where they were, since the LM learned them. With
  ``ste``: MSE between the encoder's states and the original encoder's (frozen copy), over the original states'
  mean square; with ``soft``: cross-entropy of the same soft assignment against the original encoder's codes.

``--consistency`` turns the distillation into augmentation consistency: the original encoder reads the *clean*
utterance and the student an augmented copy of it, time-aligned, and the student learns to give the copy the clean
utterance's codes (those the LM was trained on, as ``glm4voice data tokens`` made them). The augmentations keep
the tempo, so the frames line up: ``--pitch S`` scales every frequency by 2^(s/12), s drawn from [-S, S] semitones
(pitch and formants together, as a different speaker would: the audio is resampled and its features stretched
back to the original frame count, ``tokenizer_trainer.shifted_features``); ``--tilt D`` adds a spectral slope of
up to +-D dB across the band (another microphone or voice quality); ``--vtlp`` and ``--spec-masks`` as in the
tokenizer trainer.
``--clean-share`` of the utterances stay unaugmented. Session 12 measured why: the shipped tokenizer's phoneme
error on the training voices' held-out phrasings rises from 0.31 to 0.43 (kal_diphone) when sox shifts the pitch
three semitones down, and the held-out voices it fails (flite awb, festival ked_diphone: 0.52 against 0.09-0.16 for
the held-out espeak voices) are other speakers. Measured then: shifted speech got easier and the held-out natural
voices did not (docs/training.md), while a quarter of the known codes moved.

Data: the corpus's audio (``--train-limit`` utterances at most, a seeded sample; audio is held in memory), with the
tokenizer trainer's augmentation options. The evaluation reports the held-out ASR error through the codes and
``code_agreement``: the share of codes of known-voice training utterances that equal the original tokenizer's.

The export has the official layout plus the unchanged branch and vocabulary, so ``glm4voice eval tokenizer`` and
``glm4voice data tokens`` read it like any glm4voice-trained tokenizer.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import random
from pathlib import Path

import torch
from torch import Tensor, nn

from glm4voice.errors import CheckpointError, ConfigError
from glm4voice.train import tokenizer_asr as ta
from glm4voice.train import tokenizer_trainer as tt

log = logging.getLogger("glm4voice.train.tokenizer_adapt")

# encoder parameters that make the pre-VQ states; the codebook and embed_positions2 (post-VQ) stay frozen
ASSIGN = ("ste", "soft")  # how the CTC term reads the states: nearest codes + straight-through, or soft codes
TRAINED_PREFIXES = ("encoder.conv1.", "encoder.conv2.", "encoder.embed_positions.", "encoder.layers.")


class EncoderAdapt(nn.Module):
    """``branch`` (a ``TokenizerTrainModel`` with a word-piece ASR branch) whose pre-VQ encoder trains; a frozen copy
    of its encoder as it was given is the distillation teacher (kept out of the state dict: it is the tokenizer
    folder's, and a resumed run rebuilds it from there)."""

    def __init__(self, branch: tt.TokenizerTrainModel, *, distill: float = 1.0, assign: str = "ste",
                 ctc_weight: float = 1.0):
        super().__init__()
        if branch.pieces is None:
            raise CheckpointError("tokenizer-adapt needs a word-piece ASR branch (`glm4voice train tokenizer-asr`); "
                                  "this tokenizer has the byte branch of its trainer")
        if distill < 0 or ctc_weight < 0:
            raise ConfigError(f"--distill and --ctc-weight must be >= 0, not {distill}, {ctc_weight}")
        if assign not in ASSIGN:
            raise ConfigError(f"--assign must be one of {ASSIGN}, not {assign!r}")
        self.branch = branch
        self.distill, self.assign, self.ctc_weight = distill, assign, ctc_weight
        for name, p in branch.named_parameters():
            p.requires_grad_(name.startswith(TRAINED_PREFIXES))
        branch.steps_seen.fill_(branch.spec.vq_warmup)  # the branch reads codes: evaluate through the quantiser
        teacher = copy.deepcopy(branch).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.__dict__["teacher"] = teacher  # not a submodule: no gradients, not saved

    def train(self, mode: bool = True):
        super().train(mode)
        self.branch.vq.eval()  # the codebook is fixed: no EMA updates, no restarts
        self.teacher.eval()
        return self

    def forward(self, feats: Tensor, frame_mask: Tensor, targets: list[list[int]], known: Tensor,
                clean: Tensor | None = None) -> tuple[Tensor, dict]:
        """The loss of one batch; with ``clean`` (the unaugmented features of the same utterances, frame-aligned
        with ``feats``) the teacher reads ``clean`` and the student ``feats`` (augmentation consistency)."""
        b = self.branch
        h, valid = b.encode(feats, frame_mask)
        hf = h.float()
        cb = b.vq.codebook.weight.float()
        dist = (hf * hf).sum(-1, keepdim=True) - 2 * hf @ cb.t() + (cb * cb).sum(-1)  # (B, T, K) squared distances
        code = cb[dist.detach().argmin(-1)]  # the nearest codes, as the quantiser picks them
        stats = {}
        if self.assign == "soft":
            with torch.no_grad():
                two = dist[valid].topk(2, dim=-1, largest=False).values
                tau = (two[:, 1] - two[:, 0]).mean().clamp(min=1e-6)
            logits = -dist / tau
            q = logits.softmax(-1) @ cb
            stats["tau"] = float(tau)
        else:
            q = hf + (code - hf).detach()  # straight-through
        ctc = self.ctc_weight * b.asr.loss(b.memory(q.to(h.dtype), valid), valid, targets)
        commit = ((hf - code) ** 2).mean(-1)[valid].mean() * 0.25 * b.spec.vq_loss_scale
        loss = ctc + commit
        stats.update(asr_loss=float(ctc.detach()), commit_loss=float(commit.detach()))
        if self.distill and bool(known.any()):
            w = valid & known[:, None].to(valid.device)
            with torch.no_grad():
                ref, _ = self.teacher.encode(feats if clean is None else clean, frame_mask)
                ref = ref.float()
            if self.assign == "soft":
                ref_ids = b.vq.nearest(ref.reshape(-1, ref.shape[-1])).view(ref.shape[:2])
                d = torch.nn.functional.cross_entropy(logits[w], ref_ids[w])
            else:
                d = ((hf - ref) ** 2).mean(-1)[w].mean() / (ref ** 2).mean(-1)[w].mean().clamp(min=1e-8)
            loss = loss + self.distill * d
            stats["distill_loss"] = float(d.detach())
        return loss, stats


class AdaptBatches(tt.Batches):
    """The tokenizer trainer's batches with word-piece targets and a flag per utterance: is its voice known to the
    original tokenizer (distilled)? With ``consistency`` each batch also carries the clean features, frame-aligned
    with the augmented ones (pitch, tilt, VTLP and spec masks act on the augmented copy only; ``clean_share`` of the
    utterances are left as they are); without it the augmentation is the tokenizer trainer's."""

    def __init__(self, utts: list[tt.Utterance], piece_tok, batch_size: int, seed: int, *,
                 known_voices: set[str] | None, consistency: bool = False, clean_share: float = 0.2, **augment):
        super().__init__(utts, batch_size, seed, **augment)
        if not 0.0 <= clean_share <= 1.0:
            raise ConfigError(f"--clean-share must be in [0, 1], not {clean_share}")
        self.targets = {u.id: piece_tok.encode(u.text.lower()).ids[:250] for u in utts}
        self.known_voices = known_voices
        self.consistency, self.clean_share = consistency, clean_share

    def __call__(self, step: int, rank: int, world: int):
        part, rng = self.pick(step, rank)
        known = torch.tensor([self.known_voices is None or u.voice in self.known_voices for u in part])
        targets = [self.targets[u.id] for u in part]
        if not self.consistency:
            feats, mask = self.features(part, rng)
            return feats, mask, targets, known
        pcms = [self._perturb(u.pcm, rng) for u in part]  # speed perturbation: teacher and student alike
        clean, mask = tt.featurize(pcms)
        feats = clean.clone()
        rows = [b for b in range(len(pcms)) if rng.random() >= self.clean_share]
        self.augment(feats, mask, pcms, rng, rows)
        return feats, mask, targets, known, clean


def make_eval(held: list[tt.Utterance], known: list[tt.Utterance], batch_size: int = 16):
    """Held-out ASR error through the codes (the tokenizer trainer's evaluation; also over the held-out voices
    alone, ``*_heldout_voices``) and the share of codes of ``known`` utterances that equal the original
    tokenizer's."""
    from glm4voice.train.voices import HELDOUT_VOICE_NAMES

    asr_eval = tt.make_eval(held, batch_size)
    unseen = [u for u in held if u.voice in HELDOUT_VOICE_NAMES]
    unseen_eval = tt.make_eval(unseen, batch_size) if unseen and len(unseen) < len(held) else None
    batches = [tt.featurize([u.pcm for u in known[i: i + batch_size]]) for i in range(0, len(known), batch_size)]
    original: list[tuple[Tensor, Tensor]] = []  # (valid, codes) of the frozen original, computed once

    def evaluate(model: EncoderAdapt) -> dict:
        res = asr_eval(model.branch)
        if unseen_eval is not None:  # the held-out voices alone (the rest: held-out phrasings of training voices)
            res.update({f"{k}_heldout_voices": v for k, v in unseen_eval(model.branch).items()
                        if k in ("wer_en", "cer_zh")})
        if not original:
            original.extend(model.teacher.read(feats, mask)[1:] for feats, mask in batches)
        same = total = 0
        for (feats, mask), (valid, old) in zip(batches, original, strict=True):
            new = model.branch.read(feats, mask)[2]
            same += int((new == old)[valid].sum())
            total += int(valid.sum())
        if total:
            res["code_agreement"] = same / total
        return res

    return evaluate


def export(model: EncoderAdapt, tokenizer_dir: str | Path, folder: str | Path) -> Path:
    """The adapted tokenizer: the new encoder with the original codebook, EMA state, branch and vocabulary."""
    folder = tt.export(model.branch, folder)
    src = Path(tokenizer_dir) / ta.ASR_PIECES
    if src.is_file():
        (folder / ta.ASR_PIECES).write_bytes(src.read_bytes())
    return folder


def export_checkpoint(model: EncoderAdapt, tokenizer_dir: str, run_dir: str, folder: str | None) -> int:
    """``--export-only``: the run's last.pt (read as weights only) exported to ``folder``."""
    from glm4voice.train.engine import CHECKPOINT

    path = Path(run_dir) / CHECKPOINT
    if not folder:
        raise ConfigError("--export-only needs --export FOLDER")
    if not path.is_file():
        raise ConfigError(f"{path} not found: nothing to export")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a tokenizer-adapt checkpoint of this tokenizer ({e})") from e
    export(model, tokenizer_dir, folder)
    log.info("exported step %d of %s to %s", int(state["step"]), run_dir, folder)
    return 0


def add_args(parser: argparse.ArgumentParser) -> None:
    from glm4voice.train.engine import add_train_args

    parser.add_argument("--tokenizer", required=True,
                        help="a tokenizer folder with a word-piece ASR branch (`glm4voice train tokenizer-asr`)")
    parser.add_argument("--pieces", default=None,
                        help=f"the branch's word-piece vocabulary (default: the tokenizer folder's {ta.ASR_PIECES}; "
                             f"older exports: the tokenizer-asr run's pieces.json)")
    parser.add_argument("--corpus", required=True, help="corpus folder made by `glm4voice data synth`")
    parser.add_argument("--teacher-corpus", default=None,
                        help="the corpus the tokenizer was trained on: its training voices are distilled")
    parser.add_argument("--distill", type=float, default=1.0, help="weight of the distillation term (0: off)")
    parser.add_argument("--assign", choices=ASSIGN, default="ste",
                        help="ste: CTC reads the nearest codes (straight-through); soft: a softmax over the codes")
    parser.add_argument("--export", default=None, help="write the adapted tokenizer folder here at the end")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="skip longer utterances")
    parser.add_argument("--train-limit", type=int, default=None, help="train on a seeded sample of this many")
    parser.add_argument("--eval-size", type=int, default=96, help="held-out utterances evaluated")
    parser.add_argument("--agreement-size", type=int, default=48,
                        help="known-voice training utterances whose codes are compared with the original's")
    parser.add_argument("--until", type=int, default=None, help="stop at this step (continue later)")
    parser.add_argument("--export-only", action="store_true",
                        help="export the run's last.pt to --export now (e.g. mid-run) without training")
    parser.add_argument("--speed-perturb", type=float, default=0.0, help="as `train tokenizer`")
    parser.add_argument("--vtlp", type=float, default=0.0, help="as `train tokenizer`")
    parser.add_argument("--spec-masks", type=int, default=0, help="as `train tokenizer`")
    parser.add_argument("--consistency", action="store_true",
                        help="the teacher reads the clean utterance, the student an augmented copy (--pitch, --tilt, "
                             "--vtlp, --spec-masks); distilled towards the clean utterance's codes")
    parser.add_argument("--pitch", type=float, default=0.0, help="as `train tokenizer`")
    parser.add_argument("--tilt", type=float, default=0.0, help="as `train tokenizer`")
    parser.add_argument("--clean-share", type=float, default=0.2,
                        help="with --consistency: the share of utterances left unaugmented")
    parser.add_argument("--ctc-weight", type=float, default=1.0, help="weight of the frozen branch's CTC term")
    add_train_args(parser, lr=3e-4, steps=2000, batch_size=24, warmup=100, eval_every=250, save_every=100)


def known_voices(corpus_dir: str | None) -> set[str] | None:
    """Training voices of ``corpus_dir`` (None: no corpus given, every voice counts as known)."""
    if corpus_dir is None:
        return None
    from glm4voice.train.corpus import load_manifest

    voices = {r["voice"] for r in load_manifest(corpus_dir).rows if r["split"] == "train"}
    if not voices:
        raise ConfigError(f"{corpus_dir}: no training utterances, so no known voices")
    return voices


def main(args: argparse.Namespace) -> int:
    from glm4voice.train.engine import Trainer, config_from_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = config_from_args(args)
    torch.manual_seed(cfg.seed)
    branch = tt.load_for_asr(args.tokenizer)
    pieces_path = Path(args.pieces) if args.pieces else Path(args.tokenizer) / ta.ASR_PIECES
    if not pieces_path.is_file():
        raise ConfigError(f"{pieces_path} not found: pass --pieces (the tokenizer-asr run's pieces.json)")
    piece_tok, pieces = ta.read_pieces(pieces_path)
    if branch.pieces is not None and pieces != branch.pieces:
        raise CheckpointError(f"{pieces_path} is not the vocabulary of {args.tokenizer}'s ASR branch")
    model = EncoderAdapt(branch, distill=args.distill, assign=args.assign, ctc_weight=args.ctc_weight)
    if args.export_only:
        return export_checkpoint(model, args.tokenizer, cfg.out_dir, args.export)
    known = known_voices(args.teacher_corpus)
    train = tt.load_corpus(args.corpus, split="train", max_seconds=args.max_seconds, limit=args.train_limit,
                           seed=cfg.seed)
    held = tt.load_corpus(args.corpus, split="heldout", max_seconds=args.max_seconds, limit=args.eval_size, seed=1)
    if not train:
        raise ConfigError(f"{args.corpus}: no training utterances up to {args.max_seconds} s")
    pool = [u for u in train if known is None or u.voice in known]
    agree = random.Random(2).sample(pool, min(args.agreement_size, len(pool)))
    new_voices = sorted({u.voice for u in train} - (known or set()))
    log.info("tokenizer-adapt: %d train (%d of voices new to the tokenizer: %d voices) / %d held-out utterances, "
             "%.2fM trained parameters", len(train), len(train) - len(pool), len(new_voices), len(held),
             sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out_dir) / "run.json").write_text(json.dumps(
        {"tokenizer": args.tokenizer, "corpus": args.corpus, "teacher_corpus": args.teacher_corpus,
         "distill": args.distill, "assign": args.assign, "train_limit": args.train_limit,
         "speed_perturb": args.speed_perturb, "vtlp": args.vtlp, "spec_masks": args.spec_masks,
         "consistency": args.consistency, "pitch": args.pitch, "tilt": args.tilt, "clean_share": args.clean_share,
         "ctc_weight": args.ctc_weight, "new_voices": new_voices}, indent=2))
    batches = AdaptBatches(train, piece_tok, cfg.batch_size, cfg.seed, known_voices=known,
                           consistency=args.consistency, clean_share=args.clean_share, speed=args.speed_perturb,
                           vtlp=args.vtlp, spec_masks=args.spec_masks, pitch=args.pitch, tilt=args.tilt)
    trainer = Trainer(cfg, model, batch_fn=batches, loss_fn=lambda m, b: m(*b),
                      eval_fn=make_eval(held, agree) if held or agree else None)
    trainer.fit(until=args.until)
    if args.export and trainer.step >= cfg.steps:
        export(trainer.model, args.tokenizer, args.export)
        log.info("exported the adapted tokenizer to %s", args.export)
    return 0
