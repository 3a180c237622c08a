"""Remote-LM mode with two processes: `glm4voice serve --lm-only` runs the LM; a second `glm4voice serve
--lm-url` keeps the tokenizer and decoder and sends prompts as token ids to the first one's /v1/completions."""

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.test_pipeline_fixtures import ANSWER_TEXT, build_models
from tests.test_server_fixtures import free_port

pytest.importorskip("uvicorn")


def start(args, port):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "glm4voice", "serve", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not start in time")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_pipeline_with_the_lm_in_another_process(tmp_path):
    root = build_models(tmp_path)
    lm_port, voice_port = free_port(), free_port()
    lm = start(["--lm-only", "--model", str(root), "--api-key", "lm-secret", "--max-sessions", "2"], lm_port)
    try:
        voice = start(["--model", str(root), "--lm-url", f"http://127.0.0.1:{lm_port}", "--lm-api-key",
                       "lm-secret", "--max-sessions", "2"], voice_port)
        try:
            base = f"http://127.0.0.1:{voice_port}"
            assert httpx.get(f"http://127.0.0.1:{lm_port}/health").json()["speech"] is False
            openai = pytest.importorskip("openai")
            client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
            r = client.chat.completions.create(model="glm-4-voice", messages=[{"role": "user", "content": "hi"}])
            assert r.choices[0].message.content == ANSWER_TEXT
            # a second turn through the WebSocket: the history goes to the LM process as ids
            from websockets.sync.client import connect

            with connect(base.replace("http", "ws") + "/v1/realtime") as ws:
                assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
                ws.send(json.dumps({"type": "session.update", "settings": {"output": "text"}}))
                ws.recv(timeout=30)
                for question in ("first", "second"):
                    ws.send(json.dumps({"type": "input_text", "text": question}))
                    while (m := json.loads(ws.recv(timeout=300)))["type"] != "response.done":
                        pass
                    assert m["text"] == ANSWER_TEXT
            # the LM process is not reachable: a clear error, and the voice server stays up
            stop(lm)
            with pytest.raises(openai.APIStatusError) as e:
                client.chat.completions.create(model="glm-4-voice", messages=[{"role": "user", "content": "hi"}])
            assert e.value.status_code == 502 and "remote LM" in str(e.value)
            assert httpx.get(base + "/health").json()["sessions"] == 0
        finally:
            stop(voice)
    finally:
        if lm.poll() is None:
            stop(lm)
