"""OpenAI-compatible HTTP API, so that existing clients (the official ``openai`` package, curl) work.

- ``GET /v1/models``: the one model this server runs.
- ``POST /v1/chat/completions``: ``messages`` with text and ``input_audio`` content parts (base64 wav, mp3,
  flac or ogg); ``modalities: ["text", "audio"]`` returns the answer's speech as ``message.audio`` (base64 wav,
  flac or raw 16-bit PCM at 22,050 Hz, with the text as ``audio.transcript``); ``stream: true`` sends
  server-sent events (audio deltas are base64 16-bit PCM at 22,050 Hz). An assistant message may refer to an
  earlier answer by ``audio.id``: its exact tokens (text and speech) are put back in the history.
- ``POST /v1/completions``: raw LM token streaming over a prompt given as token ids (or text), returning the
  generated ids in ``choices[0].token_ids``. This is what ``--lm-url`` talks to: the LM in one process, the
  tokenizer and decoder in another.

Extensions (ignored by OpenAI clients): ``top_k``, ``language`` (language lock), ``glm4voice.timings``; on
``/v1/completions`` also ``text_first`` (default true: a prompt that ends where an answer starts gets a first id
that is not a speech code, ``Sampling.text_first``).
Errors use OpenAI's shape ``{"error": {"message", "type", "code", "param"}}`` with a matching HTTP status.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from glm4voice.constants import DECODER_SAMPLE_RATE
from glm4voice.errors import AudioError, ContextLengthError, Glm4VoiceError
from glm4voice.pipeline.events import AudioChunk, ErrorEvent, TextDelta, Timing, TurnEnd
from glm4voice.pipeline.lm_backend import BackendError, BusyError, Sampling
from glm4voice.server.protocol import pcm_to_bytes
from glm4voice.server.pump import Pump

AUDIO_OUT_FORMATS = ("wav", "flac", "pcm16")
AUDIO_IN_FORMATS = ("wav", "mp3", "flac", "ogg")
ANSWER_MEMORY = 256  # answers whose tokens are kept for `audio.id` references
ANSWER_TTL = 3600  # seconds an audio id stays valid (OpenAI's expires_at)


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type_, code, param

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "code": self.code, "param": self.param}}


def api_error(e: BaseException) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, BusyError):
        return APIError(503, str(e), "server_error", "server_busy")
    if isinstance(e, ContextLengthError):
        return APIError(400, str(e), code="context_length_exceeded", param="messages")
    if isinstance(e, AudioError):
        return APIError(400, str(e), code="invalid_audio", param="messages")
    if isinstance(e, BackendError):
        return APIError(502, str(e), "server_error", "lm_unavailable")
    if isinstance(e, ValueError | Glm4VoiceError):
        return APIError(400, str(e), code="invalid_value")
    return APIError(500, f"internal error ({type(e).__name__})", "server_error", "internal")


class AnswerStore:
    """The last answers' token ids by audio id (bounded, thread-safe)."""

    def __init__(self, size: int = ANSWER_MEMORY):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def put(self, ids: list[int]) -> tuple[str, int]:
        key, expires = f"audio_{uuid.uuid4().hex}", int(time.time()) + ANSWER_TTL
        with self._lock:
            self._items[key] = (ids, expires)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return key, expires

    def reserve(self) -> tuple[str, int]:
        """An id handed out before the answer is complete (streaming); ``fill`` it at the end."""
        return self.put(None)

    def fill(self, key: str, ids: list[int]) -> None:
        with self._lock:
            if key in self._items:
                self._items[key] = (ids, self._items[key][1])

    def get(self, key: str) -> list[int] | None:
        with self._lock:
            item = self._items.get(key)
        return None if item is None or item[0] is None or item[1] < time.time() else item[0]


async def read_json(request, limit: int) -> dict:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise APIError(413, f"request body of {length} bytes exceeds the limit of {limit} bytes",
                       code="request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise APIError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
    try:
        data = json.loads(bytes(body))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise APIError(400, f"request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    return data


# --- request parsing --------------------------------------------------------------------------------------
@dataclass
class ChatRequest:
    turns: list[tuple[str, object]]  # ("user", {"audio": bytes | None, "text": str | None}) | ("assistant", ids)
    settings_changes: dict
    stream: bool
    include_usage: bool
    audio_out: bool
    audio_format: str


def _number(body: dict, name: str, kind=(int, float), lo=None, hi=None):
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, kind) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise APIError(400, f"'{name}' must be a number in [{lo}, {hi}], got {v!r}", param=name,
                       code="invalid_value")
    return v


def parse_chat(body: dict, text_tokenizer, answers: AnswerStore) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array", param="messages")
    modalities = body.get("modalities") or ["text"]
    if not isinstance(modalities, list) or not set(modalities) <= {"text", "audio"} or "text" not in modalities:
        raise APIError(400, "'modalities' must be [\"text\"] or [\"text\", \"audio\"]", param="modalities")
    audio_out = "audio" in modalities
    fmt = "wav"
    if audio_out:
        audio = body.get("audio") or {}
        fmt = audio.get("format", "wav") if isinstance(audio, dict) else None
        if fmt not in AUDIO_OUT_FORMATS:
            raise APIError(400, f"audio.format {fmt!r} is not supported; use one of {AUDIO_OUT_FORMATS}",
                           param="audio.format")
    changes: dict = {"output": "audio" if audio_out else "text"}
    for name, key, lo, hi in (("temperature", "temperature", 0, 5), ("top_p", "top_p", 0, 1)):
        v = _number(body, name, lo=lo, hi=hi)
        if v is not None:
            changes[key] = float(v)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        changes["max_new_tokens"] = _number({"max_tokens": limit}, "max_tokens", int, 1, 1 << 20)
    for name in ("top_k", "seed"):
        v = _number(body, name, int)
        if v is not None:
            changes[name] = v
    if body.get("language") is not None:
        changes["language"] = body["language"]
    turns, instructions = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise APIError(400, f"messages[{i}] must be an object with role system, user or assistant",
                           param=f"messages[{i}]")
        role, content = m["role"], m.get("content")
        if role in ("system", "developer"):
            instructions.append(_text_only(content, i))
        elif role == "user":
            turns.append(("user", _user_content(content, i)))
        else:
            turns.append(("assistant", _assistant_ids(m, i, text_tokenizer, answers)))
    if not turns or turns[-1][0] != "user":
        raise APIError(400, "the last message must be a user message", param="messages")
    if instructions:
        changes["instruction"] = " ".join(x for x in instructions if x)[:500]
    stream = bool(body.get("stream", False))
    opts = body.get("stream_options") or {}
    return ChatRequest(turns, changes, stream, bool(isinstance(opts, dict) and opts.get("include_usage")),
                       audio_out, fmt)


def _text_only(content, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise APIError(400, f"messages[{i}].content must be a string or an array of text parts",
                   param=f"messages[{i}].content")


def _user_content(content, i: int) -> dict:
    if isinstance(content, str):
        return {"text": content, "audio": None}
    if not isinstance(content, list) or not content:
        raise APIError(400, f"messages[{i}].content must be a string or a non-empty array of parts",
                       param=f"messages[{i}].content")
    texts, audio = [], None
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
            if audio is not None:
                raise APIError(400, f"messages[{i}]: one input_audio part per message", param=f"messages[{i}]")
            audio = _audio_part(part["input_audio"], f"messages[{i}].content[{j}].input_audio")
        else:
            raise APIError(400, f"messages[{i}].content[{j}]: expected a text or input_audio part",
                           param=f"messages[{i}].content[{j}]")
    text = " ".join(t for t in texts if t.strip()) or None
    return {"text": text, "audio": audio}


def _audio_part(part: dict, where: str) -> bytes:
    fmt = part.get("format")
    if fmt is not None and fmt not in AUDIO_IN_FORMATS:
        raise APIError(400, f"{where}.format {fmt!r} is not supported; use one of {AUDIO_IN_FORMATS}",
                       code="invalid_audio", param=where)
    try:
        return base64.b64decode(part.get("data") or "", validate=True)
    except (ValueError, TypeError) as e:
        raise APIError(400, f"{where}.data is not valid base64 ({e})", code="invalid_audio", param=where) from None


def _assistant_ids(m: dict, i: int, text_tokenizer, answers: AnswerStore) -> list[int]:
    audio = m.get("audio")
    if isinstance(audio, dict) and audio.get("id"):
        ids = answers.get(audio["id"])
        if ids is None:
            raise APIError(400, f"messages[{i}].audio.id {audio['id']!r} is unknown or expired",
                           param=f"messages[{i}].audio.id")
        return ids
    text = _text_only(m.get("content") or "", i)
    return text_tokenizer.encode(text)


# --- responses --------------------------------------------------------------------------------------------
def encode_audio(pcm, fmt: str) -> bytes:
    import numpy as np
    import soundfile as sf

    if fmt == "pcm16":
        return pcm_to_bytes(pcm)
    buf = io.BytesIO()
    sf.write(buf, np.asarray(pcm, dtype=np.float32), DECODER_SAMPLE_RATE, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def router(chat, config):
    from glm4voice.server.app import bearer, key_ok

    api = APIRouter()
    answers = AnswerStore()

    def check_key(request: Request) -> None:
        if not key_ok(config, bearer(request.headers)):
            raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')", "authentication_error",
                           "invalid_api_key")

    def fail(e: BaseException) -> JSONResponse:
        err = api_error(e)
        return JSONResponse(err.body(), status_code=err.status)

    @api.get("/v1/models")
    async def models(request: Request):
        try:
            check_key(request)
        except APIError as e:
            return fail(e)
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0,
                                            "owned_by": "glm4voice", "max_model_len": chat.max_seq}]}

    @api.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        session = None
        try:
            check_key(request)
            body = await read_json(request, config.max_request_bytes)
            req = parse_chat(body, chat.text_tokenizer, answers)
            settings = chat.default_settings.updated(req.settings_changes)
            session = chat.session(settings)
            gen = await _start(session, req)
        except Exception as e:  # noqa: BLE001 - every failure is an OpenAI-style error
            if session is not None:
                session.close()
            return fail(e)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": config.model_name}
        if req.stream:
            return StreamingResponse(_sse(session, Pump(gen), req, meta), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            return await _complete(session, Pump(gen), req, meta)
        except Exception as e:  # noqa: BLE001
            return fail(e)
        finally:
            session.close()

    async def _start(session, req: ChatRequest):
        import anyio

        def prepare():
            for role, item in req.turns[:-1]:
                if role == "user":  # an earlier turn with audio and text replays its audio
                    session.add_user_turn(audio=item["audio"], text=item["text"])
                else:
                    session.add_answer(item)
            last = req.turns[-1][1]
            if last["audio"] is not None:
                if last["text"]:  # text next to the question's audio: an instruction for this answer
                    extra = " ".join(x for x in (session.settings.instruction, last["text"]) if x)
                    session.settings = session.settings.updated({"instruction": extra[:500]})
                return session.respond(user_audio=last["audio"])
            if not last["text"]:
                raise APIError(400, "the last user message has neither text nor audio", param="messages")
            return session.respond(user_text=last["text"])

        return await anyio.to_thread.run_sync(prepare)

    async def _complete(session, pump: Pump, req: ChatRequest, meta: dict):
        text, pcm, timings, end = [], [], {}, None
        try:
            while (ev := await pump.next()) is not None:
                if isinstance(ev, TextDelta):
                    text.append(ev.text)
                elif isinstance(ev, AudioChunk):
                    pcm.append(ev.pcm)
                elif isinstance(ev, Timing):
                    timings[ev.stage] = round(ev.seconds, 4)
                elif isinstance(ev, ErrorEvent):
                    raise BackendError(ev.message)
                elif isinstance(ev, TurnEnd):
                    end = ev
        finally:
            await pump.close()
        import numpy as np

        message = {"role": "assistant", "content": "".join(text), "refusal": None}
        if req.audio_out:
            audio_id, expires = answers.put(session.last_answer)
            data = encode_audio(np.concatenate(pcm) if pcm else np.zeros(0, np.float32), req.audio_format)
            message["audio"] = {"id": audio_id, "data": base64.b64encode(data).decode(), "expires_at": expires,
                                "transcript": message["content"]}
            message["content"] = None  # as OpenAI: with audio output the text is the transcript
        return {**meta, "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": _finish(end), "logprobs": None}],
                "usage": _usage(session, end), "glm4voice": {"timings": timings,
                                                              "audio_sample_rate": DECODER_SAMPLE_RATE}}

    async def _sse(session, pump: Pump, req: ChatRequest, meta: dict):
        def chunk(delta: dict, finish=None, usage=None) -> str:
            c = {**meta, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            if usage is not None:
                c["usage"], c["choices"] = usage, []
            return f"data: {json.dumps(c, ensure_ascii=False)}\n\n"

        audio_id, expires = (answers.reserve() if req.audio_out else (None, None))
        end = None
        try:
            yield chunk({"role": "assistant", "content": ""})
            while (ev := await pump.next()) is not None:
                if isinstance(ev, TextDelta):
                    if req.audio_out:
                        yield chunk({"audio": {"id": audio_id, "transcript": ev.text, "expires_at": expires}})
                    else:
                        yield chunk({"content": ev.text})
                elif isinstance(ev, AudioChunk):
                    yield chunk({"audio": {"id": audio_id, "data": base64.b64encode(pcm_to_bytes(ev.pcm)).decode(),
                                           "expires_at": expires}})
                elif isinstance(ev, Timing):
                    yield f": timing {ev.stage} {ev.seconds:.4f}\n\n"  # SSE comment: ignored by clients
                elif isinstance(ev, ErrorEvent):
                    err = APIError(502, ev.message, "server_error", "lm_unavailable")
                    yield f"data: {json.dumps(err.body())}\n\n"
                elif isinstance(ev, TurnEnd):
                    end = ev
            if req.audio_out:
                answers.fill(audio_id, session.last_answer)
            yield chunk({}, _finish(end))
            if req.include_usage:
                yield chunk({}, usage=_usage(session, end))
            yield "data: [DONE]\n\n"
        except Exception as e:  # noqa: BLE001 - mid-stream failures become an error event
            yield f"data: {json.dumps(api_error(e).body())}\n\n"
        finally:  # also runs when the client disconnects (the task is cancelled): free the session
            session.cancel()
            await pump.close()
            session.close()

    @api.post("/v1/completions")
    async def completions(request: Request):
        try:
            check_key(request)
            body = await read_json(request, config.max_request_bytes)
            prompt, sampling, stream = parse_completion(body, chat)
            stream_lm = chat.lm.open(prompt)
        except Exception as e:  # noqa: BLE001
            return fail(e)
        meta = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": config.model_name}
        pump = Pump(stream_lm.generate(prompt, sampling))
        if stream:
            return StreamingResponse(_guard(_cmpl_stream(meta, chat, pump, stream_lm)), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        ids = []
        try:
            while (tok := await pump.next()) is not None:
                ids.append(tok)
        except Exception as e:  # noqa: BLE001
            return fail(e)
        finally:
            await pump.close()
            stream_lm.close()
        finish = "stop" if ids and chat.route(ids[-1])[0] == "stop" else "length"
        return {**meta, "object": "text_completion",
                "choices": [{"index": 0, "text": chat.text_tokenizer.decode(ids), "token_ids": ids,
                             "finish_reason": finish, "logprobs": None}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(ids),
                          "total_tokens": len(prompt) + len(ids)}}

    return api


async def _guard(events):
    try:
        async for e in events:
            yield e
    except Exception as e:  # noqa: BLE001
        yield f"data: {json.dumps(api_error(e).body())}\n\n"


async def _cmpl_stream(meta: dict, chat, pump: Pump, stream_lm):
    finish = "length"
    try:
        while (tok := await pump.next()) is not None:
            if chat.route(tok)[0] == "stop":
                finish = "stop"
            yield _cmpl_chunk(meta, chat, [tok], None)
        yield _cmpl_chunk(meta, chat, [], finish)
        yield "data: [DONE]\n\n"
    finally:  # also on client disconnect: stops generation and frees the slot
        await pump.close()
        stream_lm.close()


def _cmpl_chunk(meta: dict, chat, ids: list[int], finish) -> str:
    c = {**meta, "object": "text_completion",
         "choices": [{"index": 0, "text": chat.text_tokenizer.decode(ids) if ids else "", "token_ids": ids,
                      "finish_reason": finish, "logprobs": None}]}
    return f"data: {json.dumps(c, ensure_ascii=False)}\n\n"


def parse_completion(body: dict, chat) -> tuple[list[int], Sampling, bool]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = chat.encode_raw(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        ids = prompt
        vocab = chat.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab})", param="prompt")
    else:
        raise APIError(400, "'prompt' must be a string or a non-empty array of token ids (one prompt)",
                       param="prompt")
    max_tokens = _number(body, "max_tokens", int, 1, 1 << 20) or 256  # the official model server's default
    if len(ids) + 1 > chat.max_seq:
        raise APIError(400, f"prompt of {len(ids)} tokens leaves no room in the context of {chat.max_seq}",
                       code="context_length_exceeded", param="prompt")
    max_tokens = min(max_tokens, chat.max_seq - len(ids))
    temperature = _number(body, "temperature", lo=0, hi=5)
    top_p = _number(body, "top_p", lo=0, hi=1)
    top_k = _number(body, "top_k", int)
    language = body.get("language")
    if language not in (None, "en", "zh"):
        raise APIError(400, f"language must be 'en', 'zh' or null, got {language!r}", param="language")
    text_first = body.get("text_first", True)
    if not isinstance(text_first, bool):
        raise APIError(400, f"text_first must be true or false, got {text_first!r}", param="text_first")
    sampling = Sampling(temperature=1.0 if temperature is None else float(temperature),
                        top_p=1.0 if top_p is None else float(top_p), top_k=50 if top_k is None else top_k,
                        max_new_tokens=max_tokens, seed=_number(body, "seed", int), language=language,
                        text_first=text_first)
    return ids, sampling, bool(body.get("stream", False))


def _finish(end: TurnEnd | None) -> str:
    return "length" if end is not None and end.reason == "max_tokens" else "stop"


def _usage(session, end: TurnEnd | None) -> dict:
    completion = end.tokens if end is not None else 0
    return {"prompt_tokens": session.last_prompt_tokens, "completion_tokens": completion,
            "total_tokens": session.last_prompt_tokens + completion}
