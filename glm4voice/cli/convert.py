"""Convert the official decoder checkpoint (flow.pt / hift.pt) to safetensors, once.

    glm4voice convert decoder SRC_FOLDER_OR_ID -o OUT_FOLDER

The .pt files are read with ``torch.load(weights_only=True)`` (never executing code); the output folder holds
``config.yaml`` (copied unchanged: it is data to us), ``flow.safetensors`` and ``hift.safetensors`` with the
official key names (weight_g / weight_v kept), so the same strict key table loads both formats.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("component", choices=["decoder"], help="which checkpoint to convert")
    parser.add_argument("source", help="checkpoint folder, 'official' or a hub id")
    parser.add_argument("-o", "--output", required=True, help="output folder (created)")


def convert_decoder(source, output) -> Path:
    """Write config.yaml + flow/hift .safetensors to ``output``; validates by loading the result strictly."""
    from safetensors.torch import save_file

    from glm4voice import checkpoints
    from glm4voice.decoder.load import COMPONENTS, checkpoint_file, load_modules, read_state_dict

    src = checkpoints.resolve(source, "decoder")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.yaml", out / "config.yaml")
    for name in COMPONENTS:
        sd = read_state_dict(checkpoint_file(src, name))
        save_file({k: v.contiguous() for k, v in sd.items()}, str(out / f"{name}.safetensors"),
                  metadata={"format": "pt", "source": f"{name}.pt"})
    load_modules(out, device="meta")  # strict key/shape check of what we wrote
    return out


def run(args: argparse.Namespace) -> int:
    out = convert_decoder(args.source, args.output)
    print(f"wrote {out}/config.yaml, flow.safetensors, hift.safetensors")
    return 0
