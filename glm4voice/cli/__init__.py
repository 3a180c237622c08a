"""The ``glm4voice`` command. Each subcommand lives in its own module with ``register`` and ``run``.

Modules are imported only when listed here and importable, so nothing heavy runs at start-up
beyond what the chosen command needs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from glm4voice.errors import Glm4VoiceError

# command name -> module; each module defines register(parser) and run(args) -> int
COMMANDS = {
    "encode": "glm4voice.cli.encode",
    "synthesize": "glm4voice.cli.synthesize",
    "generate": "glm4voice.cli.generate",
    "chat": "glm4voice.cli.chat",
    "serve": "glm4voice.cli.serve",
    "data": "glm4voice.cli.data",
    "train": "glm4voice.cli.train",
    "eval": "glm4voice.cli.eval",
    "convert": "glm4voice.cli.convert",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm4voice", description="GLM-4-Voice spoken chatbot")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                continue  # command not built yet in this installation
            raise
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None)
        module.register(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except Glm4VoiceError as e:
        print(f"glm4voice {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
