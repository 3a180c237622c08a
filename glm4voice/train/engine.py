"""The training loop every glm4voice trainer shares: one process or many (torchrun), resumable, logged.

A trainer supplies a model, ``batch_fn(step, rank, world) -> batch`` and ``loss_fn(model, batch) -> (loss,
metrics)``. Batches are a pure function of the step and the rank, so a run killed at any moment and resumed from
``last.pt`` sees exactly the batches it would have seen (no data-loader state to save). The loop adds AdamW with
warm-up and cosine decay, gradient accumulation and clipping, bf16 autocast, DDP when ``WORLD_SIZE`` > 1, a JSON
lines metric log, a loss plot, and atomic checkpoints holding only tensors and plain Python (loadable with
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("glm4voice.train")

CHECKPOINT = "last.pt"
METRICS = "metrics.jsonl"
PLOT = "loss.png"


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str
    steps: int = 1000
    batch_size: int = 16  # per process and per micro-step
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup: int = 100
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    precision: str = "fp32"  # "fp32" | "bf16" (autocast)
    device: str = "cpu"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    save_every: int = 100
    threads: int | None = None  # torch.set_num_threads on CPU

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {self.precision!r}")
        if self.steps < 0 or self.grad_accum < 1 or self.batch_size < 1:
            raise ValueError("steps >= 0, grad_accum >= 1 and batch_size >= 1 are required")


def add_train_args(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """Add one ``--option`` per TrainConfig field; ``defaults`` override the dataclass defaults per trainer."""
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        if f.name == "out_dir":
            parser.add_argument("--out", dest="out_dir", required="out_dir" not in defaults, default=default,
                                help="run folder (resumes from its last.pt)")
        elif f.name == "betas":
            parser.add_argument(flag, type=float, nargs=2, default=default)
        elif f.name == "threads":
            parser.add_argument(flag, type=int, default=default)
        else:
            parser.add_argument(flag, type=type(f.default), default=default)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    kw = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    kw["betas"] = tuple(kw.get("betas", TrainConfig.betas))
    return TrainConfig(**kw)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def decay_groups(params: list[nn.Parameter], weight_decay: float, **extra) -> list[dict]:
    """AdamW groups of ``params``: matrices decay, vectors (norms, biases) do not; ``extra`` keys go in both (e.g.
    ``lr_scale``, which ``Trainer`` multiplies into the scheduled learning rate)."""
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, **extra},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, **extra}]


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: matrices decay, vectors (norms, biases) do not; frozen parameters are left out."""
    return decay_groups([p for p in model.parameters() if p.requires_grad], weight_decay)


def cpu_lacks_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU's flags are readable and name no bf16 matrix instructions (avx512_bf16, amx_bf16); False
    when they do or cannot be read (not Linux), so that nothing is claimed without evidence."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return False
    return flags is not None and not ({"avx512_bf16", "amx_bf16"} & set(flags))


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment; (0, 1, 0) in a single process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2]}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((3, tuple(int(x) for x in s["python"]), s["python_pos"]))


class Trainer:
    def __init__(self, cfg: TrainConfig, model: nn.Module, *, batch_fn: Callable[[int, int, int], Any],
                 loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, dict]],
                 eval_fn: Callable[[nn.Module], dict] | None = None, param_groups: list[dict] | None = None,
                 extra_state: dict[str, Any] | None = None, after_step: Callable[[nn.Module, int], None] | None = None):
        self.cfg = cfg
        self.rank, self.world, self.local_rank = dist_info()
        if cfg.threads and torch.device(cfg.device).type == "cpu":
            torch.set_num_threads(cfg.threads)
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if torch.device(cfg.device).type == "cuda" else "gloo"
            dist.init_process_group(backend)
        self.device = torch.device(cfg.device)
        if cfg.precision == "bf16" and self.device.type == "cpu" and cpu_lacks_native_bf16():
            log.warning("--precision bf16 on a CPU without native bf16 instructions (no avx512_bf16 / amx_bf16 in "
                        "/proc/cpuinfo): autocast bf16 is much slower than fp32 there (an AVX2-only AMD EPYC, session "
                        "13: a 6.8M-parameter GLM step 25x slower); use --precision fp32")
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", self.local_rank)
        torch.manual_seed(cfg.seed + self.rank)
        random.seed(cfg.seed + self.rank)
        self.model = model.to(self.device)
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=True)
                    if self.world > 1 else None)
        groups = param_groups if param_groups is not None else default_param_groups(self.model, cfg.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
        self.batch_fn, self.loss_fn, self.eval_fn, self.after_step = batch_fn, loss_fn, eval_fn, after_step
        self.extra_state = extra_state or {}
        self.step = 0
        self.is_main = self.rank == 0
        if self.is_main:
            os.makedirs(cfg.out_dir, exist_ok=True)

    # ---- checkpoints -------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.cfg.out_dir, CHECKPOINT)

    def save(self) -> None:
        if not self.is_main:
            return
        state = {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "rng": _rng_state(), "config": {k: list(v) if isinstance(v, tuple) else v
                                                 for k, v in asdict(self.cfg).items()},
                 "extra": {k: v.state_dict() for k, v in self.extra_state.items()}}
        tmp = self.checkpoint_path + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)  # atomic: a kill mid-save never corrupts last.pt

    def load(self) -> bool:
        """Resume from ``out_dir/last.pt`` when it exists; returns whether it did."""
        if not os.path.exists(self.checkpoint_path):
            return False
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the path
            raise RuntimeError(f"cannot resume: {self.checkpoint_path} is not a readable checkpoint ({e})") from e
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for k, v in self.extra_state.items():
            if k in state.get("extra", {}):
                v.load_state_dict(state["extra"][k])
        _set_rng_state(state["rng"])
        self.step = int(state["step"])
        log.info("resumed %s at step %d", self.checkpoint_path, self.step)
        return True

    # ---- loop --------------------------------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def train_step(self) -> dict:
        cfg, net = self.cfg, self.ddp or self.model
        self.model.train()
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(cfg, self.step) * g.get("lr_scale", 1.0)  # a group may train slower (pretrained)
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            batch = self.batch_fn(self.step * cfg.grad_accum + micro, self.rank, self.world)
            sync = self.ddp is None or micro == cfg.grad_accum - 1
            with (nullcontext() if sync else self.ddp.no_sync()), self._autocast():
                loss, metrics = self.loss_fn(net, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.step}")
            (loss / cfg.grad_accum).backward()
            for k, v in {"loss": loss.item(), **metrics}.items():
                totals[k] = totals.get(k, 0.0) + float(v) / cfg.grad_accum
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf")))
        self.optimizer.step()
        if self.after_step is not None:
            self.after_step(self.model, self.step)
        totals["lr"] = lr_at(cfg, self.step)
        return totals

    def evaluate(self) -> dict:
        if self.eval_fn is None or not self.is_main:
            return {}
        self.model.eval()
        with torch.no_grad():
            out = self.eval_fn(self.model)
        self.model.train()
        return out

    def _log(self, row: dict) -> None:
        if not self.is_main:
            return
        with open(os.path.join(self.cfg.out_dir, METRICS), "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def fit(self, until: int | None = None) -> nn.Module:
        """Train to ``cfg.steps`` (resuming from last.pt), or stop early at step ``until`` (a time-boxed run; the
        schedule still follows ``cfg.steps``, so a later call continues exactly)."""
        from tqdm import tqdm

        cfg = self.cfg
        self.load()
        stop = cfg.steps if until is None else min(until, cfg.steps)
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.is_main, desc=os.path.basename(cfg.out_dir),
                   dynamic_ncols=True)
        window: list[dict] = []
        t0 = time.perf_counter()
        while self.step < stop:
            metrics = self.train_step()
            self.step += 1
            window.append(metrics)
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                # a metric some steps lack (a loss on samples a batch may lack) averages over those that have it
                keys = dict.fromkeys(k for m in window for k in m)
                avg = {k: sum(m[k] for m in window if k in m) / sum(k in m for m in window) for k in keys}
                avg.update(step=self.step, sec_per_step=(time.perf_counter() - t0) / len(window))
                bar.set_postfix(loss=f"{avg['loss']:.4f}")
                self._log({"kind": "train", **avg})
                window, t0 = [], time.perf_counter()
            if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                ev = self.evaluate()
                if ev:
                    self._log({"kind": "eval", "step": self.step, **ev})
                    bar.write(f"step {self.step} eval " + " ".join(f"{k}={v:.4g}" for k, v in ev.items()))
            if self.step % cfg.save_every == 0 or self.step == stop:
                self.save()
                plot_metrics(cfg.out_dir)
        bar.close()
        return self.model


class WeightAverage:
    """Exponential moving average of a model's trained parameters (Polyak averaging), for ``Trainer``'s
    ``after_step`` and ``extra_state``: ``update`` after each optimizer step, ``swapped_in`` to evaluate or export the
    averaged weights. A small batch makes every step's weights noisy; their average over the last ~1 / (1 - decay)
    steps usually generalises better. The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so the
    first steps are not frozen at the starting weights. A run resumed from a checkpoint without an average starts
    one from its current weights. The shadow copy is float32 whatever the model's dtype."""

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the averaging decay must be in (0, 1), not {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {}

    @staticmethod
    def _trained(model: nn.Module) -> dict[str, torch.Tensor]:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    @classmethod
    def from_state(cls, state: dict) -> WeightAverage:
        """An average as saved by ``state_dict`` (e.g. ``last.pt``'s ``extra.ema``)."""
        avg = cls(float(state["decay"]))
        avg.load_state_dict(state)
        return avg

    @torch.no_grad()
    def update(self, model: nn.Module, _step: int | None = None) -> None:  # Trainer.after_step also passes the step
        params = self._trained(model)
        if not self.shadow:
            self.shadow = {n: p.detach().float().clone() for n, p in params.items()}
        else:
            d = min(self.decay, (1 + self.updates) / (10 + self.updates))
            for n, p in params.items():
                self.shadow[n].mul_(d).add_(p.detach().float(), alpha=1 - d)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.shadow = {n: t.float() for n, t in state["shadow"].items()}

    @contextmanager
    def swapped_in(self, model: nn.Module):
        """The model holds the averaged weights inside the block, its own weights again after it (also on error)."""
        if not self.shadow:
            yield model  # nothing averaged yet: the weights are the model's own
            return
        params = self._trained(model)
        missing = sorted(set(params) - set(self.shadow))
        if missing:
            raise KeyError(f"the weight average has no copy of {missing[0]} (a different model?)")
        saved = {n: p.detach().clone() for n, p in params.items()}
        try:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(self.shadow[n].to(p.dtype))
            yield model
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved[n])


def read_metrics(out_dir: str) -> list[dict]:
    path = os.path.join(out_dir, METRICS)
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line after a kill
                continue
    return rows


def plot_groups(train: list[dict], evals: list[dict]) -> dict[str, list[tuple[str, str]]]:
    """Which (kind, key) series go on which panel of ``loss.png``: losses (train and held-out together, log scale),
    held-out rates (accuracies and error rates, values within [0, 1.5]) and everything else (counts, perplexities,
    shares; log scale), so that a WER of 0.8 is not drawn on the scale of 700 codes in use."""
    skip = {"kind", "step", "lr", "sec_per_step", "grad_norm", "quantized"}
    groups: dict[str, list[tuple[str, str]]] = {"losses": [], "rates": [], "other": []}
    for k in (k for k in train[-1] if k not in skip) if train else ():
        groups["losses" if "loss" in k else "other"].append(("train", k))
    for k in sorted({k for r in evals for k in r if k not in skip}):
        vals = [r[k] for r in evals if isinstance(r.get(k), int | float)]
        if "loss" in k:
            groups["losses"].append(("eval", k))
        elif vals and all(0 <= v <= 1.5 for v in vals):
            groups["rates"].append(("eval", k))
        else:
            groups["other"].append(("eval", k))
    return {name: keys for name, keys in groups.items() if keys}


def plot_metrics(out_dir: str) -> str | None:
    """Write ``loss.png`` (train and held-out metrics over steps, panels by scale: ``plot_groups``); None when
    matplotlib is missing."""
    if not (dist_info()[0] == 0):
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(out_dir)
    series = {"train": [r for r in rows if r.get("kind") == "train"],
              "eval": [r for r in rows if r.get("kind") == "eval"]}
    if not series["train"]:
        return None
    groups = plot_groups(series["train"], series["eval"])
    titles = {"losses": "losses (lines: train, dots: held-out)", "rates": "held-out rates",
              "other": "other metrics"}
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, (name, keys) in zip(axes[0], groups.items(), strict=True):
        for kind, k in keys:
            pts = [(r["step"], r[k]) for r in series[kind] if isinstance(r.get(k), int | float)]
            if name != "rates":
                pts = [(x, y) for x, y in pts if y > 0]  # log scale
            if pts:
                style = {"marker": "o", "markersize": 3} if kind == "eval" else {"linewidth": 1}
                ax.plot(*zip(*pts, strict=True), label=f"{k} (held-out)" if kind == "eval" and name != "rates"
                        else k, **style)
        ax.set(xlabel="step", title=titles[name], yscale="linear" if name == "rates" else "log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, PLOT)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
