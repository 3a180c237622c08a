"""The HTTP/WebSocket application: one process, one ``VoiceChat``, one ``Session`` per WebSocket connection.

    app = create_app(chat, ServerConfig(api_key="..."))
    uvicorn.run(app, host="127.0.0.1", port=8000, ws_max_size=config.ws_frame_limit)

Admission policy: at most ``max_sessions`` conversations at once (WebSocket connections and HTTP requests that
are generating); one more gets a "busy" error at once (WebSocket close code 1013, HTTP 503). Nothing queues.
Every client message is size-checked; a connection idle longer than ``idle_timeout`` seconds is closed.
Blocking model work runs in worker threads, one pipeline event at a time, so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from glm4voice.pipeline.events import AudioChunk, ErrorEvent, SpeechStarted, TextDelta, Timing, TurnEnd, UserTurn
from glm4voice.pipeline.lm_backend import BusyError
from glm4voice.server import protocol as P
from glm4voice.server.config import ServerConfig
from glm4voice.server.pump import Pump

__all__ = ["ServerConfig", "create_app"]

log = logging.getLogger("glm4voice.server")
STATIC_DIR = Path(__file__).resolve().parent / "static"
TICK_SECONDS = 0.5  # how often an idle connection checks its timeout


def key_ok(config: ServerConfig, provided: str | None) -> bool:
    if not config.api_key:
        return True
    return provided is not None and hmac.compare_digest(provided.encode(), config.api_key.encode())


def bearer(headers) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key")


def create_app(chat, config: ServerConfig | None = None):
    from glm4voice.server.openai_api import router

    config = config or ServerConfig()
    app = FastAPI(title="glm4voice", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.chat, app.state.config = chat, config
    app.include_router(router(chat, config))

    @app.get("/health")
    async def health():
        return {"status": "ok", "sessions": chat.active_sessions, "max_sessions": chat.max_sessions,
                "speech": chat.tokenizer is not None and chat.decoder is not None, "auth": bool(config.api_key)}

    @app.get("/")
    async def index():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.websocket("/v1/realtime")
    async def realtime(ws: WebSocket):
        await ws.accept()
        provided = ws.query_params.get("api_key") or bearer(ws.headers)
        if not key_ok(config, provided):
            await _send_and_close(ws, P.error(P.UNAUTHORIZED, "missing or wrong API key"), P.CLOSE_UNAUTHORIZED)
            return
        try:
            session = chat.session()
        except BusyError as e:
            await _send_and_close(ws, P.error(P.BUSY, str(e)), P.CLOSE_BUSY)
            return
        conn = Connection(ws, chat, config, session)
        try:
            await conn.run()
        finally:
            await conn.shutdown()

    @app.exception_handler(Exception)
    async def internal(_request, exc):  # pragma: no cover - last resort, logged
        log.exception("unhandled error")
        return JSONResponse({"error": {"message": f"internal error: {type(exc).__name__}", "type": "server_error",
                                       "code": "internal"}}, status_code=500)

    return app


async def _send_and_close(ws, message: dict, code: int) -> None:
    try:
        await ws.send_text(json.dumps(message))
        await ws.close(code=code)
    except Exception:  # the client may already be gone
        pass


_ids = itertools.count(1)


class Connection:
    """One WebSocket conversation: the receive loop, the answer task, and the session they share."""

    def __init__(self, ws, chat, config: ServerConfig, session):
        self.ws, self.chat, self.config, self.session = ws, chat, config, session
        self.id = f"sess_{next(_ids)}"
        self.input = P.InputSettings()
        self.send_lock = asyncio.Lock()
        self.responder: asyncio.Task | None = None
        self.turn = 0
        self.last_activity = time.monotonic()
        self.open = True

    # -- sending ---------------------------------------------------------------------------------------------
    async def send(self, message: dict | bytes) -> None:
        if not self.open:
            return
        try:
            async with self.send_lock:
                if isinstance(message, bytes):
                    await self.ws.send_bytes(message)
                else:
                    await self.ws.send_text(json.dumps(message, ensure_ascii=False))
        except Exception:  # client gone: stop sending, the receive loop will see the disconnect
            self.open = False

    async def send_error(self, e: BaseException) -> None:
        code = P.error_code(e)
        if code == P.INTERNAL:
            log.exception("internal error in session %s", self.id, exc_info=e)
            text = f"internal error ({type(e).__name__}); the session is still usable"
        else:
            text = str(e)
        await self.send(P.error(code, text))

    # -- receiving -------------------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.send({"type": "session.created", "session_id": self.id, "model": self.config.model_name,
                         "settings": asdict(self.session.settings), "input": self.input.as_dict(),
                         "audio": {"input_sample_rate": P.INPUT_SAMPLE_RATE, "input_format": P.PCM_FORMAT,
                                   "output_sample_rate": P.OUTPUT_SAMPLE_RATE, "output_format": P.PCM_FORMAT},
                         "limits": {"max_message_bytes": self.config.max_message_bytes,
                                    "idle_timeout": self.config.idle_timeout,
                                    "max_audio_seconds": self.config.max_audio_seconds,
                                    "context_tokens": self.chat.max_seq}})
        receive = None
        while self.open:
            if receive is None:
                receive = asyncio.ensure_future(self.ws.receive())
            done, _ = await asyncio.wait({receive}, timeout=TICK_SECONDS)
            if not done:
                answering = self.responder is not None and not self.responder.done()
                if answering:
                    self.last_activity = time.monotonic()
                elif time.monotonic() - self.last_activity > self.config.idle_timeout:
                    await self.send(P.error(P.IDLE_TIMEOUT, f"no message for {self.config.idle_timeout:g} s; "
                                                            "closing the session"))
                    await _send_and_close(self.ws, {"type": "session.closed", "reason": "idle_timeout"},
                                          P.CLOSE_IDLE)
                    self.open = False
                    receive.cancel()
                    return
                continue
            message, receive = receive.result(), None
            if message["type"] == "websocket.disconnect":
                self.open = False
                return
            self.last_activity = time.monotonic()
            try:
                await self.dispatch(message)
            except Exception as e:  # noqa: BLE001 - every error goes back as a protocol message
                await self.send_error(e)

    async def dispatch(self, message: dict) -> None:
        data = message.get("bytes")
        text = message.get("text")
        size = len(data) if data is not None else len((text or "").encode())
        if size > self.config.max_message_bytes:
            raise P.ProtocolError(P.TOO_LARGE, f"message of {size} bytes exceeds the limit of "
                                               f"{self.config.max_message_bytes} bytes")
        if data is not None:
            await self.on_audio(P.pcm_from_bytes(data))
            return
        msg = P.parse_text(text or "")
        await getattr(self, "on_" + msg["type"].replace(".", "_"))(msg)

    # -- message handlers ------------------------------------------------------------------------------------
    async def on_session_update(self, msg: dict) -> None:
        settings = P.field(msg, "settings", dict, default={})
        try:
            new = self.session.settings.updated(settings)
        except (ValueError, TypeError) as e:
            raise P.ProtocolError(P.BAD_SETTINGS, str(e)) from None
        new_input = self.input.updated(P.field(msg, "input", dict, default={}))
        self.session.settings, self.input = new, new_input
        await self.send({"type": "session.updated", "settings": asdict(new), "input": new_input.as_dict()})

    async def on_input_audio(self, msg: dict) -> None:
        audio = P.b64decode(P.field(msg, "audio", str, required=True))
        await self.start_answer(user_audio=audio)

    async def on_input_audio_commit(self, msg: dict) -> None:
        listener = self.listener()
        if not listener.hearing:
            raise P.ProtocolError(P.BAD_AUDIO, "input_audio.commit: no audio received since the last turn")
        turn = await asyncio.to_thread(listener.commit)
        await self.on_user_turn(turn)

    async def on_input_audio_clear(self, msg: dict) -> None:
        self.listener().clear()
        await self.send({"type": "input_audio.cleared"})

    async def on_input_text(self, msg: dict) -> None:
        text = P.field(msg, "text", str, required=True)
        if not text.strip():
            raise P.ProtocolError(P.BAD_MESSAGE, "input_text: empty text")
        await self.start_answer(user_text=text)

    async def on_cancel(self, msg: dict) -> None:
        played = P.field(msg, "played_seconds", (int, float))
        await self.stop_answer(played)

    async def on_reset(self, msg: dict) -> None:
        await self.stop_answer(None)
        self.session.reset()
        self.turn = 0
        await self.send({"type": "session.reset"})

    async def on_ping(self, msg: dict) -> None:
        await self.send({"type": "pong"})

    async def on_audio(self, pcm) -> None:
        events = await asyncio.to_thread(self.listener().feed, pcm)
        for ev in events:
            if isinstance(ev, SpeechStarted):
                await self.send({"type": "speech.started", "seconds": round(ev.seconds, 3)})
                if self.input.barge_in and self.answering:
                    await self.stop_answer(None)
            elif isinstance(ev, UserTurn):
                await self.on_user_turn(ev)

    async def on_user_turn(self, turn: UserTurn) -> None:
        await self.send({"type": "input_audio.committed", "audio_seconds": round(turn.audio_seconds, 3),
                         "codes": len(turn.codes)})
        await self.start_answer(user_turn=turn)

    def listener(self):
        listener = self.session.listener(vad=self.input.vad, silence_ms=self.input.silence_ms)
        listener.max_samples = int(self.config.max_audio_seconds * P.INPUT_SAMPLE_RATE)
        return listener

    # -- answering -------------------------------------------------------------------------------------------
    @property
    def answering(self) -> bool:
        return self.responder is not None and not self.responder.done()

    async def start_answer(self, **user) -> None:
        if self.answering:  # a new input interrupts the current answer (barge-in)
            await self.stop_answer(None)
        self.turn += 1
        self.responder = asyncio.create_task(self.answer(self.turn, user))

    async def stop_answer(self, played_seconds: float | None) -> None:
        if self.answering:
            self.session.cancel(played_seconds)
            await asyncio.shield(self.responder)

    async def answer(self, turn: int, user: dict) -> None:
        pump = None
        try:
            pump = Pump(await asyncio.to_thread(lambda: self.session.respond(**user)))
            await self.send({"type": "response.started", "turn": turn})
            while (ev := await pump.next()) is not None:
                await self.send(self.encode(ev, turn))
        except Exception as e:  # noqa: BLE001 - reported to the client; the session stays usable
            await self.send_error(e)
        finally:
            if pump is not None:
                await pump.close()
            self.last_activity = time.monotonic()

    def encode(self, ev, turn: int) -> dict | bytes:
        if isinstance(ev, AudioChunk):
            return P.pcm_to_bytes(ev.pcm)
        if isinstance(ev, TextDelta):
            return {"type": "text.delta", "turn": turn, "text": ev.text}
        if isinstance(ev, Timing):
            return {"type": "timing", "turn": turn, "stage": ev.stage, "seconds": round(ev.seconds, 4)}
        if isinstance(ev, TurnEnd):
            return {"type": "response.done", "turn": turn, "reason": ev.reason, "text": ev.text,
                    "audio_seconds": round(ev.audio_seconds, 3), "tokens": ev.tokens}
        if isinstance(ev, ErrorEvent):
            return P.error(P.LM_UNAVAILABLE if ev.code == "lm_unavailable" else ev.code, ev.message)
        raise TypeError(f"unknown event {ev!r}")

    async def shutdown(self) -> None:
        """Client gone or connection closed: stop the answer, free the session (every path ends here)."""
        self.open = False
        try:
            if self.responder is not None:
                self.session.cancel()
                await asyncio.shield(self.responder)
        finally:
            self.session.close()
