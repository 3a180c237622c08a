"""Train the speech decoder (flow matching + HiFT vocoder) for one target voice, and export a decoder folder.

    glm4voice train decoder --corpus data/corpus_v1 --out runs/decoder_v1 --part flow --steps 4000
    glm4voice train decoder --corpus data/corpus_v1 --out runs/decoder_v1 --part hift --steps 6000
    glm4voice train decoder --corpus data/corpus_v1 --out runs/decoder_v1 --export-only --export model/decoder

The two parts are independent (the vocoder learns real mel -> waveform, the flow learns tokens -> mel), so they
train as two runs, ``OUT/flow`` and ``OUT/hift``, each resumable with its own ``last.pt`` (``--part both`` runs
one after the other). ``OUT/config.yaml`` fixes the architecture of both; the export combines the two runs (or
one run and the other part of ``--init``, a decoder folder to fine-tune, e.g. the official one) into a folder
that ``SpeechDecoder.from_pretrained`` loads. See docs/training_decoder.md for the choices and measurements.

Flow objective (SPEC §5, CosyVoice ``MaskedDiffWithXvec`` + ``ConditionalCFM.compute_loss``): t ~ U(0, 1) warped
by the cosine schedule, y = (1 − (1 − σ) t) z + t x₁, target u = x₁ − (1 − σ) z, MSE of the estimator's
velocity, with σ = 1e-6. The speaker vector is the zero embedding's (as at inference, so spks = the affine
layer's bias). Unlike the official loss, prompt frames are left out of the loss: at inference they are given.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from glm4voice.constants import TOKEN_RATE_HZ
from glm4voice.decoder.config import DecoderConfig
from glm4voice.decoder.flow import Flow
from glm4voice.decoder.hift import HiFT
from glm4voice.decoder.load import is_weight_normed
from glm4voice.errors import ConfigError
from glm4voice.train.decoder_data import (
    FeatureCache,
    FlowBatch,
    FlowBatches,
    FlowMelCache,
    VocoderBatch,
    VocoderBatches,
    decoder_mel,
    load_decoder_corpus,
)

log = logging.getLogger("glm4voice.train.decoder")

SIGMA_MIN = 1e-6  # cfm_params.sigma_min of the released config (SPEC §3.1)
PARTS = ("flow", "hift")
CONFIG_FILE = "config.yaml"

# Sizes of the embedded decoder (DecoderConfig.small arguments), chosen with the measurements in
# docs/training_decoder.md: ~6.1 M parameters (12.2 MB in fp16), ~1.6 CPU-seconds per 10 s of speech offline.
EMBEDDED_SIZES = dict(d_model=128, heads=4, ffn=512, encoder_layers=4, unet_channels=128, unet_transformer_blocks=1,
                      unet_mid_blocks=3, unet_heads=4, unet_head_dim=32, hift_channels=128)
EMBEDDED_VOCAB = 1024  # codebook of the embedded tokenizer (tokenizer_trainer.TokenizerTrainSpec.codebook)

# Per-part training defaults (any --option given on the command line wins).
PART_DEFAULTS = {
    "flow": dict(steps=4000, batch_size=16, lr=1e-3, warmup=200, grad_clip=1.0, betas=(0.9, 0.98)),
    "hift": dict(steps=6000, batch_size=8, lr=5e-4, warmup=200, grad_clip=100.0, betas=(0.8, 0.99)),
}


# --- flow ---------------------------------------------------------------------------------------------------------
def flow_matching_loss(flow: Flow, batch: FlowBatch, sigma_min: float = SIGMA_MIN) -> tuple[torch.Tensor, dict]:
    """Conditional flow matching loss of one batch (all randomness is in the batch); prompt frames excluded."""
    x1, z = batch.mel, batch.z
    b, c, f = x1.shape
    frame = torch.arange(f, device=x1.device)
    in_prompt = (frame[None, :] < batch.prompt[:, None]).unsqueeze(1).to(x1.dtype)  # (B, 1, F)
    keep = (~batch.drop).to(x1.dtype)  # guidance dropout: unconditional rows see zero mu, spks and cond
    mu = flow.length_regulator(flow.encode(batch.tokens), f) * keep[:, None, None]
    spks = flow.speaker(None, b) * keep[:, None]
    cond = x1 * in_prompt
    t = (1 - torch.cos(batch.t * 0.5 * math.pi)).to(x1.dtype)[:, None, None]  # cosine t_scheduler
    y = (1 - (1 - sigma_min) * t) * z + t * x1
    u = x1 - (1 - sigma_min) * z
    pred = flow.decoder.estimator(y, torch.ones_like(x1[:, :1]), mu, t.flatten(), spks, cond)
    weight = 1 - in_prompt
    loss = ((pred - u) ** 2 * weight).sum() / (weight.sum() * c).clamp_min(1)
    return loss, {"prompt_frac": float(in_prompt.mean()), "dropped": float(batch.drop.float().mean())}


class FlowTrainModel(nn.Module):
    """The flow under training; ``forward(batch) -> (loss, metrics)``."""

    def __init__(self, flow: Flow):
        super().__init__()
        self.flow = flow

    def forward(self, batch: FlowBatch) -> tuple[torch.Tensor, dict]:
        return flow_matching_loss(self.flow, batch.to(self.flow.input_embedding.weight.device))


def make_flow_eval(flow_batches: FlowBatches | None, n_batches: int = 4, n_sampled: int = 2):
    """Held-out flow loss on fixed batches, and the mel L1 of full sampling (10 Euler steps, CFG) to the truth."""

    def evaluate(model: FlowTrainModel) -> dict:
        if flow_batches is None:
            return {}
        losses = [model(flow_batches(10_000 + k))[0].item() for k in range(n_batches)]
        l1 = []
        for k in range(n_sampled):
            batch = flow_batches(20_000 + k)
            flow = model.flow
            dev = next(flow.parameters()).device  # batches are made on the CPU (a CUDA run failed here, session 13)
            tokens, mel, z = batch.tokens[:1].to(dev), batch.mel[:1].to(dev), batch.z[:1].to(dev)
            prompt = torch.zeros(1, mel.shape[1], 0, device=dev)
            out = flow(tokens, prompt, z, flow.speaker(None, 1))
            l1.append((out - mel).abs().mean().item())
        return {"heldout_flow_loss": sum(losses) / len(losses), "heldout_mel_l1": sum(l1) / len(l1)}

    return evaluate


# --- vocoder -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class VocoderLoss:
    """Weights of the vocoder losses. mel: L1 of decoder log-mels (HiFi-GAN's 45); stft: multi-resolution STFT
    (spectral convergence + log magnitude); f0: L1 of the F0 predictor in units of 100 Hz; adv / fm: LSGAN and
    feature matching after ``adv_start`` steps (-1: never)."""

    mel: float = 45.0
    stft: float = 20.0
    f0: float = 1.0
    adv: float = 1.0
    fm: float = 2.0
    adv_start: int = -1


def add_weight_norm(hift: HiFT) -> HiFT:
    """Weight-norm parametrizations on the convs the official checkpoint stores as weight_g / weight_v (dim 0, as
    the old ``weight_norm``); ``load.save_pretrained`` writes them back in that layout."""
    for name, module in list(hift.named_modules()):
        if isinstance(module, nn.Conv1d | nn.ConvTranspose1d) and is_weight_normed(name + ".weight",
                                                                                   module.weight.shape):
            nn.utils.parametrizations.weight_norm(module, dim=0)
    return hift


def init_hift(hift: HiFT, std: float = 0.01) -> HiFT:
    """HiFi-GAN initialisation (normal, std 0.01) of the upsampling and residual convs and ``conv_post``, as the
    official HiFT (CosyVoice ``init_weights``); the rest keeps PyTorch's defaults."""
    for part in (hift.ups, hift.resblocks, hift.source_resblocks, hift.conv_post):
        for m in part.modules():
            if isinstance(m, nn.Conv1d | nn.ConvTranspose1d):
                nn.init.normal_(m.weight, 0.0, std)
    return hift


class VocoderTrainModel(nn.Module):
    """HiFT (+ optional discriminators). ``forward((batch, step)) -> (loss, metrics)``.

    The source is made from the predicted F0, detached: the F0 predictor learns from its own L1 target (the
    gradient through the sine phases is ill-conditioned), the filter learns to use the source it will get at
    inference. With the GAN on, the returned loss is generator loss + discriminator loss: the discriminator term
    sees detached audio and the generator term runs the discriminators with their parameters frozen, so one
    backward and one optimizer step train both (simultaneous updates; no second optimizer in the engine).
    """

    def __init__(self, hift: HiFT, loss: VocoderLoss = VocoderLoss(), discriminators: nn.Module | None = None):
        super().__init__()
        self.hift, self.weights, self.discs = hift, loss, discriminators

    def synthesize(self, batch: VocoderBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(audio (B, 256 K), predicted f0 (B, K)) from the batch's real mel."""
        f0 = self.hift.f0_predictor(batch.mel)
        source, _ = self.hift.source(f0.detach(), batch.noise)
        return self.hift.decode(batch.mel, source), f0

    def reconstruction(self, batch: VocoderBatch, audio: torch.Tensor, f0: torch.Tensor) -> dict[str, torch.Tensor]:
        from glm4voice.train.vocoder_losses import stft_loss

        return {"mel_l1": F.l1_loss(decoder_mel(audio), decoder_mel(batch.audio)),
                "stft": stft_loss(audio, batch.audio),
                "f0_l1": F.l1_loss(f0, batch.f0) / 100.0}

    def forward(self, item: tuple[VocoderBatch, int]) -> tuple[torch.Tensor, dict]:
        from glm4voice.train.vocoder_losses import discriminator_loss, generator_adversarial_loss

        batch, step = item
        batch = batch.to(self.hift.conv_pre.bias.device)
        w = self.weights
        audio, f0 = self.synthesize(batch)
        parts = self.reconstruction(batch, audio, f0)
        loss = w.mel * parts["mel_l1"] + w.stft * parts["stft"] + w.f0 * parts["f0_l1"]
        metrics = {k: float(v.detach()) for k, v in parts.items()}
        if self.discs is not None and 0 <= w.adv_start <= step:
            real = self.discs(batch.audio)
            d_loss = discriminator_loss(real, self.discs(audio.detach()))
            self.discs.requires_grad_(False)
            try:
                adv, fm = generator_adversarial_loss(real, self.discs(audio))
            finally:
                self.discs.requires_grad_(True)
            loss = loss + w.adv * adv + w.fm * fm + d_loss
            metrics.update(adv=float(adv.detach()), fm=float(fm.detach()), d_loss=float(d_loss.detach()))
        return loss, metrics


def make_vocoder_eval(batches: VocoderBatches | None, out_dir: str, n_batches: int = 4):
    """Held-out mel L1 / STFT / F0 error of copy-synthesis, and one example written to OUT/hift/samples/."""

    def evaluate(model: VocoderTrainModel) -> dict:
        if batches is None:
            return {}
        sums: dict[str, float] = {}
        for k in range(n_batches):
            batch = batches(10_000 + k).to(model.hift.conv_pre.bias.device)
            audio, f0 = model.synthesize(batch)
            for key, v in model.reconstruction(batch, audio, f0).items():
                sums["heldout_" + key] = sums.get("heldout_" + key, 0.0) + float(v) / n_batches
        _write_sample(os.path.join(out_dir, "samples", "heldout_copy_synthesis.wav"), audio[0])
        return sums

    return evaluate


def _write_sample(path: str, audio: torch.Tensor) -> None:
    import soundfile as sf

    from glm4voice.constants import DECODER_SAMPLE_RATE

    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, audio.detach().float().cpu().numpy(), DECODER_SAMPLE_RATE)


# --- models, runs, export ----------------------------------------------------------------------------------------
def build_config(args: argparse.Namespace) -> DecoderConfig:
    """The architecture: ``--init``'s config.yaml when fine-tuning, else the size options (embedded defaults)."""
    if getattr(args, "init", None):
        from glm4voice import checkpoints

        return DecoderConfig.from_yaml(checkpoints.resolve(args.init, "decoder") / "config.yaml")
    sizes = {k: getattr(args, k) for k in EMBEDDED_SIZES}
    return DecoderConfig.small(vocab_size=args.vocab_size, **sizes)


def run_config(out_dir: str, cfg: DecoderConfig) -> DecoderConfig:
    """Write OUT/config.yaml on the first run; later runs must ask for the same architecture."""
    path = Path(out_dir) / CONFIG_FILE
    if path.exists():
        saved = DecoderConfig.from_yaml(path)
        if saved != cfg:
            raise ConfigError(f"{path} holds another decoder architecture than the one asked for; use the same size "
                              f"options or a new --out")
        return saved
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.to_yaml())
    return cfg


def new_models(cfg: DecoderConfig, init: str | None, seed: int, discs: nn.Module | None = None,
               loss: VocoderLoss = VocoderLoss()) -> tuple[FlowTrainModel, VocoderTrainModel]:
    """Fresh (or ``init``-initialised) training wrappers of both parts."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        flow, hift = Flow(cfg.flow), init_hift(HiFT(cfg.hift))
    if init is not None:
        from glm4voice.decoder.model import SpeechDecoder

        pre = SpeechDecoder.from_pretrained(init)
        if pre.cfg != cfg:
            raise ConfigError(f"--init {init}: its config.yaml differs from this run's {CONFIG_FILE}")
        flow.load_state_dict(pre.flow.state_dict())
        hift.load_state_dict(pre.hift.state_dict())
    return FlowTrainModel(flow.train().requires_grad_(True)), VocoderTrainModel(
        add_weight_norm(hift.train().requires_grad_(True)), loss, discs)


def load_run(model: nn.Module, run_dir: str) -> tuple[int, int] | None:
    """Load ``run_dir/last.pt``'s model weights into ``model``; (step, planned steps), or None without a run."""
    path = os.path.join(run_dir, "last.pt")
    if not os.path.exists(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return int(state["step"]), int(state["config"]["steps"])


def export(flow: Flow, hift: HiFT, cfg: DecoderConfig, folder: str | Path, *, dtype: torch.dtype = torch.float16,
           ) -> Path:
    """Write a decoder folder (config.yaml + flow/hift safetensors in the official key layout) in ``dtype``."""
    from glm4voice.decoder.load import save_pretrained

    flow_c, hift_c = copy.deepcopy(flow).to(dtype), copy.deepcopy(hift).to(dtype)
    return save_pretrained((flow_c, hift_c), cfg, folder)


def export_runs(out_dir: str, cfg: DecoderConfig, folder: str, *, init: str | None, dtype: torch.dtype) -> Path:
    """Export OUT/flow/last.pt + OUT/hift/last.pt (a missing part comes from ``init``) to a decoder folder."""
    flow_m, voc_m = new_models(cfg, init, seed=0)
    untrained = []
    for part, model in (("flow", flow_m), ("hift", _HiftOnly(voc_m.hift))):
        got = load_run(model, os.path.join(out_dir, part))
        if got is None and init is None:
            raise ConfigError(f"cannot export: no {part} run in {out_dir}/{part} and no --init decoder for it")
        if got is None:
            log.info("export: %s from --init %s", part, init)
            untrained.append(part)
        elif got[0] < got[1]:
            log.warning("export: the %s run stopped at step %d of %d (unfinished)", part, *got)
    out = export(flow_m.flow, voc_m.hift, cfg, folder, dtype=dtype)
    for part in untrained:
        _carry_file(Path(init), part, out)
    return out


def _carry_file(init: Path, part: str, folder: Path) -> None:
    """Replace the exported ``part`` with ``init``'s own file when that holds the same keys in the same dtypes: a
    part the run did not train then ships byte for byte, instead of being re-rounded on every rebuild (HiFT's weight
    norm is folded on load and split again on export, which moves its weights by ~1e-3 of their scale in fp16)."""
    from safetensors import safe_open

    src, dst = init / f"{part}.safetensors", folder / f"{part}.safetensors"
    if not (src.is_file() and dst.is_file()):
        return  # a hub id or official .pt files: the re-export stands
    with safe_open(str(src), "pt") as a, safe_open(str(dst), "pt") as b:
        same = set(a.keys()) == set(b.keys()) and all(a.get_slice(k).get_dtype() == b.get_slice(k).get_dtype()
                                                      for k in a.keys())
    if same:
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.write_bytes(src.read_bytes())
        tmp.replace(dst)
        log.info("export: %s copied unchanged from %s", part, init)


class _HiftOnly(nn.Module):
    """Loads the ``hift.*`` keys of a vocoder run's state dict (discriminator keys are ignored)."""

    def __init__(self, hift: HiFT):
        super().__init__()
        self.hift = hift

    def load_state_dict(self, sd, strict: bool = True, assign: bool = False):
        own = {k: v for k, v in sd.items() if k.startswith("hift.")}
        return super().load_state_dict(own, strict=strict, assign=assign)


# --- entry point ----------------------------------------------------------------------------------------------------
def add_args(parser: argparse.ArgumentParser) -> None:
    from glm4voice.train.engine import add_train_args

    parser.add_argument("--corpus", default=None,
                        help="corpus folder (audio22k/, tokens/, manifest.jsonl), or several, comma-separated, whose "
                             "rows are pooled (e.g. a dialogue corpus and a decoder-only one made by `data synth "
                             "--no-questions --no-answers --target-voice-phrasings K`)")
    parser.add_argument("--tokens", default="tokens", metavar="NAME",
                        help="each corpus's token subfolder: another tokenizer's codes (`data tokens --out "
                             "CORPUS/NAME`), e.g. with --init from `train remap-codes`")
    parser.add_argument("--part", choices=("flow", "hift", "both"), default="both")
    parser.add_argument("--export", default=None, help="write the decoder folder here when the run(s) finish")
    parser.add_argument("--export-only", action="store_true", help="only export OUT/flow + OUT/hift to --export")
    parser.add_argument("--export-dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    parser.add_argument("--init", default=None, help="decoder folder (or 'official') to fine-tune; its config.yaml "
                        "replaces the size options")
    parser.add_argument("--voice", default=None, help="train on this voice's answers only (default: every "
                        "target voice of the corpus, one per language)")
    parser.add_argument("--until", type=int, default=None, help="stop at this step (continue later)")
    parser.add_argument("--vocab-size", type=int, default=EMBEDDED_VOCAB, help="speech-token codebook size")
    for k, v in EMBEDDED_SIZES.items():
        parser.add_argument("--" + k.replace("_", "-"), type=int, default=v)
    g = parser.add_argument_group("flow data")
    g.add_argument("--min-tokens", type=int, default=10)
    g.add_argument("--max-tokens", type=int, default=100, help="longest training window (tokens; 12.5 per s)")
    g.add_argument("--p-prefix", type=float, default=0.5, help="share of windows starting at token 0")
    g.add_argument("--p-prompt", type=float, default=0.5)
    g.add_argument("--max-prompt", type=float, default=0.8, help="largest prompt, as a share of the window")
    g.add_argument("--p-drop", type=float, default=0.2, help="guidance dropout (training_cfg_rate)")
    g = parser.add_argument_group("vocoder")
    g.add_argument("--crop-frames", type=int, default=32, help="mel frames per vocoder crop (256 samples each)")
    for f in dataclasses.fields(VocoderLoss):
        g.add_argument(f"--{f.name.replace('_', '-')}-weight" if f.name != "adv_start" else "--adv-start",
                       dest=f"loss_{f.name}", type=type(f.default), default=f.default)
    g.add_argument("--disc-channels", type=int, default=16, help="width of the MPD/MSD discriminators")
    g.add_argument("--flow-mels", type=float, default=0.0,
                   help="share of vocoder crops whose input is the --init decoder's flow mel of the utterance's "
                        "reference tokens instead of the real mel (targets stay real): the vocoder learns the mels "
                        "it gets at inference; needs --init and speech tokens")
    add_train_args(parser, out_dir=None, steps=None, batch_size=None, lr=None, warmup=None, grad_clip=None,
                   betas=None, eval_every=250, save_every=100, log_every=10)


def part_config(args: argparse.Namespace, part: str):
    from glm4voice.train.engine import config_from_args

    ns = argparse.Namespace(**vars(args))
    for k, v in PART_DEFAULTS[part].items():
        if getattr(ns, k) is None:
            setattr(ns, k, v)
    ns.out_dir = os.path.join(args.out_dir, part)
    return config_from_args(ns)


def main(args: argparse.Namespace) -> int:
    from glm4voice.train.engine import Trainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.out_dir:
        raise SystemExit("glm4voice train decoder: error: --out is required")
    cfg = run_config(args.out_dir, build_config(args))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.export_dtype]
    if args.export_only:
        if not args.export:
            raise SystemExit("glm4voice train decoder: error: --export-only needs --export")
        log.info("exported the decoder to %s", export_runs(args.out_dir, cfg, args.export, init=args.init,
                                                               dtype=dtype))
        return 0
    if not args.corpus:
        raise SystemExit("glm4voice train decoder: error: --corpus is required")
    parts = PARTS if args.part == "both" else (args.part,)
    if args.flow_mels and "hift" in parts and not args.init:
        raise SystemExit("glm4voice train decoder: error: --flow-mels needs --init (the decoder whose flow makes them)")
    if not 0.0 <= args.flow_mels <= 1.0:
        raise SystemExit(f"glm4voice train decoder: error: --flow-mels must be in [0, 1], got {args.flow_mels}")
    load = dict(vocab_size=cfg.flow.vocab_size, voice=args.voice,
                need_tokens="flow" in parts or bool(args.flow_mels), tokens=args.tokens)
    corpora = [c for c in args.corpus.split(",") if c]
    train = [u for c in corpora for u in load_decoder_corpus(c, split="train", **load)[0]]
    held = [u for c in corpora for u in load_decoder_corpus(c, split="heldout", **load)[0]]
    if not train:
        raise SystemExit(f"glm4voice train decoder: error: no usable answer rows in {args.corpus} (see skip counts)")
    log.info("decoder: %d train / %d held-out utterances (%.2f h)", len(train), len(held),
             sum(u.n_tokens for u in train) / TOKEN_RATE_HZ / 3600)
    feats, held_feats = FeatureCache(train), FeatureCache(held)
    loss_w = VocoderLoss(**{f.name: getattr(args, "loss_" + f.name) for f in dataclasses.fields(VocoderLoss)})
    discs = None
    if loss_w.adv_start >= 0:
        from glm4voice.train.vocoder_losses import Discriminators

        discs = Discriminators(channels=args.disc_channels)
    flow_m, voc_m = new_models(cfg, args.init, seed=args.seed, discs=discs, loss=loss_w)
    done = {}
    for part in parts:
        tcfg = part_config(args, part)
        if part == "flow":
            fb = dict(min_tokens=args.min_tokens, max_tokens=args.max_tokens, p_prefix=args.p_prefix,
                      p_prompt=args.p_prompt, max_prompt=args.max_prompt, p_drop=args.p_drop)
            batches = FlowBatches(train, feats, tcfg.batch_size, tcfg.seed, **fb)
            held_b = FlowBatches(held, held_feats, 4, 1, **fb) if held else None
            trainer = Trainer(tcfg, flow_m, batch_fn=batches, loss_fn=lambda m, b: m(b),
                              eval_fn=make_flow_eval(held_b))
        else:
            flow_mels = None
            if args.flow_mels:
                from glm4voice.decoder.model import SpeechDecoder

                frozen = SpeechDecoder.from_pretrained(args.init)
                flow_mels = FlowMelCache(train, frozen, seed=tcfg.seed)
                log.info("hift: %.0f %% of the crops take the flow mel of %s", 100 * args.flow_mels, args.init)
            vb = VocoderBatches(train, feats, tcfg.batch_size, tcfg.seed, frames=args.crop_frames,
                                harmonics=cfg.hift.nb_harmonics, flow_mels=flow_mels, p_flow=args.flow_mels)
            held_v = (VocoderBatches(held, held_feats, 4, 1, frames=args.crop_frames, harmonics=cfg.hift.nb_harmonics)
                      if held else None)
            accum = tcfg.grad_accum
            trainer = Trainer(tcfg, voc_m, batch_fn=lambda s, r, w, vb=vb, a=accum: (vb(s, r, w), s // a),
                              loss_fn=lambda m, b: m(b), eval_fn=make_vocoder_eval(held_v, tcfg.out_dir))
        log.info("%s: %.2f M parameters, %s", part, sum(p.numel() for p in trainer.model.parameters()) / 1e6,
                 json.dumps({k: getattr(tcfg, k) for k in ("steps", "batch_size", "lr", "warmup")}))
        trainer.fit(until=args.until)
        done[part] = trainer.step >= tcfg.steps
    if args.export and all(done.values()):
        log.info("exported the decoder to %s", export_runs(args.out_dir, cfg, args.export, init=args.init,
                                                               dtype=dtype))
    return 0
