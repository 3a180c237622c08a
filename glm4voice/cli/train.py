"""Train a component: glm4voice train COMPONENT [options] (see docs/training.md).

Each component is a module of ``glm4voice.train`` with ``add_args(parser)`` and ``main(args) -> int``. It is imported
only when chosen, so ``glm4voice <other command>`` never pays for the training stack, and its options are parsed by
its own parser (``glm4voice train lm --help``). Every trainer runs in one process or under
``torchrun --nproc-per-node N -m glm4voice train ...`` (the engine reads RANK / WORLD_SIZE).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# component -> (module, one-line description)
COMPONENTS = {
    "tokenizer": ("glm4voice.train.tokenizer_trainer", "speech tokenizer (WhisperVQ + VQ bottleneck, ASR objective)"),
    "tokenizer-asr": ("glm4voice.train.tokenizer_asr",
                      "refit a trained tokenizer's ASR branch on its frozen codes (word-piece CTC head)"),
    "tokenizer-adapt": ("glm4voice.train.tokenizer_adapt",
                        "adapt a tokenizer's encoder to new voices (codebook and ASR branch frozen)"),
    "lm": ("glm4voice.train.lm_trainer", "language model: pre-training mixture, SFT, fine-tuning (full or LoRA)"),
    "text2token": ("glm4voice.train.text2token", "text-to-token model (text -> speech tokens)"),
    "interleave": ("glm4voice.train.interleave", "interleaved speech-text documents from text (needs text2token)"),
    "decoder": ("glm4voice.train.decoder_trainer", "speech decoder (flow matching + HiFT vocoder)"),
    "remap-codes": ("glm4voice.train.remap_codes",
                    "carry an LM and a decoder over to a new tokenizer's codes (warm start from code co-occurrence)"),
    "grow-lm": ("glm4voice.train.grow_lm",
                "grow a trained LM (more layers, wider MLP) computing the same function: a warm start"),
    "mix-lm": ("glm4voice.train.mix_lm", "mix two LMs weight by weight, base + alpha * (other - base)"),
    "compare": ("glm4voice.train.compare", "compare runs' metrics at equal steps (table + plot), e.g. an A/B"),
}


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("component", choices=sorted(COMPONENTS), metavar="COMPONENT",
                        help="; ".join(f"{k}: {v[1]}" for k, v in COMPONENTS.items()))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the component's options (COMPONENT --help)")


def load_component(name: str):
    """The trainer module of ``name``; a clear message when this installation does not have it."""
    module_name = COMPONENTS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise SystemExit(f"glm4voice train: error: the {name} trainer ({module_name}) is not part of this "
                             "installation") from e
        raise SystemExit(f"glm4voice train: error: the {name} trainer needs the package {e.name!r}; "
                         "install the training extras: pip install 'glm4voice[train]'") from e
    missing = [f for f in ("add_args", "main") if not hasattr(module, f)]
    if missing:
        raise SystemExit(f"glm4voice train: error: {module_name} does not define {', '.join(missing)}")
    return module


def run(args: argparse.Namespace) -> int:
    module = load_component(args.component)
    parser = argparse.ArgumentParser(prog=f"glm4voice train {args.component}",
                                     description=COMPONENTS[args.component][1])
    module.add_args(parser)
    return int(module.main(parser.parse_args(args.options)) or 0)


if __name__ == "__main__":  # python -m glm4voice.cli.train lm ... (handy under torchrun)
    p = argparse.ArgumentParser(prog="glm4voice train")
    register(p)
    sys.exit(run(p.parse_args()))
