"""The server against a live uvicorn instance: the WebSocket protocol end to end, the OpenAI-compatible API with
the official ``openai`` client, raw LM completions, admission, limits and bad input (each answered with a protocol
error while the server stays healthy)."""

import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

from glm4voice.audio import load_audio
from glm4voice.pipeline.voice_chat import VoiceChat
from glm4voice.server.config import ServerConfig
from tests.conftest import reference_root
from tests.test_pipeline_fixtures import ANSWER_CODES, ANSWER_TEXT, answer_chain, build_models
from tests.test_server_fixtures import live_server, pcm16

websockets = pytest.importorskip("websockets")
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")
KEY = "test-key"
QUESTION_WAV = reference_root() / "tokenizer" / "inputs" / "a01_16k_mono_3s.wav"
MAX_SESSIONS = 2
TIMEOUT = 180  # seconds for one answer on a loaded 2-core machine


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    root = build_models(tmp_path_factory.mktemp("models"))
    return VoiceChat.from_pretrained(model=root, max_sessions=MAX_SESSIONS, max_seq=1024)


@pytest.fixture(scope="module")
def server(chat):
    config = ServerConfig(api_key=KEY, max_sessions=MAX_SESSIONS, max_message_bytes=256 * 1024,
                          max_request_bytes=2 << 20, idle_timeout=4.0)
    with live_server(chat, config) as url:
        yield url


def ws_url(server, key=KEY):
    return server.replace("http", "ws") + "/v1/realtime" + (f"?api_key={key}" if key else "")


def recv_json(ws, timeout=TIMEOUT):
    while True:
        m = ws.recv(timeout=timeout)
        if isinstance(m, str):
            return json.loads(m)


def collect(ws, until="response.done", timeout=TIMEOUT):
    """Messages up to and including the first of type ``until``; binary audio joined."""
    msgs, audio = [], bytearray()
    deadline = time.monotonic() + timeout
    while True:
        m = ws.recv(timeout=max(1, deadline - time.monotonic()))
        if isinstance(m, bytes):
            audio += m
            continue
        msg = json.loads(m)
        msgs.append(msg)
        if msg["type"] == until:
            return msgs, bytes(audio)


def wait_for_sessions(server, n, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(server + "/health").json()["sessions"] == n:
            return True
        time.sleep(0.1)
    return False


def open_session(server, **settings):
    ws = connect(ws_url(server))
    created = recv_json(ws)
    assert created["type"] == "session.created"
    if settings:
        ws.send(json.dumps({"type": "session.update", **settings}))
        assert recv_json(ws)["type"] == "session.updated"
    return ws, created


# --- WebSocket protocol ----------------------------------------------------------------------------------
def test_ws_text_turn_streams_text_audio_timings(server, chat):
    ws, created = open_session(server)
    assert created["audio"] == {"input_sample_rate": 16000, "input_format": "pcm_s16le",
                                "output_sample_rate": 22050, "output_format": "pcm_s16le"}
    with ws:
        ws.send(json.dumps({"type": "input_text", "text": "What is the capital of France?"}))
        msgs, audio = collect(ws)
    kinds = [m["type"] for m in msgs]
    assert kinds[0] == "response.started" and kinds[-1] == "response.done"
    assert "".join(m["text"] for m in msgs if m["type"] == "text.delta") == ANSWER_TEXT
    done = msgs[-1]
    assert done["reason"] == "stop_token" and done["text"] == ANSWER_TEXT
    pcm = np.frombuffer(audio, "<i2")
    assert pcm.size == chat.decoder.decode(list(ANSWER_CODES)).numel()
    assert done["audio_seconds"] == pytest.approx(pcm.size / 22050, abs=1e-3)
    stages = {m["stage"] for m in msgs if m["type"] == "timing"}
    assert {"lm_prefill", "lm_first_audio_block", "speech_decode", "time_to_first_audio", "total"} <= stages
    assert wait_for_sessions(server, 0)


def test_ws_streamed_speech_with_vad_then_hold_to_talk(server):
    speech = load_audio(QUESTION_WAV).numpy()
    stream = np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(16000, np.float32)])
    ws, _ = open_session(server, settings={"output": "text"}, input={"vad": True, "silence_ms": 400})
    with ws:
        for i in range(0, stream.size, 640):  # 40 ms messages, as the browser sends them
            ws.send(pcm16(stream[i:i + 640]))
        msgs, _ = collect(ws)
        kinds = [m["type"] for m in msgs]
        assert kinds.index("speech.started") < kinds.index("input_audio.committed") < kinds.index("response.done")
        committed = next(m for m in msgs if m["type"] == "input_audio.committed")
        assert 2.0 < committed["audio_seconds"] < 4.5 and committed["codes"] > 20
        assert msgs[-1]["text"] == ANSWER_TEXT
        assert any(m["type"] == "timing" and m["stage"] == "tokenize" for m in msgs)
        # hold to talk: no detection, the client ends the turn
        ws.send(json.dumps({"type": "session.update", "input": {"vad": False}}))
        assert recv_json(ws)["input"]["vad"] is False
        for i in range(0, speech.size, 640):
            ws.send(pcm16(speech[i:i + 640]))
        ws.send(json.dumps({"type": "input_audio.commit"}))
        msgs, _ = collect(ws)
        assert msgs[0]["type"] == "input_audio.committed" and msgs[-1]["text"] == ANSWER_TEXT
        # encoded audio in one message
        ws.send(json.dumps({"type": "input_audio", "audio": base64.b64encode(QUESTION_WAV.read_bytes()).decode()}))
        msgs, _ = collect(ws)
        assert msgs[-1]["type"] == "response.done" and msgs[-1]["text"] == ANSWER_TEXT


def test_ws_cancel_reset_and_ping(server):
    ws, _ = open_session(server)
    with ws:
        ws.send(json.dumps({"type": "input_text", "text": "Tell me a story"}))
        while not isinstance(ws.recv(timeout=TIMEOUT), bytes):
            pass  # wait for the first audio
        ws.send(json.dumps({"type": "cancel", "played_seconds": 0.25}))
        msgs, _ = collect(ws)
        done = msgs[-1]
        assert done["reason"] == "cancelled" and done["text"] == ANSWER_TEXT[:13]
        assert done["audio_seconds"] == pytest.approx(3 / 12.5, abs=1e-3)  # 0.25 s heard -> 3 codes kept
        ws.send(json.dumps({"type": "reset"}))
        assert recv_json(ws)["type"] == "session.reset"
        ws.send(json.dumps({"type": "ping"}))
        assert recv_json(ws)["type"] == "pong"


@pytest.mark.parametrize("message, code", [
    ("{not json", "bad_message"),
    ("[1, 2]", "bad_message"),
    (json.dumps({"type": "launch_rockets"}), "bad_message"),
    (json.dumps({"type": "input_text"}), "bad_message"),
    (json.dumps({"type": "input_text", "text": 5}), "bad_message"),
    (json.dumps({"type": "session.update", "settings": {"temperature": "hot"}}), "bad_settings"),
    (json.dumps({"type": "session.update", "settings": {"colour": "red"}}), "bad_settings"),
    (json.dumps({"type": "session.update", "input": {"silence_ms": 5}}), "bad_settings"),
    (json.dumps({"type": "input_audio", "audio": "@@not base64@@"}), "bad_audio"),
    (json.dumps({"type": "input_audio", "audio": base64.b64encode(b"\x1aE\xdf\xa3" + bytes(400)).decode()}),
     "bad_audio"),  # WebM/Matroska: not a supported container
    (json.dumps({"type": "input_audio.commit"}), "bad_audio"),  # nothing heard yet
    (b"\x01\x02\x03", "bad_audio"),  # binary garbage: an odd number of bytes is not 16-bit PCM
    (json.dumps({"type": "input_text", "text": "x" * 2000}), "context_length"),  # longer than the context
    (b"\x00" * (300 * 1024), "too_large"),
    (json.dumps({"type": "input_text", "text": "y" * (300 * 1024)}), "too_large"),
])
def test_ws_bad_input_gets_protocol_error_and_session_survives(server, message, code):
    ws, _ = open_session(server)
    with ws:
        ws.send(message)
        err = recv_json(ws)
        assert err["type"] == "error" and err["code"] == code, err
        assert err["message"]
        ws.send(json.dumps({"type": "ping"}))
        assert recv_json(ws)["type"] == "pong"
    assert wait_for_sessions(server, 0)


def test_ws_even_sized_binary_garbage_is_just_noise(server):
    ws, _ = open_session(server, input={"vad": True})
    with ws:
        ws.send(np.random.default_rng(0).integers(-300, 300, 16000).astype("<i2").tobytes())
        ws.send(json.dumps({"type": "ping"}))
        assert recv_json(ws)["type"] == "pong"


def test_ws_wrong_key_and_busy(server):
    for key in (None, "wrong"):
        ws = connect(ws_url(server, key))
        err = recv_json(ws)
        assert err["code"] == "unauthorized"
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=10)
        assert e.value.rcvd.code == 4401
    held = [open_session(server)[0] for _ in range(MAX_SESSIONS)]
    ws = connect(ws_url(server))
    err = recv_json(ws)
    assert err["code"] == "busy" and "in use" in err["message"]
    with pytest.raises(ConnectionClosed) as e:
        ws.recv(timeout=10)
    assert e.value.rcvd.code == 1013
    r = httpx.post(server + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "glm-4-voice", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy"
    for w in held:
        w.close()
    assert wait_for_sessions(server, 0)
    open_session(server)[0].close()  # usable again


def test_ws_client_disconnect_mid_answer_frees_the_session(server):
    ws, _ = open_session(server)
    ws.send(json.dumps({"type": "input_text", "text": "hello"}))
    assert recv_json(ws)["type"] == "response.started"
    ws.close()  # gone while the answer is being generated
    assert wait_for_sessions(server, 0)
    assert httpx.get(server + "/health").json()["status"] == "ok"


def test_ws_idle_timeout(server):
    ws, _ = open_session(server)
    err = recv_json(ws, timeout=30)
    assert err["code"] == "idle_timeout"
    with pytest.raises(ConnectionClosed):
        while True:
            ws.recv(timeout=10)
    assert wait_for_sessions(server, 0)


# --- OpenAI-compatible API with the official client --------------------------------------------------------
@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT)


def test_openai_models_and_auth(server, client):
    import openai

    models = client.models.list()
    assert [m.id for m in models.data] == ["glm-4-voice"]
    bad = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="glm-4-voice", messages=[{"role": "user", "content": "hi"}])


def test_openai_text_and_audio_non_streaming(client, chat):
    r = client.chat.completions.create(model="glm-4-voice", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == ANSWER_TEXT and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == len(answer_chain(chat.text_tokenizer))
    wav_b64 = base64.b64encode(QUESTION_WAV.read_bytes()).decode()
    r = client.chat.completions.create(
        model="glm-4-voice", modalities=["text", "audio"], audio={"voice": "default", "format": "wav"},
        messages=[{"role": "user", "content": [{"type": "input_audio",
                                                "input_audio": {"data": wav_b64, "format": "wav"}}]}])
    audio = r.choices[0].message.audio
    assert audio.transcript == ANSWER_TEXT
    pcm, sr = sf.read(io.BytesIO(base64.b64decode(audio.data)))
    assert sr == 22050 and pcm.shape == (chat.decoder.decode(list(ANSWER_CODES)).numel(),)
    # audio and text in one message: the text is an instruction for this answer (it lands in the system prompt)
    r1 = client.chat.completions.create(model="glm-4-voice", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Answer briefly."},
        {"type": "input_audio", "input_audio": {"data": wav_b64, "format": "wav"}}]}])
    assert r1.choices[0].message.content == ANSWER_TEXT
    # the audio system prompt ends with a space; the byte-level test vocabulary has one token per character
    assert r1.usage.prompt_tokens == r.usage.prompt_tokens + len("Answer briefly.")
    # the next request refers to that answer by id: its exact tokens go back into the history
    r2 = client.chat.completions.create(
        model="glm-4-voice", messages=[
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": wav_b64, "format": "wav"}}]},
            {"role": "assistant", "audio": {"id": audio.id}},
            {"role": "user", "content": "and then?"}])
    assert r2.choices[0].message.content == ANSWER_TEXT
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens + len(answer_chain(chat.text_tokenizer)) - 1


def test_openai_streaming_text_and_audio(client, chat):
    stream = client.chat.completions.create(model="glm-4-voice", stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "hi"}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER_TEXT
    assert chunks[-1].usage.completion_tokens == len(answer_chain(chat.text_tokenizer))
    stream = client.chat.completions.create(model="glm-4-voice", stream=True, modalities=["text", "audio"],
                                            audio={"voice": "default", "format": "pcm16"},
                                            messages=[{"role": "user", "content": "hi"}])
    transcript, pcm = "", bytearray()
    for c in stream:
        audio = getattr(c.choices[0].delta, "audio", None) if c.choices else None
        if audio:
            transcript += getattr(audio, "transcript", None) or ""
            pcm += base64.b64decode(getattr(audio, "data", None) or "")
    assert transcript == ANSWER_TEXT
    assert len(pcm) // 2 == chat.decoder.decode(list(ANSWER_CODES)).numel()


def test_openai_streaming_client_disconnect_frees_the_session(server):
    with httpx.stream("POST", server + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "glm-4-voice", "stream": True, "modalities": ["text", "audio"],
                            "messages": [{"role": "user", "content": "hi"}]}, timeout=TIMEOUT) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                break  # read the first chunk, then hang up
    assert wait_for_sessions(server, 0)


@pytest.mark.parametrize("body, status, code", [
    (b"{broken", 400, "invalid_json"),
    (json.dumps({"messages": []}).encode(), 400, None),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).encode(), 400,
     "invalid_value"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "modalities": ["text", "audio"],
                 "audio": {"format": "mp3"}}).encode(), 400, None),
    (json.dumps({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
        "data": base64.b64encode(b"\x1aE\xdf\xa3" + bytes(100)).decode(), "format": "wav"}}]}]}).encode(), 400,
     "invalid_audio"),
    (json.dumps({"messages": [{"role": "user", "content": "z" * 2000}]}).encode(), 400, "context_length_exceeded"),
    (json.dumps({"messages": [{"role": "assistant", "audio": {"id": "audio_nope"}},
                              {"role": "user", "content": "hi"}]}).encode(), 400, None),
    (b"{" + b" " * (3 << 20) + b"}", 413, "request_too_large"),
])
def test_http_bad_requests(server, body, status, code):
    r = httpx.post(server + "/v1/chat/completions", content=body, timeout=TIMEOUT,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and (code is None or err["code"] == code)
    assert httpx.get(server + "/health").json()["sessions"] == 0


# --- raw LM completions --------------------------------------------------------------------------------------
def test_completions_raw_token_ids(server, client, chat):
    tok = chat.text_tokenizer
    prompt = tok.prefix_ids + tok.encode("hello\n")
    r = client.completions.create(model="glm-4-voice", prompt=prompt, max_tokens=100,
                                  extra_body={"return_token_ids": True})
    assert r.choices[0].model_extra["token_ids"] == answer_chain(tok)  # extension field, as vLLM's
    assert r.choices[0].text == tok.decode(answer_chain(tok)) and r.choices[0].finish_reason == "stop"
    raw = httpx.post(server + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                     json={"prompt": prompt, "max_tokens": 100}).json()
    assert raw["choices"][0]["token_ids"] == answer_chain(tok) and raw["choices"][0]["finish_reason"] == "stop"
    ids = []
    with httpx.stream("POST", server + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"prompt": "hello\n", "max_tokens": 5, "stream": True}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:") and line != "data: [DONE]":
                ids += json.loads(line[5:])["choices"][0]["token_ids"]
    assert ids == answer_chain(tok)[:5]
    bad = httpx.post(server + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                     json={"prompt": [10**9], "max_tokens": 5})
    assert bad.status_code == 400 and "vocabulary" in bad.json()["error"]["message"]
    bad = httpx.post(server + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                     json={"prompt": prompt, "max_tokens": 5, "text_first": "no"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "text_first"


def test_health_and_ui_are_served(server):
    h = httpx.get(server + "/health").json()
    assert h == {"status": "ok", "sessions": 0, "max_sessions": MAX_SESSIONS, "speech": True, "auth": True}
    page = httpx.get(server + "/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for f in ("app.js", "worklets.js", "style.css"):
        assert httpx.get(server + f"/static/{f}").status_code == 200


def test_device_and_dtype_reach_the_models(chat):
    assert chat.lm.model.dtype == torch.float32 and chat.decoder.device.type == "cpu"
