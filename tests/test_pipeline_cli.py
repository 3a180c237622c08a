"""`glm4voice chat`: one spoken or typed question with the answer written to a wav, timings, interactive mode."""

import subprocess
import sys

import soundfile as sf

from glm4voice.cli import main
from glm4voice.decoder.flow import feat_len
from tests.conftest import REPO_ROOT, reference_root
from tests.test_pipeline_fixtures import ANSWER_TEXT, build_models

QUESTION_WAV = reference_root() / "tokenizer" / "inputs" / "a01_16k_mono_3s.wav"


def test_chat_audio_question_writes_answer_wav_and_timings(tmp_path, capsys):
    root = build_models(tmp_path / "m")
    out = tmp_path / "answer.wav"
    assert main(["chat", "--model", str(root), "--audio", str(QUESTION_WAV), "-o", str(out), "--timings"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == ANSWER_TEXT
    for stage in ("tokenize", "lm_prefill", "lm_first_audio_block", "speech_decode", "time_to_first_audio"):
        assert stage in captured.err
    pcm, sr = sf.read(out)
    assert sr == 22050 and pcm.size == 256 * feat_len(26, 12.5)  # the 26 scripted codes, as offline decoding


def test_chat_text_and_interactive(tmp_path):
    root = build_models(tmp_path / "m")
    r = subprocess.run([sys.executable, "-m", "glm4voice", "chat", "--model", str(root), "--text-only"],
                       input="hello\n/reset\n@" + str(QUESTION_WAV) + "\n/quit\n", capture_output=True, text=True,
                       cwd=REPO_ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(ANSWER_TEXT) == 2 and "[new conversation]" in r.stderr


def test_chat_errors_are_clear(tmp_path, capsys):
    root = build_models(tmp_path / "m")
    assert main(["chat", "--model", str(root), "--audio", str(tmp_path / "missing.wav")]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["chat", "--model", str(tmp_path / "nowhere"), "--text", "hi"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_chat_lm_ahead_runs_the_lm_in_its_own_thread_with_the_same_answer(tmp_path, capsys, monkeypatch):
    from glm4voice.pipeline import session

    made = []

    class Counting(session.RunAhead):
        def __init__(self, tokens):
            made.append(self)
            super().__init__(tokens)

    monkeypatch.setattr(session, "RunAhead", Counting)
    root = build_models(tmp_path / "m")
    out = tmp_path / "answer.wav"
    assert main(["chat", "--model", str(root), "--audio", str(QUESTION_WAV), "-o", str(out), "--lm-ahead"]) == 0
    assert capsys.readouterr().out.strip() == ANSWER_TEXT and len(made) == 1
    assert sf.read(out)[0].size == 256 * feat_len(26, 12.5)
    assert main(["chat", "--model", str(root), "--audio", str(QUESTION_WAV), "-o", str(out)]) == 0
    assert len(made) == 1  # off by default
