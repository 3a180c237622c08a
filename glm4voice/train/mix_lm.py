"""Mix two LMs of the same architecture weight by weight: ``base + alpha * (other - base)``.

Session 37 found that every continuation of the shipped LM (1,600 more steps, with or without new data) answered
more typed questions but said some of v17's own answers worse. When ``other`` is a fine-tune of ``base``, a
point between them (weight interpolation, "model soup"; Wortsman et al. 2022, "Robust fine-tuning of zero-shot
models", arXiv:2109.01903) often keeps part of what the fine-tune learned and more of what the base did well, at
no training cost. ``alpha`` = 0 gives ``base``, 1 gives ``other``.

    glm4voice train mix-lm --base glm4voice/assets/embedded/lm --other runs/lm_a4/export --alpha 0.5 \\
        --out runs/lm_mix50

Both folders may be plain or int8-stored (the embedded LM); they are read in float32 and must have the same
architecture (every config field but the stored dtype) and the same tensors. Writes a complete model folder in
``other``'s stored dtype with ``other``'s text tokenizer, and mix.json (the sources and alpha).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger("glm4voice.train.mix_lm")

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json")


def mix_state_dicts(base: dict[str, Tensor], other: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """``base + alpha * (other - base)`` for every tensor (float32 arithmetic, ``base``'s dtype kept); the two
    must hold the same names and shapes, and the error names the first that differs."""
    if not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
    only_base, only_other = sorted(set(base) - set(other)), sorted(set(other) - set(base))
    if only_base or only_other:
        key = (only_base or only_other)[0]
        raise ValueError(f"tensor {key} is only in the {'base' if only_base else 'other'} model")
    out = {}
    for key, w in base.items():
        v = other[key]
        if w.shape != v.shape:
            raise ValueError(f"tensor {key} has shape {tuple(w.shape)} in the base model, "
                             f"{tuple(v.shape)} in the other")
        out[key] = torch.lerp(w.float(), v.float(), alpha).to(w.dtype)
    return out


def mix_folders(base: str | Path, other: str | Path, out: str | Path, alpha: float) -> dict:
    """Mix the LM folders ``base`` and ``other`` into the complete model folder ``out``."""
    from glm4voice.errors import CheckpointError, ConfigError
    from glm4voice.lm.load import load_lm, save_pretrained

    base, other, out = Path(base), Path(other), Path(out)
    missing = [f for f in TOKENIZER_FILES if not (other / f).is_file()]
    if missing:
        raise CheckpointError(f"{other}: no {missing[0]} (mix-lm copies the other model's text tokenizer)")
    if out.resolve() in (base.resolve(), other.resolve()):
        raise ConfigError("mix-lm: --out must not be one of the source folders")
    a, b = load_lm(base, dtype=torch.float32), load_lm(other, dtype=torch.float32)
    ca, cb = asdict(a.cfg), asdict(b.cfg)
    differ = sorted(k for k in ca if k != "torch_dtype" and ca[k] != cb.get(k))
    if differ:
        k = differ[0]
        raise ConfigError(f"mix-lm: the models differ in {k} ({ca[k]!r} in {base}, {cb.get(k)!r} in {other})")
    try:
        mixed = mix_state_dicts(a.state_dict(), b.state_dict(), alpha)
    except ValueError as e:
        raise ConfigError(f"mix-lm: {e}") from e
    b.load_state_dict(mixed, strict=True)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in TOKENIZER_FILES:
        shutil.copy2(other / f, out / f)
    save_pretrained(b, out, dtype=getattr(torch, b.cfg.torch_dtype))
    record = {"base": str(base), "other": str(other), "alpha": alpha, "formula": "base + alpha * (other - base)"}
    (out / "mix.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="LM folder at alpha 0 (e.g. the embedded lm/)")
    parser.add_argument("--other", required=True, help="LM folder at alpha 1 (e.g. a fine-tune of --base)")
    parser.add_argument("--alpha", type=float, required=True, help="weight of --other, between 0 and 1")
    parser.add_argument("--out", required=True, help="output model folder (replaced if it exists)")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    mix_folders(args.base, args.other, args.out, args.alpha)
    log.info("wrote %s = %s + %.3g * (%s - %s)", args.out, args.base, args.alpha, args.other, args.base)
    return 0
