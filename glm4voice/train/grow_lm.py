"""Grow a trained LM (more layers, a wider MLP) without changing what it computes: a warm start for a larger model.

The embedded LM (6 layers and MLP 768 up to v19; v20's was grown to 8 and 1,024 with this module) is small, and
its held-out losses fell more slowly with every run of the same data (docs/model_history.md). A larger model trained
from scratch would need the many CPU sessions the small one took. Growing it keeps everything it learned: the grown
model's logits equal the original's (to float rounding), and training then uses the new capacity.

- ``--layers N`` (> the current number): each new layer is a copy of an existing one, inserted right after it
  (sources spread evenly over the depth), with its two residual-branch outputs (attention ``out``, MLP ``down``)
  set to zero, so the block adds nothing: ``x + 0 + 0``. Its other weights are a trained layer's, so gradients
  reach the zeroed outputs from the first step through meaningful features (a zero-initialised *new* layer would
  learn the same way, but from random features).
- ``--ffn F`` (> the current MLP width): every layer's MLP gains ``F - old`` units; their gate and up rows are
  drawn like the trainer's init (N(0, std) with std the existing rows' own), their ``down`` columns are zero.

The attention width and the hidden size are not grown: changing them changes what RMSNorm and the heads compute.

    glm4voice train grow-lm --lm runs/lm_w1e/export --layers 8 --ffn 1024 --out runs/lm_g1_init
    glm4voice train lm --init runs/lm_g1_init ...   # then train as usual

Writes a complete model folder (config.json with the new sizes, model.safetensors in the source's dtype, the text
tokenizer files) and grow.json (sizes before/after, where each new layer came from).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger("glm4voice.train.grow_lm")

ZEROED = ("attn.out.weight", "mlp.down.weight")  # a block's two residual-branch outputs


def layer_sources(old: int, new: int) -> list[int]:
    """For each new layer, the old layer it copies (non-decreasing, spread evenly over the depth)."""
    if old < 1 or new < old:
        raise ValueError(f"cannot grow {old} layers to {new}: give more layers than the model has")
    extra = new - old
    return [min(old - 1, int((j + 0.5) * old / extra)) for j in range(extra)]


def grow_depth(sd: dict[str, Tensor], old: int, layers: int) -> tuple[dict[str, Tensor], list]:
    """State dict ``sd`` of a ``GLM`` with ``old`` blocks -> one with ``layers`` blocks: new blocks are copies with
    zeroed residual outputs. Also returns, for each block, its old index or "copy of i"."""
    srcs = layer_sources(old, layers)
    per_block = [{k.split(".", 2)[2]: v for k, v in sd.items() if k.startswith(f"layers.{i}.")} for i in range(old)]
    out = {k: v for k, v in sd.items() if not k.startswith("layers.")}
    origin: list = []
    for i, block in enumerate(per_block):
        copies = [block] + [{k: (torch.zeros_like(v) if k in ZEROED else v.clone()) for k, v in block.items()}
                            for _ in range(srcs.count(i))]
        for j, b in enumerate(copies):
            out.update({f"layers.{len(origin)}.{k}": v for k, v in b.items()})
            origin.append(i if j == 0 else f"copy of {i}")
    return out, origin


def grow_ffn(sd: dict[str, Tensor], old: int, ffn: int, generator: torch.Generator) -> dict[str, Tensor]:
    """State dict with every MLP ``ffn`` units wide: new gate/up rows N(0, std of the layer's existing rows),
    zero ``down`` columns."""
    if ffn < old:
        raise ValueError(f"cannot shrink the MLP from {old} to {ffn} units")
    add = ffn - old
    out = dict(sd)
    for key, up in sd.items():
        if not key.endswith(".mlp.up.weight"):
            continue
        down = sd[key.replace(".up.", ".down.")]  # (2F, H) = [gate | up]; (H, F)

        def rows(w: Tensor) -> Tensor:
            return (torch.randn(add, w.shape[1], generator=generator) * float(w.float().std())).to(w.dtype)

        gate_w, up_w = up[:old], up[old:]
        out[key] = torch.cat([gate_w, rows(gate_w), up_w, rows(up_w)], dim=0)
        out[key.replace(".up.", ".down.")] = torch.cat([down, down.new_zeros(down.shape[0], add)], dim=1)
    return out


def grow(model, *, layers: int | None = None, ffn: int | None = None, seed: int = 0):
    """A new ``GLM`` computing the same function as ``model`` with ``layers`` blocks and MLPs ``ffn`` wide, and a
    record of what was done."""
    from glm4voice.lm.load import build_meta

    cfg = model.cfg
    layers = cfg.num_layers if layers is None else layers
    ffn = cfg.ffn_hidden_size if ffn is None else ffn
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd = grow_ffn(sd, cfg.ffn_hidden_size, ffn, torch.Generator().manual_seed(seed))
    sd, origin = (sd, list(range(cfg.num_layers))) if layers == cfg.num_layers else \
        grow_depth(sd, cfg.num_layers, layers)
    grown = build_meta(replace(cfg, num_layers=layers, ffn_hidden_size=ffn))
    grown.load_state_dict(sd, strict=True, assign=True)
    size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    record = {"before": {"num_layers": cfg.num_layers, "ffn_hidden_size": cfg.ffn_hidden_size,
                         "parameters": size(model)},
              "after": {"num_layers": layers, "ffn_hidden_size": ffn, "parameters": size(grown)},
              "layers": origin, "seed": seed}
    return grown.eval(), record


def grow_folder(src: str | Path, out: str | Path, *, layers: int | None = None, ffn: int | None = None,
                seed: int = 0) -> dict:
    """Grow the LM folder ``src`` (plain or int8-stored) into the complete model folder ``out``."""
    from glm4voice.errors import ConfigError
    from glm4voice.lm.load import load_lm, require_tokenizer, write_model_folder

    src, out = Path(src), Path(out)
    if layers is None and ffn is None:
        raise ConfigError("grow-lm: give --layers and/or --ffn")
    require_tokenizer(src, "grow-lm")
    if out.resolve() == src.resolve():
        raise ConfigError("grow-lm: --out must not be the source folder")
    model = load_lm(src, dtype=torch.float32)
    stored = model.cfg.torch_dtype
    try:
        model, record = grow(model, layers=layers, ffn=ffn, seed=seed)
    except ValueError as e:
        raise ConfigError(f"grow-lm: {e}") from e
    record["source"] = str(src)
    write_model_folder(model, out, tokenizer_from=src, dtype=getattr(torch, stored), record_name="grow.json",
                       record=record)
    return record


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lm", required=True, help="LM folder to grow (a trainer export or the embedded lm/)")
    parser.add_argument("--out", required=True, help="output model folder (replaced if it exists)")
    parser.add_argument("--layers", type=int, default=None, help="number of layers after growing (>= now)")
    parser.add_argument("--ffn", type=int, default=None, help="MLP width after growing (>= now)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new MLP units' gate/up rows")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    record = grow_folder(args.lm, args.out, layers=args.layers, ffn=args.ffn, seed=args.seed)
    b, a = record["before"], record["after"]
    log.info("grew %s: %d -> %d layers, MLP %d -> %d, %.2fM -> %.2fM parameters; wrote %s", args.lm,
             b["num_layers"], a["num_layers"], b["ffn_hidden_size"], a["ffn_hidden_size"], b["parameters"] / 1e6,
             a["parameters"] / 1e6, args.out)
    return 0
