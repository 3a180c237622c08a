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


def add_threads_arg(parser: argparse.ArgumentParser) -> None:
    """``--threads`` of the commands that run models (``main`` applies it once, before the command runs)."""
    from glm4voice.threads import parse_threads

    parser.add_argument("--threads", type=parse_threads, default="auto",
                        help="CPU threads for torch: a number, or 'auto' (default: measure; one thread when other "
                             "work keeps the cores busy, see glm4voice/threads.py); OMP_NUM_THREADS wins over auto")


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


def _apply_threads(args: argparse.Namespace):
    """Set torch's CPU threads for a command that has ``--threads``; returns the count to restore afterwards
    (``main`` may run in a process that goes on, e.g. a test), or None when nothing was changed."""
    setting = getattr(args, "threads", None)
    if setting is None or args.command == "train":  # the trainers' --threads is their own
        return None
    import torch

    from glm4voice.threads import ThreadChoice, choose_threads

    before = torch.get_num_threads()
    on_cpu = str(getattr(args, "device", "cpu")).startswith("cpu")
    args.thread_choice = (choose_threads(setting) if on_cpu or setting != "auto"  # no probe when the model is on a GPU
                          else ThreadChoice(before, f"{before} (torch default; --device {args.device})"))
    torch.set_num_threads(args.thread_choice.threads)
    return before


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    restore = None
    try:
        restore = _apply_threads(args)
        return int(args._run(args) or 0)
    except Glm4VoiceError as e:
        print(f"glm4voice {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if restore is not None:
            import torch

            torch.set_num_threads(restore)


if __name__ == "__main__":
    sys.exit(main())
