"""The suites end to end on real synthetic speech (espeak-ng), judged by the real ASR judge.

The system under test is either a tiny random tokenizer + decoder (tokenizer suite, through the production loaders
and the CLI) or a scripted responder that speaks known answers with espeak-ng through the pipeline's event types:
a right one, a wrong one and one that ignores speaking-style requests, so each suite must tell them apart.
"""

import json
import shutil
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf

from glm4voice.eval.context import Context
from glm4voice.eval.suites import SUITES, TTS_PROMPTS
from glm4voice.eval.system import collect
from glm4voice.pipeline.events import AudioChunk, TextDelta, Timing, TurnEnd

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
faster_whisper = pytest.importorskip("faster_whisper", reason="run scripts/install_eval_deps.sh")

ROWS = [
    {"id": "arith", "text": "What is three plus four?", "answer": "3 plus 4 is 7.", "key": "7", "kind": "arithmetic"},
    {"id": "capital", "text": "What is the capital of France?", "answer": "The capital of France is Paris.",
     "key": "Paris", "kind": "capital"},
    {"id": "fast", "text": "Say this faster: The cat sat on the mat near the door.", "kind": "style", "style": "fast",
     "answer": "The cat sat on the mat near the door."},
    {"id": "slow", "text": "Say this slowly: The dog ran across the green field.", "kind": "style", "style": "slow",
     "answer": "The dog ran across the green field."},
    {"id": "repeat", "text": "Repeat after me: Good morning to everyone in the room.", "kind": "repeat",
     "answer": "Good morning to everyone in the room."},
]
WRONG = {"arith": "3 plus 4 is 8.", "capital": "The capital of France is Lyon."}
WPM = {"fast": 280, "slow": 100, "normal": 170}  # espeak-ng words per minute


def espeak(text: str, wpm: int = 170, *, rate: int = 16000) -> np.ndarray:
    out = subprocess.run(["espeak-ng", "-s", str(wpm), "--stdout", text], check=True, capture_output=True).stdout
    import io

    wav, sr = sf.read(io.BytesIO(out), dtype="float32")
    if sr != rate:
        import soxr

        wav = soxr.resample(wav, sr, rate)
    return wav.astype(np.float32)


@pytest.fixture(scope="module")
def qa_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa")
    for r in ROWS:
        sf.write(folder / f"{r['id']}.wav", espeak(r["text"]), 16000)
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r | {"audio": f"{r['id']}.wav"}) for r in ROWS))
    return folder


@pytest.fixture(scope="module")
def judge():
    from glm4voice.eval.judge import load_judge

    return load_judge("whisper")


class ScriptedResponder:
    """Answers from the script, spoken by espeak-ng at 22.05 kHz, delivered as pipeline events in two chunks."""

    def __init__(self, *, wrong: bool = False, ignore_style: bool = False, mumble: bool = False):
        self.wrong, self.ignore_style, self.mumble, self.calls = wrong, ignore_style, mumble, []
        self.by_audio = {}
        self.by_text = {r["text"]: r for r in ROWS}

    def learn(self, folder):
        from glm4voice.eval.system import load_audio16k

        for r in ROWS:
            self.by_audio[load_audio16k(folder / f"{r['id']}.wav").tobytes()] = r

    def events(self, answer: str, style: str, audio_out: bool):
        yield Timing("tokenize", 0.01)
        yield Timing("lm_prefill", 0.02)
        half = len(answer) // 2
        yield TextDelta(answer[:half])
        if audio_out:
            said = "Nothing to see here, move along please." if self.mumble else answer  # audio unlike the text
            pcm = espeak(said, WPM["normal" if self.ignore_style else style], rate=22050)
            yield Timing("lm_first_audio_block", 0.03)
            yield Timing("speech_decode", 0.04)
            yield Timing("time_to_first_audio", 0.1)
            yield AudioChunk(pcm[:4000], 22050)
            yield AudioChunk(pcm[4000:], 22050)
        yield TextDelta(answer[half:])
        yield TurnEnd("stop_token", answer)

    def reply(self, *, audio=None, text=None, audio_out=True, instruction=""):
        self.calls.append((audio is not None, text, audio_out))
        if audio is not None:
            row = self.by_audio[np.asarray(audio, dtype=np.float32).tobytes()]
        elif text in self.by_text:
            row = self.by_text[text]
        else:  # a TTS request: "Repeat after me: X"
            prefix = TTS_PROMPTS["en"].split("{x}")[0]
            assert text.startswith(prefix), text
            row = {"id": "tts", "answer": text[len(prefix):], "style": "normal"}
        answer = WRONG.get(row["id"], row["answer"]) if self.wrong else row["answer"]
        return collect(self.events(answer, row.get("style", "normal"), audio_out), time.perf_counter())


def make_ctx(qa_folder, judge, tmp_path, **kw):
    responder = kw.pop("responder", None) or ScriptedResponder()
    responder.learn(qa_folder)
    return Context(data=str(qa_folder), out=tmp_path, judge=judge, responder=responder, cache_dir=tmp_path, **kw)


def test_collect_gathers_events():
    r = collect(ScriptedResponder().events("3 plus 4 is 7.", "fast", True))
    assert r.text == "3 plus 4 is 7." and r.sample_rate == 22050 and r.end_reason == "stop_token"
    assert r.timings["time_to_first_audio"] == 0.1 and r.wall_first_audio is not None
    assert r.wall_first_text <= r.wall_first_audio <= r.wall_total
    assert r.audio_seconds == pytest.approx(len(espeak("3 plus 4 is 7.", 280, rate=22050)) / 22050)


def test_spoken_qa_tells_right_from_wrong_answers(qa_folder, judge, tmp_path):
    good = SUITES["spoken_qa"](make_ctx(qa_folder, judge, tmp_path))  # ~10 s: 5 answers judged
    assert good.metrics["items"] == 5
    assert good.metrics["accuracy_s2t"] == 1.0
    assert good.metrics["accuracy_s2s"] >= 0.8
    assert good.metrics["intelligibility_error"] <= 0.35  # espeak at 280 words/min is hard for Whisper-base
    targets = {t.metric: t.met(good.metrics[t.metric]) for t in good.targets}
    assert targets["accuracy_s2t"] is True


@pytest.mark.slow  # ~30 s on a busy 2-core machine
def test_spoken_qa_wrong_and_mumbled_answers(qa_folder, judge, tmp_path):
    bad = SUITES["spoken_qa"](make_ctx(qa_folder, judge, tmp_path, responder=ScriptedResponder(wrong=True)))
    rows = {r["id"]: r for r in bad.rows}
    for rid in WRONG:
        assert not rows[rid]["correct_s2t"] and not rows[rid]["correct_s2s"], rows[rid]
    assert bad.metrics["accuracy_s2t"] == pytest.approx(3 / 5)
    mumbled = SUITES["spoken_qa"](make_ctx(qa_folder, judge, tmp_path, responder=ScriptedResponder(mumble=True)))
    assert mumbled.metrics["accuracy_s2t"] == 1.0 and mumbled.metrics["accuracy_s2s"] == 0.0
    assert mumbled.metrics["intelligibility_error"] >= 0.8


def test_spoken_qa_wrong_text_answers_fail_s2t(qa_folder, judge, tmp_path):
    ctx = make_ctx(qa_folder, judge, tmp_path, responder=ScriptedResponder(wrong=True), limit=2)
    ctx.dataset = ctx.eval_set().filter(kinds=("arithmetic", "capital"))
    bad = SUITES["spoken_qa"](ctx)
    assert bad.metrics["items"] == 2 and bad.metrics["accuracy_s2t"] == 0.0 and bad.metrics["accuracy_s2s"] == 0.0


def test_spoken_qa_text_only_asks_for_no_audio_and_skips_the_judge(qa_folder, tmp_path):
    class NoJudge:  # any use of the judge fails the test
        name, languages = "none", ("en",)

        def transcribe(self, *a, **k):
            raise AssertionError("--text-only must not run the judge")

    responder = ScriptedResponder(wrong=True)
    res = SUITES["spoken_qa"](make_ctx(qa_folder, NoJudge(), tmp_path, responder=responder, text_only=True))
    assert responder.calls and all(audio_out is False for _, _, audio_out in responder.calls)
    assert res.metrics["items"] == 5 and res.metrics["accuracy_s2t"] == pytest.approx(3 / 5)
    assert not any(k.startswith(("accuracy_s2s", "intelligibility")) for k in res.metrics)
    assert any("--text-only" in n for n in res.notes)


def test_style_suite_measures_speaking_rate(qa_folder, judge, tmp_path):
    styled = SUITES["style"](make_ctx(qa_folder, judge, tmp_path))
    assert {r["style"] for r in styled.rows} == {"fast", "slow"}
    assert styled.metrics["slow_over_fast"] > 1.8  # 280 vs 100 words per minute
    flat = SUITES["style"](make_ctx(qa_folder, judge, tmp_path, responder=ScriptedResponder(ignore_style=True)))
    assert 0.7 < flat.metrics["slow_over_fast"] < 1.2
    assert not flat.targets[0].met(flat.metrics["slow_over_fast"])


class SilentResponder(ScriptedResponder):
    def events(self, answer, style, audio_out):
        for ev in super().events(answer, style, audio_out):
            yield AudioChunk(np.zeros_like(ev.pcm), ev.sample_rate) if isinstance(ev, AudioChunk) else ev


def test_style_suite_reports_answers_without_speech(qa_folder, judge, tmp_path):
    res = SUITES["style"](make_ctx(qa_folder, judge, tmp_path, responder=SilentResponder()))
    assert "slow_over_fast" not in res.metrics and res.metrics["items"] == 2
    assert "2 answer(s) held no speech" in res.notes[0]


def test_tts_lm_and_latency_suites(qa_folder, judge, tmp_path):
    ctx = make_ctx(qa_folder, judge, tmp_path, latency_runs=2)
    tts = SUITES["tts"](ctx)
    assert tts.metrics["items"] == 1 and tts.rows[0]["text"] == ROWS[4]["answer"]
    assert tts.metrics["tts_error"] <= 0.2
    assert ("Repeat after me: " + ROWS[4]["answer"]) in [c[1] for c in ctx.responder.calls]
    lm = SUITES["lm"](ctx)
    assert lm.metrics["accuracy"] == 1.0 and all(not c[0] for c in ctx.responder.calls if c[2] is False)
    assert SUITES["lm"](make_ctx(qa_folder, judge, tmp_path, responder=ScriptedResponder(wrong=True))
                        ).metrics["accuracy"] == pytest.approx(3 / 5)
    lat = SUITES["latency"](ctx)
    assert lat.metrics["runs"] == 2 and lat.metrics["time_to_first_audio_p50"] == 0.1
    assert 2.0 <= lat.metrics["question_seconds_p50"] <= 4.0  # the ~3 s questions are preferred
    assert lat.metrics["rtf_p50"] > 0 and lat.metrics["lm_prefill_p50"] == 0.02


def test_audio_is_output_scores_files_without_asking(qa_folder, judge, tmp_path):
    ctx = make_ctx(qa_folder, judge, tmp_path, audio_is_output=True, limit=3)
    ctx.responder = None  # nothing may be asked
    tts = SUITES["tts"](ctx)  # the files say their "text"
    assert tts.metrics["items"] == 3 and tts.metrics["tts_error"] <= 0.2


def test_judge_score_suite_against_fake_endpoint(qa_folder, judge, tmp_path):
    import threading
    from dataclasses import replace
    from http.server import HTTPServer

    from glm4voice.eval.data import EvalSet
    from tests.test_eval_metrics import _FakeJudge  # the same fake server

    server = HTTPServer(("127.0.0.1", 0), _FakeJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ctx = make_ctx(qa_folder, judge, tmp_path, judge_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
                       judge_model="fake")
        # our folder's kinds are not open questions: mark the capital one as open ("user")
        ctx.dataset = EvalSet("x", tuple(replace(it, kind="user") for it in ctx.eval_set().items
                                         if it.id == "capital"))
        res = SUITES["judge_score"](ctx)
    finally:
        server.shutdown()
        server.server_close()
    assert res.metrics["items"] == 1 and res.metrics["score_s2t"] == 9 and res.metrics["score_s2s"] == 9


def test_quality_suite_is_skipped_with_a_clear_message_without_speechmos(qa_folder, judge, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "speechmos", None)  # as if not installed (import raises ImportError)
    res = SUITES["quality"](make_ctx(qa_folder, judge, tmp_path))
    assert res.status == "skipped" and "install_eval_deps.sh --mos" in res.notes[0]


class NoisyResponder(ScriptedResponder):
    def events(self, answer, style, audio_out):
        for ev in super().events(answer, style, audio_out):
            if isinstance(ev, AudioChunk):
                noise = np.random.default_rng(0).standard_normal(len(ev.pcm)).astype(np.float32) * 0.1
                ev = AudioChunk(np.clip(ev.pcm + noise, -1, 1), ev.sample_rate)
            yield ev


@pytest.mark.slow  # DNSMOS: ~5-10 s per clip on a busy 2-core machine
def test_quality_suite_ranks_clean_speech_above_noisy(qa_folder, judge, tmp_path):
    pytest.importorskip("speechmos.dnsmos", reason="scripts/install_eval_deps.sh --mos")
    clean = SUITES["quality"](make_ctx(qa_folder, judge, tmp_path, limit=1))
    noisy = SUITES["quality"](make_ctx(qa_folder, judge, tmp_path, limit=1, responder=NoisyResponder()))
    assert clean.status == "ok" and 1.0 <= clean.metrics["ovrl_mos"] <= 5.0
    assert clean.metrics["ovrl_mos"] > noisy.metrics["ovrl_mos"] + 0.5
    assert clean.metrics["bak_mos"] > noisy.metrics["bak_mos"] + 1.0


# --- tokenizer suite through the production loaders and the CLI ----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    import torch

    from glm4voice.train import tokenizer_trainer as tt

    torch.manual_seed(0)
    spec = tt.TokenizerTrainSpec(d_model=32, heads=2, ffn=64, layers=2, post_layers=1, codebook=16, block=20,
                                 asr_dim=32, asr_layers=1, asr_heads=2)
    model = tt.TokenizerTrainModel(spec).eval()
    with torch.no_grad():
        model.vq.codebook.weight.normal_()
    return tt.export(model, tmp_path_factory.mktemp("tok") / "tokenizer")


def test_tokenizer_suite_cli_end_to_end(qa_folder, tiny_tokenizer, reference_dir, tmp_path):
    from glm4voice.cli import main

    out = tmp_path / "out"
    rc = main(["eval", "tokenizer", "--tokenizer", str(tiny_tokenizer), "--decoder", str(reference_dir / "decoder"),
               "--data", str(qa_folder), "--out", str(out), "--limit", "1", "--judge", "whisper",
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    res = doc["suites"]["tokenizer"]
    m = res["metrics"]
    assert m["items"] == 1 and len(res["rows"]) == 1
    # the judge understands the input speech; a random tokenizer + decoder destroys it, and a random ASR branch too
    assert m["judge_error_on_input"] <= 0.3
    assert m["recon_error"] >= 0.8 and m["asr_error"] >= 0.8
    assert all(r["codes"] == int(np.ceil(sf.info(qa_folder / f"{r['id']}.wav").frames / 1280)) for r in res["rows"])
    assert res["targets"][0]["met"] is False
    md = (out / "report.md").read_text()
    assert "## tokenizer" in md and "tokenizer ASR error" in md and "![" in md
    assert all((out / "plots" / p.split("](plots/")[1].rstrip(")")).is_file()
               for p in md.splitlines() if p.startswith("!["))


@pytest.mark.slow  # a random decoder's noise is slow to judge on a busy machine
def test_tokenizer_suite_without_asr_branch_says_so(qa_folder, tiny_tokenizer, reference_dir, judge, tmp_path):
    from glm4voice.eval.system import ModelSpec
    from glm4voice.train import tokenizer_trainer as tt

    plain = tmp_path / "plain"
    shutil.copytree(tiny_tokenizer, plain)
    (plain / tt.ASR_BRANCH_CONFIG).unlink()
    ctx = Context(spec=ModelSpec(tokenizer=str(plain), decoder=str(reference_dir / "decoder")), data=str(qa_folder),
                  judge=judge, limit=1, cache_dir=tmp_path)
    res = SUITES["tokenizer"](ctx)
    assert "asr_error" not in res.metrics and "no asr_branch.json" in res.notes[0]
    assert "recon_error" in res.metrics


# --- the real pipeline (VoiceChat) with tiny scripted models, through the CLI ----------------------------------------
@pytest.fixture(scope="module")
def scripted_model(tmp_path_factory):
    """A tiny model that always answers ANSWER_TEXT + 26 codes (tests/test_pipeline_fixtures.py), and a folder of
    two spoken questions: one expecting that answer, one expecting something else."""
    from tests.test_pipeline_fixtures import ANSWER_TEXT, build_models

    tmp = tmp_path_factory.mktemp("scripted")
    root = build_models(tmp / "model")
    data = tmp / "data"
    data.mkdir()
    rows = [{"id": "right", "text": "Say the alphabet.", "answer": ANSWER_TEXT},
            {"id": "wrong", "text": "What is three plus four?", "answer": "7", "key": "7", "kind": "arithmetic"}]
    for r in rows:
        sf.write(data / f"{r['id']}.wav", espeak(r["text"]), 16000)
    (data / "metadata.jsonl").write_text("\n".join(json.dumps(r | {"audio": f"{r['id']}.wav"}) for r in rows))
    return root, data, ANSWER_TEXT


def _eval_cli(tmp_path, root, data, *args) -> dict:
    from glm4voice.cli import main

    out = tmp_path / "out"
    rc = main(["eval", *args, "--model", str(root), "--data", str(data), "--out", str(out), "--judge", "whisper",
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    return json.loads((out / "results.json").read_text())["suites"]


def test_lm_suite_cli_through_the_real_pipeline(scripted_model, tmp_path):
    root, data, answer = scripted_model
    lm = _eval_cli(tmp_path, root, data, "lm")["lm"]
    assert lm["metrics"]["accuracy"] == 0.5
    assert {r["id"]: r["correct"] for r in lm["rows"]} == {"right": True, "wrong": False}
    assert all(r["answer"] == answer for r in lm["rows"])


@pytest.mark.slow  # the tiny decoder streams 26 codes in ~10-35 s on a busy 2-core machine, 3 answers
def test_spoken_suites_cli_through_the_real_pipeline(scripted_model, tmp_path):
    root, data, answer = scripted_model
    suites = _eval_cli(tmp_path, root, data, "spoken_qa", "latency", "--limit", "1", "--latency-runs", "1")
    sqa, lat = suites["spoken_qa"], suites["latency"]
    (row,) = sqa["rows"]
    assert row["answer"] == answer and row["correct_s2t"] == (row["id"] == "right")
    assert row["audio_seconds"] == pytest.approx(26 / 12.5, rel=0.05)  # 26 codes spoken
    m = lat["metrics"]
    assert m["runs"] == 1 and 0 < m["tokenize_p50"] < m["total_p50"]
    assert 0 < m["time_to_first_audio_p50"] <= m["total_p50"] and m["rtf_p50"] > 0
    assert m["wall_first_audio_p50"] >= m["time_to_first_audio_p50"] - 0.05


def test_builtin_heldout_set_is_spoken_by_heldout_voices_once(tmp_path):
    from glm4voice.eval.data import builtin_heldout
    from glm4voice.train.voices import HELDOUT_VOICE_NAMES

    first = builtin_heldout(tmp_path, per_kind=1)
    assert len(first.items) >= 10 and all(it.audio for it in first.items)
    assert {it.voice for it in first.items} <= HELDOUT_VOICE_NAMES and {it.language for it in first.items} == {
        "en", "zh"}
    assert all(sf.info(it.audio).samplerate == 16000 and sf.info(it.audio).duration > 0.5 for it in first.items)
    stamps = {it.audio: (tmp_path / it.audio).stat().st_mtime_ns for it in first.items}
    again = builtin_heldout(tmp_path, per_kind=1)  # read back from the cache folder, nothing re-synthesised
    assert [(it.id, it.text, it.answer, it.key, it.voice) for it in again.items] == [
        (it.id, it.text, it.answer, it.key, it.voice) for it in first.items]
    assert all((tmp_path / a).stat().st_mtime_ns == t for a, t in stamps.items())


@pytest.mark.parametrize("argv, message", [
    (["--data", "somewhere", "--per-kind", "2"], "--per-kind sizes the built-in held-out set only"),
    (["--split", "train"], "--split picks rows of a corpus"),
    (["--per-kind", "0"], "--per-kind must be at least 1"),
    (["--data", "somewhere", "--audio-is-output", "--text-only"], "use one or the other"),
])
def test_eval_refuses_options_its_data_would_ignore(argv, message, tmp_path, capsys):
    from glm4voice.cli import main

    rc = main(["eval", "lm", *argv, "--out", str(tmp_path / "out")])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work
