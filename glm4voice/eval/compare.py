"""Paired comparison of evaluation results: ``glm4voice eval compare BASE OTHER [OTHER ...]``.

Two models evaluated on the same items (the same built-in set, ``--data`` corpus, ``--limit`` and ``--seed``) differ
by a few answers out of tens, and a difference of a few answers is usually noise. This reads the ``results.json``
of each ``glm4voice eval`` run and compares every other run with the first *item by item*:

- right/wrong measures (``lm``: ``correct``; ``spoken_qa``: ``correct_s2t``, ``correct_s2s``): how many items each
  gets right, how many the other gets right where the base is wrong ("better") and the reverse ("worse"), and the
  exact two-sided McNemar p-value (a binomial test on better vs worse; the items both get right or both get wrong
  say nothing about the difference);
- error rates of speech (``spoken_qa``: ``intelligibility_error``, the judge's transcript of the answer audio vs the
  answer text; ``tts``: ``error``; ``tokenizer``: ``asr_error``, ``recon_error``): the corpus error per language
  (WER for English, CER for Chinese) of both on the shared items, items with lower / higher error, and the exact
  two-sided sign test on them. Intelligibility is measured against each model's *own* answer, so two LMs that say
  different things are judged on different sentences (a long code answer is harder to hear than "You are
  welcome."): the row ``same answer`` repeats the comparison on the items where both said the same text, which
  compares the speech alone.

Items are matched by id; items only one run has are left out and counted. An argument may name several results
folders joined by commas (``a/corpus200,a/sqa4``): their rows are pooled (ids prefixed by the position in the
list), so two evaluation sets can be judged together; both sides must then list their sets in the same order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from math import comb
from pathlib import Path

from glm4voice.errors import ConfigError

# suite -> right/wrong columns of its rows
BINARY = {"lm": ("correct",), "spoken_qa": ("correct_s2t", "correct_s2s")}
# suite -> (error column, reference text column, hypothesis column): the error is recomputed per language from the
# texts (words of English, characters of Chinese: a corpus rate, not a mean of per-item rates)
ERRORS = {"spoken_qa": (("intelligibility_error", "answer", "transcript"),),
          "tts": (("error", "text", "transcript"),),
          "tokenizer": (("asr_error", "ref", "asr"), ("recon_error", "ref", "judge_recon"))}


def load_results(path: str | Path) -> dict:
    """``results.json`` of a ``glm4voice eval`` run (its folder or the file itself); refused by name if missing."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise ConfigError(f"{path}: no results.json (give the --out folder of a `glm4voice eval` run)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: not a readable results file ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("suites"), dict):
        raise ConfigError(f"{p}: no 'suites' object; not a `glm4voice eval` results file")
    return data


def load_pooled(arg: str) -> dict:
    """One results folder, or several joined by commas with their rows pooled per suite (ids ``<k>:<id>``)."""
    parts = [p for p in arg.split(",") if p]
    if len(parts) == 1:
        return load_results(parts[0])
    pooled: dict = {"meta": {"model": [], "pooled": parts}, "suites": {}}
    for k, part in enumerate(parts):
        res = load_results(part)
        pooled["meta"]["model"].append(_model(res))
        for suite, body in res["suites"].items():
            rows = [dict(r, id=f"{k}:{r['id']}") for r in body.get("rows") or [] if isinstance(r, dict) and "id" in r]
            pooled["suites"].setdefault(suite, {"rows": []})["rows"].extend(rows)
    pooled["meta"]["model"] = "; ".join(dict.fromkeys(pooled["meta"]["model"]))
    return pooled


def two_sided_binomial_p(a: int, b: int) -> float:
    """Exact two-sided p-value of ``a`` vs ``b`` successes under p = 1/2 (sign test; McNemar on discordant pairs)."""
    n = a + b
    if n == 0:
        return 1.0
    k = min(a, b)
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


@dataclass
class Row:
    suite: str
    measure: str
    items: int
    base: str  # shown values (counts or rates)
    other: str
    better: int  # items where the other run is better
    worse: int
    p: float
    left_out: int = 0  # items only one of the two runs has
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"suite": self.suite, "measure": self.measure, "items": self.items, "base": self.base,
                "other": self.other, "better": self.better, "worse": self.worse, "p": self.p,
                "left_out": self.left_out} | self.extra


def _rows_by_id(results: dict, suite: str) -> dict[str, dict]:
    rows = results["suites"].get(suite, {}).get("rows") or []
    return {r["id"]: r for r in rows if isinstance(r, dict) and "id" in r}


def _error_text(refs, hyps, langs) -> str:
    from glm4voice.eval import metrics as M

    parts = []
    for lang in sorted(set(langs)):
        idx = [i for i, g in enumerate(langs) if g == lang]
        rate = M.corpus_error_rate([refs[i] for i in idx], [hyps[i] for i in idx], [lang] * len(idx))
        parts.append(f"{lang} {rate:.3f}")
    return ", ".join(parts) or "–"


def _binary_row(suite: str, col: str, a: dict, b: dict, ids: list[str], **kw) -> Row:
    """Right/wrong counts of ``col`` on ``ids`` (rows by id of the base ``a`` and the other ``b``)."""
    better = sum(b[i][col] and not a[i][col] for i in ids)
    worse = sum(a[i][col] and not b[i][col] for i in ids)
    return Row(suite, col, len(ids), str(sum(a[i][col] for i in ids)), str(sum(b[i][col] for i in ids)), better, worse,
               two_sided_binomial_p(better, worse), **kw)


def compare_pair(base: dict, other: dict) -> list[Row]:
    """Every paired measure the two results share, in suite order."""
    out: list[Row] = []
    for suite in base["suites"]:
        if suite not in other["suites"]:
            continue
        a, b = _rows_by_id(base, suite), _rows_by_id(other, suite)
        shared = [i for i in a if i in b]
        left_out = len(set(a) ^ set(b))
        for col in BINARY.get(suite, ()):
            ids = [i for i in shared if isinstance(a[i].get(col), bool) and isinstance(b[i].get(col), bool)]
            if not ids:
                continue
            out.append(_binary_row(suite, col, a, b, ids, left_out=left_out))
        for col, ref, hyp in ERRORS.get(suite, ()):
            ids = [i for i in shared if all(isinstance(r.get(k), str) for r in (a[i], b[i]) for k in (ref, hyp))
                   and col in a[i] and col in b[i]]
            subsets = [(col, ids)]
            if any(a[i][ref] != b[i][ref] for i in ids):  # each judged against its own text: also the same texts
                subsets.append((f"{col} (same {ref})", [i for i in ids if a[i][ref] == b[i][ref]]))
            for name, sub in subsets:
                if not sub:
                    continue
                langs = [a[i].get("language", "") for i in sub]
                better = sum(b[i][col] < a[i][col] for i in sub)
                worse = sum(b[i][col] > a[i][col] for i in sub)
                out.append(Row(suite, name, len(sub),
                               _error_text([a[i][ref] for i in sub], [a[i][hyp] for i in sub], langs),
                               _error_text([b[i][ref] for i in sub], [b[i][hyp] for i in sub], langs),
                               better, worse, two_sided_binomial_p(better, worse), left_out))
    return out


def compare_groups(base: dict, other: dict, by: str) -> list[Row]:
    """The right/wrong measures again within each value of the rows' field ``by`` (e.g. ``voice``, ``kind``,
    ``language``; the base's value), one Row per (suite, measure, value) with the value in ``extra["group"]``."""
    out: list[Row] = []
    for suite in base["suites"]:
        if suite not in other["suites"]:
            continue
        a, b = _rows_by_id(base, suite), _rows_by_id(other, suite)
        for col in BINARY.get(suite, ()):
            ids = [i for i in a if i in b and isinstance(a[i].get(col), bool) and isinstance(b[i].get(col), bool)]
            groups: dict[str, list[str]] = {}
            for i in ids:
                groups.setdefault(str(a[i].get(by, "–")), []).append(i)
            out += [_binary_row(suite, col, a, b, groups[g], extra={"group": g}) for g in sorted(groups)]
    return out


def _model(results: dict) -> str:
    m = results.get("meta", {}).get("model", "?")
    return ", ".join(f"{k} {v}" for k, v in m.items()) if isinstance(m, dict) else str(m)


def compare(paths: list[str], by: str | None = None) -> tuple[str, dict]:
    """Markdown report and JSON of every run after the first compared with the first; ``by``: also per value of
    that row field (``compare_groups``)."""
    if len(paths) < 2:
        raise ConfigError("eval compare needs at least two results folders: BASE OTHER [OTHER ...]")
    results = [load_pooled(p) for p in paths]
    lines = ["# Paired comparison of evaluation results", "",
             f"Base: `{paths[0]}` ({_model(results[0])}).", "",
             "better / worse: items where the other run is right and the base wrong (or has the lower error) / the "
             "reverse; p: exact two-sided test on those two counts (a difference with p above ~0.05 is within "
             "noise).", ""]
    js: dict = {"base": paths[0], "others": []}
    for path, res in zip(paths[1:], results[1:], strict=True):
        rows = compare_pair(results[0], res)
        js["others"].append({"path": path, "rows": [r.as_dict() for r in rows]})
        lines += [f"## `{path}` ({_model(res)})", ""]
        if not rows:
            lines += ["No paired measure: the two runs share no suite with per-item rows.", ""]
            continue
        lines += ["| suite | measure | items | base | other | better | worse | p |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r.suite} | {r.measure} | {r.items} | {r.base} | {r.other} | {r.better} | {r.worse} | "
                  f"{r.p:.3f} |" for r in rows]
        left = max(r.left_out for r in rows)
        if left:
            lines.append(f"\n{left} items were in only one of the two runs and are left out (different data, "
                         "--limit, --per-kind or --seed?).")
        lines.append("")
        if by:
            groups = compare_groups(results[0], res, by)
            js["others"][-1]["groups"] = {"by": by, "rows": [r.as_dict() for r in groups]}
            lines += [f"By {by}:", "", f"| suite | measure | {by} | items | base | other | better | worse | p |",
                      "|---|---|---|---|---|---|---|---|---|"]
            lines += [f"| {r.suite} | {r.measure} | {r.extra['group']} | {r.items} | {r.base} | {r.other} | "
                      f"{r.better} | {r.worse} | {r.p:.3f} |" for r in groups]
            lines.append("")
    return "\n".join(lines), js
