"""Answer normalisation and matching (the documented rule), data loading, the judge-model client, the report."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from glm4voice.errors import ConfigError
from glm4voice.eval import metrics as M


@pytest.mark.parametrize("text, language, expected", [
    ("What is three plus four? It is SEVEN.", "en", "what is 3 plus 4 it is 7"),
    ("twenty-one", "en", "21"),
    ("one hundred and five", "en", "105"),
    ("a hundred dogs, 1,000 cats", "en", "100 dogs 1000 cats"),
    ("three four", "en", "3 4"),  # two numbers, not 34 or 7
    ("three and four", "en", "3 and 4"),
    ("It’s John's “book”.", "en", "it's john's book"),
    ("someone is alone", "en", "someone is alone"),  # no number inside words
    ("三加四等于七。", "zh", "3加4等于7"),
    ("一百零五，二十一，两个", "zh", "105 21 2个"),
    ("一二三", "zh", "123"),
])
def test_normalize(text, language, expected):
    assert M.normalize(text, language) == expected


def test_units_are_characters_for_chinese_and_words_otherwise():
    assert M.units("你好，世界！", "zh") == ["你", "好", "世", "界"]
    assert M.units("Hello, world!", "en") == ["hello", "world"]


def test_error_rates():
    assert M.error_rate("The capital of France is Paris.", "the capital on france is paris", "en") == pytest.approx(
        1 / 6)
    assert M.error_rate("3 plus 4 is 7.", "three plus four is seven", "en") == 0.0
    assert M.error_rate("三加四等于七。", "3加4等于7", "zh") == 0.0
    assert M.error_rate("", "", "en") == 0.0 and M.error_rate("a", "", "en") == 1.0
    # corpus-level: total edits / total reference units, not a mean of per-item rates
    assert M.corpus_error_rate(["a b c d", "x"], ["a b c d", "y"], ["en", "en"]) == pytest.approx(1 / 5)


def test_answer_matching_with_key():
    assert M.answer_correct("Three plus four is seven.", "3 plus 4 is 7.", "en", key="7")
    assert M.answer_correct("seven", "3 plus 4 is 7.", "en", key="7")
    assert not M.answer_correct("3 plus 4 is 17", "3 plus 4 is 7.", "en", key="7")
    assert not M.answer_correct("3 plus 4 is 8", "3 plus 4 is 7.", "en", key="7")
    assert M.answer_correct("The capital of France is Paris", "The capital of France is Paris.", "en", key="Paris")
    assert not M.answer_correct("The capital of France is Lyon", "The capital of France is Paris.", "en",
                                key="Paris")
    assert M.answer_correct("三加四等于七", "三加四等于七。", "zh", key="七")
    assert M.answer_correct("3加4等于7", "三加四等于七。", "zh", key="七")
    assert not M.answer_correct("三加四等于八", "三加四等于七。", "zh", key="七")


def test_answer_matching_without_key_is_near_verbatim_and_number_exact():
    exp = "Why did the computer go to the doctor? It had a virus."
    assert M.answer_correct("why did the computer go to the doctor it had a virus", exp, "en")
    assert M.answer_correct("why did a computer go to the doctor it had a virus", exp, "en")  # 1/12 words off
    assert not M.answer_correct("I do not know.", exp, "en")
    # a number change fails even when the error rate is small
    long = "you said the meeting starts at 9 and ends at noon in the big room upstairs"
    assert not M.answer_correct(long.replace("9", "10"), long, "en")


def test_answer_keys_of_corpus_formats():
    from glm4voice.train.texts import TextConfig, arithmetic_facts, capital_facts

    for lang in ("en", "zh"):
        for _, answer in arithmetic_facts(lang, TextConfig())[::37]:
            key = M.answer_key("arithmetic", answer, lang)
            assert key and M.answer_correct(answer, answer, lang, key)
    assert M.answer_key("arithmetic", "3 plus 4 is 7.", "en") == "7"
    assert M.answer_key("arithmetic", "三加四等于七。", "zh") == "七"
    for _, answer in capital_facts()[:20]:
        key = M.answer_key("capital", answer, "en")
        assert key and answer.endswith(f" is {key}.")
    assert M.answer_key("chat", "Hello!", "en") is None


# --- data ----------------------------------------------------------------------------------------------------------
def _wav(path, seconds=0.5):
    import numpy as np
    import soundfile as sf

    sf.write(path, (0.1 * np.sin(np.arange(int(16000 * seconds)) * 0.05)).astype("float32"), 16000)


def test_user_folder_jsonl_and_tsv(tmp_path):
    from glm4voice.eval.data import from_folder, load_eval_set

    _wav(tmp_path / "q1.wav")
    _wav(tmp_path / "q2.wav")
    rows = [{"audio": "q1.wav", "text": "What is 3 plus 4?", "answer": "7", "kind": "arithmetic"},
            {"audio": "q2.wav", "text": "你好", "answer": "你好！", "language": "zh", "style": "fast"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    s = load_eval_set(str(tmp_path), cache_dir=tmp_path / "cache")
    assert [it.id for it in s.items] == ["q1.wav", "q2.wav"]
    assert s.items[0].audio == str(tmp_path / "q1.wav") and s.items[1].language == "zh"
    assert s.items[1].style == "fast" and s.items[0].kind == "arithmetic"
    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "metadata.tsv").write_text("audio\ttext\tanswer\nq1.wav\tHello\tHi\n")
    (it,) = from_folder(tmp_path).items
    assert (it.text, it.answer, it.language) == ("Hello", "Hi", "en")


@pytest.mark.parametrize("row, match", [
    ({"audio": "missing.wav"}, "does not exist"),
    ({"audio": "q1.wav", "colour": "red"}, "unknown field"),
    ({"audio": "q1.wav", "language": "fr"}, "language"),
    ({"kind": "x"}, "needs 'audio' or 'text'"),
])
def test_user_folder_errors_name_the_problem(tmp_path, row, match):
    from glm4voice.eval.data import from_folder

    _wav(tmp_path / "q1.wav")
    (tmp_path / "metadata.jsonl").write_text(json.dumps(row))
    with pytest.raises(ConfigError, match=match):
        from_folder(tmp_path)


def test_bare_audio_folder_and_empty_folder(tmp_path):
    from glm4voice.eval.data import from_folder

    with pytest.raises(ConfigError, match="no audio"):
        from_folder(tmp_path)
    _wav(tmp_path / "a.flac")
    assert [it.id for it in from_folder(tmp_path).items] == ["a.flac"]


def test_sample_spreads_over_kinds():
    from glm4voice.eval.data import EvalItem, EvalSet

    items = [EvalItem(f"{k}{i}", "q", kind=k) for k in ("a", "b", "c") for i in range(10)]
    s = EvalSet("x", tuple(items)).sample(6, seed=1)
    assert len(s.items) == 6 and {it.kind for it in s.items} == {"a", "b", "c"}
    assert s.items == EvalSet("x", tuple(items)).sample(6, seed=1).items


def test_builtin_heldout_text_items_are_heldout_phrasings():
    from glm4voice.eval.data import builtin_heldout
    from glm4voice.train.texts import build_items
    from glm4voice.train.voices import HELDOUT_VOICE_NAMES

    s = builtin_heldout("/nonexistent", per_kind=2, speak=False)
    heldout = {it.id for it in build_items(0) if it.split == "heldout"}
    assert s.items and all(it.id in heldout for it in s.items)
    assert all(it.voice in HELDOUT_VOICE_NAMES for it in s.items)
    assert {"arithmetic", "capital", "style"} <= {it.kind for it in s.items}
    assert all(it.key for it in s.items if it.kind in ("arithmetic", "capital"))


def test_corpus_heldout_rows(tmp_path):
    from glm4voice.eval.data import from_corpus
    from glm4voice.train.texts import Item, write_items

    items = [Item("arithmetic-en-00001h", "arithmetic", "en", "Could you work out 1 plus 2 for me?", "1 plus 2 is 3.",
                  "heldout"), Item("greeting-en-hello-0", "greeting", "en", "Hello!", "Hello! How can I help you?",
                                   "train")]
    write_items(items, str(tmp_path / "items.jsonl"))
    (tmp_path / "audio16k").mkdir()
    rows = []
    for uid, it, split, role in (("a.q0", items[0], "heldout", "question"), ("a.a", items[0], "heldout", "answer"),
                                 ("g.q0", items[1], "train", "question"), ("g.q1", items[1], "heldout", "question"),
                                 ("a.q1", items[0], "heldout", "question")):
        _wav(tmp_path / "audio16k" / f"{uid}.flac")
        rows.append({"id": uid, "item_id": it.id, "kind": it.kind, "role": role, "text": it.question,
                     "language": "en", "voice": "flite:awb", "style": "rate=1.00,pitch=+0.0", "split": split,
                     "duration": 0.5, "path": f"audio16k/{uid}.flac"})
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    s = from_corpus(tmp_path)
    it, greet, it2 = s.items  # the held-out rows: two voices of the held-out phrasing, a train phrasing by a
    assert (it.id, it.answer, it.key, it.voice) == ("a.q0", "1 plus 2 is 3.", "3", "flite:awb")  # held-out voice
    assert it.answer_audio.endswith("a.a.flac") and it.text_split == "heldout" and it2.id == "a.q1"
    assert greet.id == "g.q1" and greet.text_split == "train"
    # the text QA suite asks only held-out phrasings, each once (whatever the number of voices)
    from glm4voice.eval.context import Context
    from glm4voice.eval.suites import SUITES
    from glm4voice.eval.system import Reply

    class Echo:
        asked: list = []

        def reply(self, *, audio=None, text=None, audio_out=True, instruction=""):
            Echo.asked.append(text)
            return Reply("1 plus 2 is three")

    res = SUITES["lm"](Context(data=str(tmp_path), responder=Echo()))
    assert Echo.asked == [items[0].question] and res.metrics["accuracy"] == 1.0


# --- judge-model client against a local fake server ----------------------------------------------------------------
class _FakeJudge(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeJudge.seen.append((self.path, self.headers.get("Authorization"), body))
        answer = body["messages"][-1]["content"].split("Assistant's answer:")[-1]
        content = "Score: 9\nCorrect." if "Paris" in answer else "score = 2, wrong"
        if "teapot" in answer:
            self.send_response(418)
            self.end_headers()
            return
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_judge_url():
    server = HTTPServer(("127.0.0.1", 0), _FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_chat_judge_scores_through_an_openai_compatible_endpoint(fake_judge_url):
    from glm4voice.eval.llm_judge import ChatJudge, JudgeError

    judge = ChatJudge(fake_judge_url, "judge-1", api_key="k123")
    assert judge.score("What is the capital of France?", "It is Paris.", "Paris") == 9
    assert judge.score("What is the capital of France?", "Lyon.") == 2
    path, auth, body = _FakeJudge.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer k123" and body["model"] == "judge-1"
    assert "Reference answer: Paris" in body["messages"][1]["content"]
    assert "Reference answer" not in _FakeJudge.seen[1][2]["messages"][1]["content"]
    with pytest.raises(JudgeError, match="418"):
        judge.score("q", "teapot")
    with pytest.raises(ConfigError, match="--judge-url"):
        ChatJudge(None, "m")


def test_chat_judge_unreachable_endpoint_is_a_clear_error():
    from glm4voice.eval.llm_judge import ChatJudge, JudgeError

    with pytest.raises(JudgeError, match="failed"):
        ChatJudge("http://127.0.0.1:9/v1", "m", timeout=2).score("q", "a")


@pytest.mark.parametrize("content, score", [("Score: 7", 7), ("score=10 great", 10), ("8", 8), ("8/10", 8),
                                            ("no idea", None), ("Score: 0", None), ("I give 11", None)])
def test_parse_score(content, score):
    from glm4voice.eval.llm_judge import parse_score

    assert parse_score(content) == score


# --- report ----------------------------------------------------------------------------------------------------------
def test_report_writes_json_markdown_and_plots(tmp_path):
    from glm4voice.eval.report import write_report
    from glm4voice.eval.suites import SuiteResult, Target

    r = SuiteResult("spoken_qa", metrics={"accuracy_s2t": 0.5, "nan_metric": float("nan")},
                    targets=[Target("accuracy_s2t", ">=", 0.9, "S->T accuracy")],
                    rows=[{"id": "a", "correct_s2t": True}, {"id": "b|c", "correct_s2t": False}],
                    charts=[{"type": "bar", "title": "acc", "labels": ["x", "y"], "values": [0.5, None],
                             "ylabel": "accuracy", "target": 0.9},
                            {"type": "box", "title": "b", "labels": ["p", "q"], "values": [[1, 2], []]},
                            {"type": "bar", "title": "grouped", "labels": ["v1", "v2"], "values": [],
                             "series": {"input_error": [0.1, 0.2], "recon_error": [0.3, None]}}],
                    notes=["something skipped"])
    js, md = write_report([r], tmp_path, meta={"model": {"lm": "embedded"}})
    doc = json.loads(js.read_text())
    t = doc["suites"]["spoken_qa"]["targets"][0]
    assert (t["actual"], t["met"]) == (0.5, False)
    assert doc["suites"]["spoken_qa"]["metrics"]["nan_metric"] is None
    text = md.read_text()
    assert "| spoken_qa | S->T accuracy | >= 0.9 | 0.500 | no |" in text
    assert "> something skipped" in text and "b\\|c" in text
    assert text.index("| b\\|c") < text.index("| a |")  # wrong answers first
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["spoken_qa_0.png", "spoken_qa_1.png", "spoken_qa_2.png"] and all(
        (tmp_path / "plots" / p).stat().st_size > 1000 for p in pngs)


def test_model_spec_from_args(tmp_path):
    from glm4voice.eval.system import ModelSpec

    assert ModelSpec.from_args().describe() == {"tokenizer": "embedded", "lm": "embedded", "decoder": "embedded"}
    assert ModelSpec.from_args("official", decoder="d/x") == ModelSpec("official", "official", "d/x")
    for c in ("tokenizer", "lm", "decoder"):
        (tmp_path / c).mkdir()
    spec = ModelSpec.from_args(str(tmp_path), lm="other")
    assert spec == ModelSpec(str(tmp_path / "tokenizer"), "other", str(tmp_path / "decoder"))
    (tmp_path / "lm").rmdir()
    with pytest.raises(ConfigError, match="missing lm"):
        ModelSpec.from_args(str(tmp_path))


def test_audio_is_output_skips_suites_that_need_a_model(tmp_path):
    from glm4voice.eval.context import Context
    from glm4voice.eval.suites import NEEDS_MODEL, run_suites

    res = run_suites(list(NEEDS_MODEL), Context(data=str(tmp_path), audio_is_output=True))
    assert [r.status for r in res] == ["skipped"] * len(NEEDS_MODEL)
    assert all("--audio-is-output" in r.notes[0] for r in res)


def test_timing_suites_run_before_the_judge_is_used(tmp_path, monkeypatch):
    from glm4voice.eval import suites
    from glm4voice.eval.context import Context

    ran = []

    def fake(name, uses_judge):
        def run(ctx):
            ran.append((name, ctx.judge is not None))
            if uses_judge:
                ctx.judge = object()  # what get_judge() leaves behind
            return suites.SuiteResult(name)
        return run

    monkeypatch.setitem(suites.SUITES, "tokenizer", fake("tokenizer", True))
    monkeypatch.setitem(suites.SUITES, "spoken_qa", fake("spoken_qa", True))
    monkeypatch.setitem(suites.SUITES, "latency", fake("latency", False))
    res = suites.run_suites(["tokenizer", "spoken_qa", "latency"], Context(data=str(tmp_path)))
    assert ran == [("latency", False), ("tokenizer", False), ("spoken_qa", True)]
    assert [r.suite for r in res] == ["latency", "tokenizer", "spoken_qa"]
