"""Evaluate a model: results JSON plus a Markdown report with plots (docs/eval.md).

    glm4voice eval SUITE [SUITE ...] [--model embedded|official|FOLDER] [--tokenizer/--lm/--decoder PATH_OR_ID]
                   [--data CORPUS_OR_FOLDER] [--out DIR] [--limit N] [--judge auto|whisper|pocketsphinx]

SUITE: tokenizer, lm, spoken_qa, tts, style, latency, quality, judge_score, or all (every suite but judge_score).
Without --data the built-in held-out set is used: held-out phrasings spoken by held-out voices, made once.

    glm4voice eval compare BASE_RESULTS OTHER_RESULTS [...] [--by FIELD] [--out REPORT.md]

compares the results folders of earlier runs item by item (glm4voice/eval/compare.py): better / worse answers and
an exact test of whether the difference is more than noise.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from glm4voice.cli import add_threads_arg


def register(parser: argparse.ArgumentParser) -> None:
    from glm4voice.eval.judge import JUDGES
    from glm4voice.eval.suites import SUITES

    parser.add_argument("suites", nargs="+", metavar="SUITE",
                        help=f"one or more of {', '.join(SUITES)}, all; or 'compare' followed by two or more "
                             "results folders of earlier runs (the first is the base)")
    g = parser.add_argument_group("system under test")
    g.add_argument("--model", default=None,
                   help="all three components: 'embedded' (default), 'official', or a folder with tokenizer/ lm/ "
                        "decoder/")
    for c in ("tokenizer", "lm", "decoder"):
        g.add_argument(f"--{c}", default=None, help=f"{c} folder, 'official' or a hub id (overrides --model)")
    g.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    add_threads_arg(g)
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    g.add_argument("--max-new-tokens", type=int, default=1000)
    g.add_argument("--free-start", action="store_true",
                   help="let answers start with a speech code (the default draws such a first id again among the "
                        "other ids; docs/lm.md); for comparing with results of before session 27")
    d = parser.add_argument_group("data")
    d.add_argument("--data", default=None,
                   help="a corpus folder (manifest.jsonl; its held-out split) or a folder of audio + metadata.jsonl/"
                        ".tsv (docs/eval.md); default: the built-in held-out set")
    d.add_argument("--split", default=None, help="corpus split to evaluate (default: heldout)")
    d.add_argument("--audio-is-output", action="store_true",
                   help="the folder's audio are outputs to score (answers of any system), not questions to ask")
    d.add_argument("--text-only", action="store_true",
                   help="spoken_qa: judge the text answers only (S->T), without decoding speech or running the "
                        "judge; several times faster, for comparing LMs")
    d.add_argument("--limit", type=int, default=None, help="at most N items per suite, spread over kinds")
    d.add_argument("--per-kind", type=int, default=None,
                   help="built-in set: items per kind, language and style (default 6)")
    d.add_argument("--latency-runs", type=int, default=5, help="measured questions of the latency suite")
    d.add_argument("--seed", type=int, default=0)
    parser.add_argument("--by", default=None, metavar="FIELD",
                        help="eval compare: also compare within each value of this item field (voice, kind, "
                             "language, ...)")
    j = parser.add_argument_group("judges")
    j.add_argument("--judge", default="auto", choices=JUDGES, help="independent ASR judge")
    j.add_argument("--cache-dir", default=None, help="judge weights and built-in set cache (~/.cache/glm4voice)")
    j.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint for judge_score, e.g. "
                                                     "http://127.0.0.1:8000/v1")
    j.add_argument("--judge-model", default=None, help="model name at --judge-url")
    j.add_argument("--judge-api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the endpoint's API key (if it needs one)")
    parser.add_argument("--out", default=None, help="output folder (default eval-results/<suites>-<time>)")


def check_data_options(args: argparse.Namespace) -> None:
    """Refuse options that the chosen data would silently ignore: ``--per-kind`` sizes only the built-in set (a
    corpus or folder is sized with ``--limit``), ``--split`` picks rows of a corpus only, and ``--text-only`` has no
    text answers to judge with ``--audio-is-output``."""
    from glm4voice.errors import ConfigError

    if args.per_kind is not None and args.per_kind < 1:
        raise ConfigError(f"--per-kind must be at least 1, got {args.per_kind}")
    if args.data is not None and args.per_kind is not None:
        raise ConfigError("--per-kind sizes the built-in held-out set only; with --data use --limit N")
    if args.data is None and args.split is not None:
        raise ConfigError("--split picks rows of a corpus given with --data; the built-in set is held out already")
    if args.text_only and args.audio_is_output:
        raise ConfigError("--text-only judges the text answers of our model; --audio-is-output scores audio files, "
                          "which have no text answers: use one or the other")


def check_suites(names: list[str]) -> None:
    from glm4voice.errors import ConfigError
    from glm4voice.eval.suites import SUITES

    unknown = [n for n in names if n not in SUITES and n != "all"]
    if unknown:
        raise ConfigError(f"unknown suite {unknown[0]!r}; choose from {', '.join(SUITES)}, all (or: eval compare "
                          "RESULTS RESULTS ...)")


def run_compare(args: argparse.Namespace) -> int:
    from glm4voice.eval.compare import compare

    md, js = compare(args.suites[1:], by=args.by)
    print(md)
    if args.out:
        import json

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(md + "\n", encoding="utf-8")
        out.with_suffix(".json").write_text(json.dumps(js, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def run(args: argparse.Namespace) -> int:
    import os

    if args.suites[0] == "compare":
        return run_compare(args)
    check_suites(args.suites)

    from glm4voice.eval.context import Context
    from glm4voice.eval.report import write_report
    from glm4voice.eval.suites import ALL, run_suites
    from glm4voice.eval.system import Generation, ModelSpec

    check_data_options(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if getattr(args, "thread_choice", None) is not None:
        logging.info("CPU threads: %s", args.thread_choice.reason)
    names = list(dict.fromkeys(n for s in args.suites for n in (ALL if s == "all" else (s,))))
    out = Path(args.out or f"eval-results/{'-'.join(args.suites)}-{time.strftime('%Y%m%d-%H%M%S')}")
    spec = ModelSpec.from_args(args.model, tokenizer=args.tokenizer, lm=args.lm, decoder=args.decoder)
    given = {k: v for k, v in (("per_kind", args.per_kind), ("split", args.split)) if v is not None}
    ctx = Context(spec=spec, data=args.data, out=out, device=args.device, dtype=args.dtype, limit=args.limit,
                  seed=args.seed, judge_name=args.judge, **given,  # the others: Context's defaults
                  cache_dir=Path(args.cache_dir) if args.cache_dir else None, audio_is_output=args.audio_is_output,
                  text_only=args.text_only,
                  generation=Generation(temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                        seed=args.seed, text_first=not args.free_start),
                  latency_runs=args.latency_runs, judge_url=args.judge_url, judge_model=args.judge_model,
                  judge_api_key=os.environ.get(args.judge_api_key_env) if args.judge_api_key_env else None)
    results = run_suites(names, ctx)
    judge = getattr(ctx.judge, "name", None)
    meta = {"command": "glm4voice eval " + " ".join(args.suites), "model": spec.describe(),
            "data": args.data or "built-in held-out set", "asr_judge": judge, "device": args.device,
            "dtype": args.dtype, "temperature": args.temperature, "seed": args.seed,
            "text_first": not args.free_start,
            "threads": getattr(getattr(args, "thread_choice", None), "reason", None)}
    js, md = write_report(results, out, meta=meta)
    for r in results:
        shown = {k: v for k, v in r.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        print(f"{r.suite:12s} {r.status:8s} " + ", ".join(f"{k}={v:.3g}" for k, v in shown.items()))
        for t in r.targets:
            v = r.metrics.get(t.metric)
            print(f"{'':12s} target {t.label}: {t.op} {t.value:g}, measured {'–' if v is None else f'{v:.3g}'} "
                  f"-> {'met' if t.met(v) else 'NOT met' if v is not None else 'not measured'}")
        for n in r.notes:
            print(f"{'':12s} note: {n}")
    print(f"wrote {js} and {md}")
    return 0
