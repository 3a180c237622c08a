"""The evaluation suites. Each takes a ``Context`` and returns a ``SuiteResult`` (metrics, targets, rows, charts).

- tokenizer: audio -> codes. ASR error through the checkpoint's ASR branch (if it has one); reconstruction error:
  audio -> codes -> decoder -> judge, next to the judge's error on the input audio itself.
- lm: the question as text, text answer. QA accuracy (metrics.answer_correct).
- spoken_qa: the spoken question, speech + text answer. Accuracy S->T (answer text), S->S (judge transcript of the
  answer audio), intelligibility (judge error of the answer audio against the answer's own text).
- tts: a "repeat" item's request as text (user rows: "Repeat after me: X"). Judge error of the audio against X.
- style: "faster" / "slower" requests. Seconds of speech (VAD) per syllable (Chinese: per character).
- latency: ~3 s spoken questions. The pipeline's stage timings, time to first audio, real-time factor.
- quality: spoken questions. DNSMOS (speechmos) of the answer audio, when installed.
- judge_score: open questions. A 1-10 score by an OpenAI-compatible judge model (llm_judge.py), S->T and S->S.

With ``Context.audio_is_output`` the data's audio files are taken as the outputs to score (a folder of answers of
any system): tts/style/quality/spoken_qa then measure those files and ask nothing.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from glm4voice.constants import TOKENIZER_SAMPLE_RATE
from glm4voice.eval import metrics as M
from glm4voice.eval.context import Context
from glm4voice.eval.data import EvalSet
from glm4voice.eval.system import load_audio16k

log = logging.getLogger("glm4voice.eval")

# --- targets of issue 7 (held-out phrasings and voices) ----------------------------------------------------------
# The request for a user row's text (train/texts.py REPEAT_* training templates); the corpus's "repeat" items are asked
# with their own phrasing instead, which for held-out items is a template the model never saw with that text.
TTS_PROMPTS = {"en": "Repeat after me: {x}", "zh": "跟我说：{x}"}
ASR_BATCH = 16  # utterances per forward of the tokenizer's ASR branch
OPEN_KINDS = ("chat", "greeting", "definition", "user")  # questions without one exact answer (judge_score)
STYLE_MIN_RATIO = 1.2  # "faster" answers >= 20 % faster than "slower" ones
LATENCY_QUESTION_S = (2.0, 4.0)  # the latency suite prefers questions of about 3 s
LATENCY_WARMUP = 1  # unmeasured runs first (lazy initialisation, allocator warm-up)


@dataclass(frozen=True)
class Target:
    metric: str
    op: str  # "<=", ">=", "<", ">"
    value: float
    label: str

    def met(self, x: float | None) -> bool | None:
        if x is None:
            return None
        return {"<=": x <= self.value, ">=": x >= self.value, "<": x < self.value, ">": x > self.value}[self.op]


@dataclass
class SuiteResult:
    suite: str
    metrics: dict = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # one per item, for the report's examples and the JSON
    breakdown: dict = field(default_factory=dict)  # group name -> {group value -> {metric: value}}
    charts: list[dict] = field(default_factory=list)  # data for report.py's plots
    notes: list[str] = field(default_factory=list)  # what was skipped and why
    data: str = ""
    seconds: float = 0.0
    status: str = "ok"  # "ok" | "skipped"

    def to_json(self) -> dict:
        d = asdict(self)
        d["targets"] = [asdict(t) | {"actual": self.metrics.get(t.metric), "met": t.met(self.metrics.get(t.metric))}
                        for t in self.targets]
        return d


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(sum(xs) / len(xs)) if xs else None


def _accuracy_by(rows: list[dict], field_name: str, group: str) -> dict:
    out: dict = defaultdict(list)
    for r in rows:
        if r.get(field_name) is not None:
            out[r[group]].append(bool(r[field_name]))
    return {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(out.items())}


def _transcribe(ctx: Context, wav, sr: int, language: str) -> str:
    judge = ctx.get_judge()
    if language not in judge.languages:
        return ""
    return judge.transcribe(wav, sr, language).text


def _bar(title: str, groups: dict, key: str, ylabel: str, target: float | None = None) -> dict:
    return {"type": "bar", "title": title, "labels": list(groups), "values": [g[key] for g in groups.values()],
            "ylabel": ylabel, "target": target}


# --- tokenizer ---------------------------------------------------------------------------------------------------
def tokenizer_suite(ctx: Context) -> SuiteResult:
    from glm4voice.checkpoints import resolve
    from glm4voice.train import tokenizer_trainer as tt

    res = SuiteResult("tokenizer", targets=[Target("asr_error", "<=", 0.10, "tokenizer ASR error (WER/CER)")])
    items = ctx.eval_set().filter(with_audio=True).sample(ctx.limit, ctx.seed).items
    items = tuple(it for it in items if it.text)
    res.data = ctx.eval_set().name
    if not items:
        res.status = "skipped"
        res.notes.append("no items with audio and a transcript ('text')")
        return res
    wavs = [load_audio16k(it.audio) for it in items]
    rows = [{"id": it.id, "language": it.language, "voice": it.voice, "kind": it.kind, "ref": it.text}
            for it in items]

    folder = resolve(ctx.spec.tokenizer, "tokenizer")
    if (folder / tt.ASR_BRANCH_CONFIG).is_file():
        model = tt.load_for_asr(folder, device=ctx.device)
        for i in range(0, len(items), ASR_BATCH):
            for r, t in zip(rows[i:i + ASR_BATCH], _asr_transcribe(model, wavs[i:i + ASR_BATCH], ctx.device),
                            strict=True):
                r["asr"] = t
        _error_metrics(res, "asr_error", rows, "ref", "asr")
        for r in rows:
            r["asr_error"] = M.error_rate(r["ref"], r["asr"], r["language"])
    else:
        res.notes.append(f"ASR through the tokenizer: skipped, {folder} has no {tt.ASR_BRANCH_CONFIG} (only tokenizers "
                         f"trained by glm4voice carry their ASR decoder; the official release does not)")

    tok, dec = ctx.tokenizer(), ctx.decoder()
    t = time.perf_counter()
    codes = tok.encode(wavs, batched=False)
    encode_s = time.perf_counter() - t
    judged = [r for r, it in zip(rows, items, strict=True) if it.language in ctx.get_judge().languages]
    decode_s = out_s = 0.0
    for r, it, w, c in zip(rows, items, wavs, codes, strict=True):
        r["codes"] = len(c)
        if it.language not in ctx.get_judge().languages or not c:
            continue
        t = time.perf_counter()
        pcm = dec.decode(c)
        decode_s += time.perf_counter() - t
        out_s += pcm.numel() / dec.sample_rate
        r["judge_input"] = _transcribe(ctx, w, TOKENIZER_SAMPLE_RATE, it.language)
        r["judge_recon"] = _transcribe(ctx, pcm, dec.sample_rate, it.language)
        r["recon_error"] = M.error_rate(r["ref"], r["judge_recon"], it.language)
        r["input_error"] = M.error_rate(r["ref"], r["judge_input"], it.language)
    judged = [r for r in judged if "judge_recon" in r]
    if judged:
        _error_metrics(res, "recon_error", judged, "ref", "judge_recon")
        _error_metrics(res, "judge_error_on_input", judged, "ref", "judge_input")
    else:
        res.notes.append(f"reconstruction: no item in a language the judge {ctx.get_judge().name} understands")
    flat = np.concatenate([np.asarray(c) for c in codes if c]) if any(codes) else np.zeros(0, int)
    audio_s = sum(len(w) for w in wavs) / TOKENIZER_SAMPLE_RATE
    res.metrics.update(items=len(items), codes_used=int(len(np.unique(flat))), encode_rtf=encode_s / audio_s,
                       decode_rtf=decode_s / out_s if out_s else None)
    if flat.size:
        p = np.bincount(flat) / flat.size
        p = p[p > 0]
        res.metrics["code_perplexity"] = float(np.exp(-(p * np.log(p)).sum()))
    res.rows = rows
    for group in ("language", "voice"):
        g: dict = defaultdict(lambda: defaultdict(list))
        for r in rows:
            for m in ("asr_error", "recon_error", "input_error"):
                if m in r:
                    g[r[group]][m].append(r[m])
        res.breakdown[group] = {k: {m: _mean(v) for m, v in ms.items()} | {"n": len(next(iter(ms.values())))}
                                for k, ms in sorted(g.items())}
    by_voice = res.breakdown.get("voice", {})
    series = {m: [v.get(m) for v in by_voice.values()] for m in ("input_error", "recon_error", "asr_error")
              if any(m in v for v in by_voice.values())}
    if series:
        res.charts.append({"type": "bar", "title": "error by voice (mean per utterance; input_error: the judge "
                           "on the original audio)", "labels": list(by_voice), "series": series, "values": [],
                           "ylabel": "error rate", "target": 0.10})
    return res


def _asr_transcribe(model, wavs: list[np.ndarray], device: str) -> list[str]:
    """Transcripts through the tokenizer's ASR branch: ``load_for_asr(folder).transcribe(*featurize(int16 pcm))``
    (train/tokenizer_trainer.py: encoder -> VQ codes -> post-VQ layers -> ASR head, UTF-8 bytes)."""
    from glm4voice.train import tokenizer_trainer as tt

    feats, mask = tt.featurize([(np.clip(w, -1, 1) * 32767).astype(np.int16) for w in wavs])
    texts, _ = model.transcribe(feats.to(device), mask.to(device))
    return texts


# --- LM text QA --------------------------------------------------------------------------------------------------
def lm_suite(ctx: Context) -> SuiteResult:
    res = SuiteResult("lm", targets=[])
    eset = ctx.eval_set(speak=False).filter(with_answer=True)
    res.data = eset.name
    items = _as_text_questions(ctx, eset).sample(ctx.limit, ctx.seed).items
    for it in items:
        reply = ctx.ask(it, spoken=False, audio_out=False)
        res.rows.append({"id": it.id, "kind": it.kind, "language": it.language, "question": it.text,
                         "expected": it.answer, "key": it.key, "answer": reply.text,
                         "correct": M.answer_correct(reply.text, it.answer, it.language, it.key)})
    _finish_accuracy(res, "correct", "text QA accuracy by kind")
    return res


def _as_text_questions(ctx: Context, eset: EvalSet) -> EvalSet:
    """Items to ask as text: each question once (a corpus speaks it in several voices), and for held-out
    evaluation only held-out phrasings (a corpus row held out only by its voice is a training text)."""
    unique: dict = {}
    for it in eset.items:
        if ctx.split == "heldout" and it.text_split == "train":
            continue
        unique.setdefault((it.text, it.language), it)
    return EvalSet(eset.name, tuple(unique.values()))


def _finish_accuracy(res: SuiteResult, field_name: str, title: str, target: float | None = None) -> None:
    vals = [r[field_name] for r in res.rows if r.get(field_name) is not None]
    res.metrics["items"] = len(res.rows)
    name = "accuracy" if field_name == "correct" else f"accuracy_{field_name.removeprefix('correct_')}"
    res.metrics[name] = sum(vals) / len(vals) if vals else None
    by_lang = _accuracy_by(res.rows, field_name, "language")
    if len(by_lang) > 1:  # per language too: the judge is much weaker in Chinese (docs/eval.md)
        res.metrics.update({f"{name}_{lang}": g["accuracy"] for lang, g in by_lang.items()})
    by_kind = _accuracy_by(res.rows, field_name, "kind")
    res.breakdown[f"{name} by kind"] = by_kind
    if by_kind:
        res.charts.append(_bar(title, by_kind, "accuracy", "accuracy", target))


# --- spoken QA ---------------------------------------------------------------------------------------------------
def spoken_qa_suite(ctx: Context) -> SuiteResult:
    res = SuiteResult("spoken_qa", targets=[
        Target("accuracy_s2t", ">=", 0.90, "spoken QA accuracy, speech -> text"),
        Target("accuracy_s2s", ">=", 0.80, "spoken QA accuracy, speech -> speech (judge transcript)"),
        Target("intelligibility_error", "<=", 0.10, "judge WER of our answer audio vs our answer text")])
    eset = ctx.eval_set().filter(with_audio=True, with_answer=True)
    res.data = eset.name
    for it in eset.sample(ctx.limit, ctx.seed).items:
        row = {"id": it.id, "kind": it.kind, "language": it.language, "voice": it.voice, "question": it.text,
               "expected": it.answer, "key": it.key}
        if ctx.audio_is_output:  # the file is an answer (of any system): only S->S can be judged
            wav = load_audio16k(it.audio)
            row["transcript"] = _transcribe(ctx, wav, TOKENIZER_SAMPLE_RATE, it.language)
        else:
            reply = ctx.ask(it, spoken=True, audio_out=not ctx.text_only)
            row.update(answer=reply.text, audio_seconds=reply.audio_seconds, errors=reply.errors)
            row["correct_s2t"] = M.answer_correct(reply.text, it.answer, it.language, it.key)
            if ctx.text_only:
                res.rows.append(row)
                continue
            row["transcript"] = _transcribe(ctx, reply.pcm, reply.sample_rate, it.language) if reply.audio_seconds \
                else ""
            if reply.text and it.language in ctx.get_judge().languages:
                row["intelligibility_error"] = M.error_rate(reply.text, row["transcript"], it.language)
        if it.language in ctx.get_judge().languages:
            row["correct_s2s"] = M.answer_correct(row["transcript"], it.answer, it.language, it.key)
        res.rows.append(row)
    if not ctx.audio_is_output:
        _finish_accuracy(res, "correct_s2t", "spoken QA accuracy S->T by kind", 0.90)
        judged = [r for r in res.rows if "intelligibility_error" in r]
        if judged:
            _error_metrics(res, "intelligibility_error", judged, "answer", "transcript")
    if ctx.text_only and not ctx.audio_is_output:
        res.notes.append("--text-only: answers judged as text only (S->T); no speech decoded, no S->S")
        return res
    _finish_accuracy(res, "correct_s2s", "spoken QA accuracy S->S by kind", 0.80)
    failed = sum(1 for r in res.rows if r.get("errors"))
    if failed:
        res.notes.append(f"{failed} turn(s) reported errors (see the rows' 'errors' in results.json)")
    skipped = sum(1 for r in res.rows if "correct_s2s" not in r)
    if skipped:
        res.notes.append(f"S->S: {skipped} item(s) in a language the judge {ctx.get_judge().name} cannot transcribe")
    return res


def _error_metrics(res: SuiteResult, name: str, rows: list[dict], ref: str, hyp: str) -> None:
    """Corpus-level error over ``rows`` as ``name``, and per language as ``name_<lang>`` when there are several."""
    res.metrics[name] = M.corpus_error_rate([r[ref] for r in rows], [r[hyp] for r in rows],
                                            [r["language"] for r in rows])
    langs = sorted({r["language"] for r in rows})
    if len(langs) > 1:
        for lang in langs:
            part = [r for r in rows if r["language"] == lang]
            res.metrics[f"{name}_{lang}"] = M.corpus_error_rate([r[ref] for r in part], [r[hyp] for r in part],
                                                                [lang] * len(part))


# --- TTS ---------------------------------------------------------------------------------------------------------
def tts_suite(ctx: Context) -> SuiteResult:
    res = SuiteResult("tts", targets=[Target("tts_error", "<=", 0.10, "judge error of spoken text vs the text")])
    eset = ctx.eval_set(speak=ctx.audio_is_output)
    res.data = eset.name
    if ctx.audio_is_output:  # files that should say their "text"
        items = [(it, it.text) for it in eset.filter(with_audio=True).sample(ctx.limit, ctx.seed).items if it.text]
    else:  # what to say: a repeat item's answer (asked with its own, possibly held-out, phrasing), a user row's text
        items = [(it, it.answer if it.kind == "repeat" else it.text) for it in
                 _as_text_questions(ctx, eset.filter(kinds=("repeat", "user"))).sample(ctx.limit, ctx.seed).items]
    for it, target in items:
        row = {"id": it.id, "language": it.language, "text": target}
        if ctx.audio_is_output:
            wav, sr = load_audio16k(it.audio), TOKENIZER_SAMPLE_RATE
        else:
            request = it.text if it.kind == "repeat" else TTS_PROMPTS[it.language].format(x=target)
            reply = ctx.ask(it, spoken=False, audio_out=True, text=request)
            wav, sr = reply.pcm, reply.sample_rate
            row.update(answer=reply.text, audio_seconds=reply.audio_seconds)
        row["transcript"] = _transcribe(ctx, wav, sr, it.language) if wav is not None and len(wav) else ""
        row["error"] = M.error_rate(target, row["transcript"], it.language)
        res.rows.append(row)
    if res.rows:
        _error_metrics(res, "tts_error", res.rows, "text", "transcript")
        res.charts.append({"type": "scatter", "title": "judge error vs text length",
                           "x": [len(M.units(r["text"], r["language"])) for r in res.rows],
                           "y": [r["error"] for r in res.rows], "xlabel": "words (characters in Chinese)",
                           "ylabel": "error rate"})
    res.metrics["items"] = len(res.rows)
    return res


# --- style adherence ----------------------------------------------------------------------------------------------
def style_suite(ctx: Context) -> SuiteResult:
    """Speaking rate of answers asked "faster" vs "slower": VAD speech seconds per syllable (metrics.syllables)."""
    from glm4voice.eval.judge import speech_seconds

    res = SuiteResult("style", targets=[Target("slow_over_fast", ">=", STYLE_MIN_RATIO,
                                               "seconds per syllable, slow / fast answers")])
    eset = ctx.eval_set().filter(styles=("fast", "slow", "normal"), kinds=("style", "user"))
    if not ctx.audio_is_output:
        eset = eset.filter(styles=("fast", "slow"))
    res.data = eset.name
    for it in eset.sample(ctx.limit, ctx.seed).items:
        if ctx.audio_is_output:
            wav, sr, said = load_audio16k(it.audio), TOKENIZER_SAMPLE_RATE, it.answer or it.text
        else:
            reply = ctx.ask(it, spoken=bool(it.audio), audio_out=True)
            wav, sr, said = reply.pcm, reply.sample_rate, reply.text or it.answer
        n = M.syllables(said, it.language)
        if wav is None or not len(wav) or not n:
            continue
        sec = speech_seconds(wav, sr)
        res.rows.append({"id": it.id, "style": it.style, "language": it.language, "text": said, "syllables": n,
                         "speech_seconds": sec, "seconds_per_syllable": sec / n if sec > 0 else None})
    silent = sum(1 for r in res.rows if r["seconds_per_syllable"] is None)
    if silent:
        res.notes.append(f"{silent} answer(s) held no speech the VAD could find; left out of the rates")
    by: dict = defaultdict(list)
    for r in res.rows:
        if r["seconds_per_syllable"] is not None:
            by[(r["style"], r["language"])].append(r["seconds_per_syllable"])
    res.breakdown["seconds per syllable"] = {f"{s}/{lang}": {"mean": _mean(v), "n": len(v)}
                                         for (s, lang), v in sorted(by.items())}
    ratios = []
    for lang in sorted({lang for _, lang in by}):
        fast, slow = _mean(by.get(("fast", lang), [])), _mean(by.get(("slow", lang), []))
        if fast is not None and slow is not None:
            res.metrics[f"slow_over_fast_{lang}"] = slow / fast
            ratios.append((slow / fast, len(by[("fast", lang)]) + len(by[("slow", lang)])))
    if ratios:  # items-weighted over languages
        res.metrics["slow_over_fast"] = sum(r * n for r, n in ratios) / sum(n for _, n in ratios)
    else:
        res.notes.append("no language had both 'fast' and 'slow' answers to compare")
    res.metrics["items"] = len(res.rows)
    if res.rows:
        groups = sorted(by)
        res.charts.append({"type": "box", "title": "speech seconds per syllable",
                           "labels": [f"{s}/{lang}" for s, lang in groups], "values": [by[g] for g in groups],
                           "ylabel": "seconds per syllable"})
    return res


# --- latency and real-time factor ---------------------------------------------------------------------------------
def latency_suite(ctx: Context) -> SuiteResult:
    res = SuiteResult("latency", targets=[
        Target("time_to_first_audio_p50", "<=", 0.300, "time to first audio, ~3 s question, median (s)"),
        Target("rtf_p50", "<", 0.5, "whole-pipeline real-time factor, median")])
    eset = ctx.eval_set().filter(with_audio=True)
    res.data = eset.name
    if not eset.items:
        res.status = "skipped"
        res.notes.append("no spoken questions in the data")
        return res
    import soundfile as sf

    lo, hi = LATENCY_QUESTION_S
    durations = {it.id: sf.info(it.audio).duration for it in eset.items}
    pool = sorted(eset.items, key=lambda it: (not lo <= durations[it.id] <= hi, abs(durations[it.id] - 3.0), it.id))
    chosen = pool[:max(1, ctx.latency_runs)]
    if ctx.judge is not None:
        res.notes.append(f"measured with the ASR judge {ctx.judge.name} loaded in this process, which slows torch's "
                         "multi-threaded CPU ops once it has run (suites.TIMING_SUITES); run the latency suite alone "
                         "or first for user-facing numbers")
    responder = ctx.get_responder()
    for it in chosen[:LATENCY_WARMUP]:
        responder.reply(audio=load_audio16k(it.audio), audio_out=True)
    for it in chosen:
        reply = responder.reply(audio=load_audio16k(it.audio), audio_out=True)
        row = {"id": it.id, "question_seconds": durations[it.id], "answer_audio_seconds": reply.audio_seconds,
               "wall_first_audio": reply.wall_first_audio, "wall_total": reply.wall_total} | reply.timings
        row["rtf"] = reply.wall_total / reply.audio_seconds if reply.audio_seconds else None
        res.rows.append(row)
    stages = ("tokenize", "lm_prefill", "lm_first_audio_block", "speech_decode", "time_to_first_audio",
              "time_to_first_text", "total")
    for key in stages + ("wall_first_audio", "rtf"):
        vals = [r[key] for r in res.rows if r.get(key) is not None]
        if vals:
            res.metrics[f"{key}_p50"] = statistics.median(vals)
            res.metrics[f"{key}_max"] = max(vals)
    if "time_to_first_audio_p50" not in res.metrics and "wall_first_audio_p50" in res.metrics:
        res.metrics["time_to_first_audio_p50"] = res.metrics["wall_first_audio_p50"]
        res.notes.append("the pipeline sent no time_to_first_audio Timing: measured from outside instead")
    res.metrics["runs"] = len(res.rows)
    res.metrics["question_seconds_p50"] = statistics.median(r["question_seconds"] for r in res.rows)
    present = [s for s in stages[:5] if f"{s}_p50" in res.metrics]  # the four stages, then their sum as lived
    if present:
        res.charts.append({"type": "bar", "title": "stages before the first audio (median, s)", "labels": present,
                           "values": [res.metrics[f"{s}_p50"] for s in present], "ylabel": "seconds",
                           "target": 0.300})
    return res


# --- speech quality (DNSMOS) -------------------------------------------------------------------------------------
def quality_suite(ctx: Context) -> SuiteResult:
    res = SuiteResult("quality")
    try:
        from speechmos import dnsmos
    except ImportError as e:
        res.status = "skipped"
        res.notes.append(f"speech quality skipped: speechmos is not installed ({e}); install it with "
                         f"scripts/install_eval_deps.sh --mos")
        return res
    eset = ctx.eval_set().filter(with_audio=True)
    res.data = eset.name
    for it in eset.sample(ctx.limit, ctx.seed).items:
        if ctx.audio_is_output:
            wav, sr = load_audio16k(it.audio), TOKENIZER_SAMPLE_RATE
        else:
            reply = ctx.ask(it, spoken=True, audio_out=True)
            wav, sr = reply.pcm, reply.sample_rate
        if wav is None or not len(wav):
            continue
        row = {"id": it.id, "source": "output"} | _dnsmos(dnsmos, wav, sr)
        res.rows.append(row)
        if it.answer_audio and not ctx.audio_is_output:  # the corpus's recording of the answer, as a yardstick
            ref = load_audio16k(it.answer_audio)
            res.rows.append({"id": it.id, "source": "reference"} | _dnsmos(dnsmos, ref, TOKENIZER_SAMPLE_RATE))
    for source in ("output", "reference"):
        rows = [r for r in res.rows if r["source"] == source]
        for m in ("ovrl_mos", "sig_mos", "bak_mos", "p808_mos"):
            if rows:
                res.metrics[m if source == "output" else f"reference_{m}"] = _mean(r[m] for r in rows)
    res.metrics["items"] = sum(1 for r in res.rows if r["source"] == "output")
    if res.rows:
        res.charts.append({"type": "box", "title": "DNSMOS overall", "labels": ["output", "reference"],
                           "values": [[r["ovrl_mos"] for r in res.rows if r["source"] == s]
                                      for s in ("output", "reference")], "ylabel": "MOS (1-5)"})
    return res


def _dnsmos(dnsmos, wav, sr: int) -> dict:
    from glm4voice.eval.judge import to_judge_rate

    x = np.clip(to_judge_rate(wav, sr), -1.0, 1.0).astype(np.float64)
    out = dnsmos.run(x, TOKENIZER_SAMPLE_RATE)
    return {k: float(out[k]) for k in ("ovrl_mos", "sig_mos", "bak_mos", "p808_mos")}


# --- judge-model score ---------------------------------------------------------------------------------------------
def judge_score_suite(ctx: Context) -> SuiteResult:
    """The paper's "ChatGPT score": a judge model rates each answer 1-10 (text answer, and the judge transcript of
    the spoken answer). Needs an OpenAI-compatible endpoint (--judge-url, --judge-model); never run in CI."""
    from glm4voice.eval.llm_judge import ChatJudge

    judge = ChatJudge(ctx.judge_url, ctx.judge_model, api_key=ctx.judge_api_key)
    res = SuiteResult("judge_score")
    eset = ctx.eval_set().filter(with_audio=True, kinds=OPEN_KINDS)
    res.data = eset.name
    for it in eset.sample(ctx.limit, ctx.seed).items:
        row = {"id": it.id, "kind": it.kind, "language": it.language, "question": it.text, "reference": it.answer}
        if ctx.audio_is_output:
            row["transcript"] = _transcribe(ctx, load_audio16k(it.audio), TOKENIZER_SAMPLE_RATE, it.language)
        else:
            reply = ctx.ask(it, spoken=True, audio_out=True)
            row["answer"] = reply.text
            row["transcript"] = _transcribe(ctx, reply.pcm, reply.sample_rate, it.language) \
                if reply.audio_seconds else ""
            row["score_s2t"] = judge.score(it.text, reply.text, it.answer or None)
        row["score_s2s"] = judge.score(it.text, row["transcript"], it.answer or None)
        res.rows.append(row)
    for m in ("score_s2t", "score_s2s"):
        vals = [r[m] for r in res.rows if r.get(m) is not None]
        if vals:
            res.metrics[m] = _mean(vals)
    res.metrics["items"] = len(res.rows)
    res.metrics["judge_model"] = ctx.judge_model
    unparsed = sum(1 for r in res.rows for m in ("score_s2t", "score_s2s") if m in r and r[m] is None)
    if unparsed:
        res.notes.append(f"{unparsed} judge answer(s) held no score 1-10 and were left out")
    return res


SUITES: dict[str, Callable[[Context], SuiteResult]] = {
    "tokenizer": tokenizer_suite,
    "lm": lm_suite,
    "spoken_qa": spoken_qa_suite,
    "tts": tts_suite,
    "style": style_suite,
    "latency": latency_suite,
    "quality": quality_suite,
    "judge_score": judge_score_suite,
}
ALL = ("tokenizer", "lm", "spoken_qa", "tts", "style", "latency", "quality")  # judge_score only when asked


NEEDS_MODEL = ("tokenizer", "lm", "latency")  # suites that cannot score a folder of outputs alone


# Suites that time the system run before any suite that uses the ASR judge. Once the in-process Whisper judge
# (CTranslate2, with its own OpenMP runtime) has transcribed anything, torch's 2-thread CPU ops in the same process
# stay ~1.5x slower (measured here: a conv + matmul loop 1.6 -> 2.4 ms, not restored after 2 s idle; 1 thread is not
# affected), and the first block's speech decode went from 84 to 226 ms. Users of chat/serve never load the judge.
TIMING_SUITES = ("latency",)


def run_suites(names: list[str], ctx: Context) -> list[SuiteResult]:
    """Run ``names`` (timing suites first, see ``TIMING_SUITES``); results in the order they ran."""
    out = []
    for name in sorted(names, key=lambda n: n not in TIMING_SUITES):
        log.info("suite %s ...", name)
        t = time.perf_counter()
        if ctx.audio_is_output and name in NEEDS_MODEL:
            out.append(SuiteResult(name, status="skipped", notes=[
                f"{name} measures a model; with --audio-is-output only the given audio files are scored"]))
            continue
        res = SUITES[name](ctx)
        res.seconds = time.perf_counter() - t
        log.info("suite %s: %s (%.1f s)", name, {k: v for k, v in res.metrics.items() if not isinstance(v, str)},
                 res.seconds)
        out.append(res)
    return out

