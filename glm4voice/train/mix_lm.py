"""Mix LMs of the same architecture weight by weight: ``base + alpha * (other - base)``.

Session 37 found that every continuation of the shipped LM (1,600 more steps, with or without new data) answered
more typed questions but said some of v17's own answers worse. When ``other`` is a fine-tune of ``base``, a
point between them (weight interpolation, "model soup"; Wortsman et al. 2022, "Robust fine-tuning of zero-shot
models", arXiv:2109.01903) often keeps part of what the fine-tune learned and more of what the base did well, at
no training cost. ``alpha`` = 0 gives ``base``, 1 gives ``other``.

    glm4voice train mix-lm --base glm4voice/assets/embedded/lm --other runs/lm_a4/export --alpha 0.5 \\
        --out runs/lm_mix50

Both folders may be plain or int8-stored (the embedded LM); they are read in float32 and must have the same
architecture (every config field but the stored dtype) and the same tensors. Several ``--other`` folders are
averaged first (a uniform soup of fine-tunes of one base). Writes a complete model folder in the (first) other's
stored dtype with its text tokenizer, and mix.json (the sources and alpha).
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger("glm4voice.train.mix_lm")


def _check_same(base: dict[str, Tensor], other: dict[str, Tensor], what: str = "the other") -> None:
    only_base, only_other = sorted(set(base) - set(other)), sorted(set(other) - set(base))
    if only_base or only_other:
        key = (only_base or only_other)[0]
        raise ValueError(f"tensor {key} is only in {'the base' if only_base else what} model")
    for key, w in base.items():
        if w.shape != other[key].shape:
            raise ValueError(f"tensor {key} has shape {tuple(w.shape)} in the base model, "
                             f"{tuple(other[key].shape)} in {what}")


def _check_alpha(alpha: float) -> None:
    if not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")


def mix_state_dicts(base: dict[str, Tensor], other: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """``base + alpha * (other - base)`` for every tensor (float32 arithmetic, ``base``'s dtype kept); the two
    must hold the same names and shapes, and the error names the first that differs."""
    _check_alpha(alpha)
    _check_same(base, other)
    return {k: torch.lerp(w.float(), other[k].float(), alpha).to(w.dtype) for k, w in base.items()}


def mean_state_dicts(sds: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The tensor-wise mean of several state dicts (a uniform "soup"; float32 arithmetic, the first one's dtypes)."""
    if not sds:
        raise ValueError("no models to average")
    for i, sd in enumerate(sds[1:], 2):
        _check_same(sds[0], sd, f"other model {i}")
    return {k: (sum(sd[k].float() for sd in sds) / len(sds)).to(w.dtype) for k, w in sds[0].items()}


def mix_folders(base: str | Path, other: str | Path | list, out: str | Path, alpha: float) -> dict:
    """Mix the LM folder ``base`` with ``other`` (one folder, or several averaged first) into the complete model
    folder ``out``."""
    from glm4voice.errors import ConfigError
    from glm4voice.lm.load import load_lm, require_tokenizer, write_model_folder

    others = [Path(o) for o in (other if isinstance(other, (list, tuple)) else [other])]
    base, out = Path(base), Path(out)
    if not others:
        raise ConfigError("mix-lm: give at least one --other model")
    require_tokenizer(others[0], "mix-lm")
    if out.resolve() in {p.resolve() for p in [base, *others]}:
        raise ConfigError("mix-lm: --out must not be one of the source folders")
    try:
        _check_alpha(alpha)  # before loading anything
    except ValueError as e:
        raise ConfigError(f"mix-lm: {e}") from e
    a = load_lm(base, dtype=torch.float32)
    ca = asdict(a.cfg)
    models = []
    for o in others:
        m = load_lm(o, dtype=torch.float32)
        cb = asdict(m.cfg)
        differ = sorted(k for k in ca if k != "torch_dtype" and ca[k] != cb.get(k))
        if differ:
            k = differ[0]
            raise ConfigError(f"mix-lm: the models differ in {k} ({ca[k]!r} in {base}, {cb.get(k)!r} in {o})")
        models.append(m)
    try:
        target = mean_state_dicts([m.state_dict() for m in models])
        mixed = mix_state_dicts(a.state_dict(), target, alpha)
    except ValueError as e:
        raise ConfigError(f"mix-lm: {e}") from e
    b = models[0]
    b.load_state_dict(mixed, strict=True)
    record = {"base": str(base), "other": [str(o) for o in others] if len(others) > 1 else str(others[0]),
              "alpha": alpha, "formula": "base + alpha * (mean(other) - base)"}
    write_model_folder(b, out, tokenizer_from=others[0], dtype=getattr(torch, b.cfg.torch_dtype),
                       record_name="mix.json", record=record)
    return record


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="LM folder at alpha 0 (e.g. the embedded lm/)")
    parser.add_argument("--other", required=True, nargs="+",
                        help="LM folder at alpha 1 (e.g. a fine-tune of --base); several are averaged first")
    parser.add_argument("--alpha", type=float, required=True, help="weight of --other, between 0 and 1")
    parser.add_argument("--out", required=True, help="output model folder (replaced if it exists)")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    mix_folders(args.base, args.other, args.out, args.alpha)
    other = args.other[0] if len(args.other) == 1 else f"mean({', '.join(args.other)})"
    log.info("wrote %s = %s + %.3g * (%s - %s)", args.out, args.base, args.alpha, other, args.base)
    return 0
