"""Serve the voice chat: WebSocket protocol, OpenAI-compatible API and the browser UI, in one process.

    glm4voice serve [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--max-sessions 4]
    glm4voice serve --lm-only --lm LM_DIR --port 9000            # only /v1/completions (an LM server)
    glm4voice serve --lm-url http://127.0.0.1:9000 --lm LM_DIR   # tokenizer + decoder here, LM there

Open http://127.0.0.1:8000/ for the web UI. The API key may also come from $GLM4VOICE_API_KEY.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from glm4voice.cli.chat import add_model_args, add_sampling_args


def register(parser: argparse.ArgumentParser) -> None:
    from glm4voice.server.config import ServerConfig

    d = ServerConfig()
    parser.add_argument("--host", default=d.host, help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=d.port)
    parser.add_argument("--api-key", default=os.environ.get("GLM4VOICE_API_KEY"),
                        help="require this key (Authorization: Bearer, or ?api_key= for WebSockets)")
    parser.add_argument("--max-sessions", type=int, default=d.max_sessions,
                        help="conversations at once; one more is refused as busy")
    parser.add_argument("--idle-timeout", type=float, default=d.idle_timeout, help="seconds")
    parser.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes, help="one WebSocket message")
    parser.add_argument("--max-request-bytes", type=int, default=d.max_request_bytes, help="one HTTP request body")
    parser.add_argument("--max-audio-seconds", type=float, default=d.max_audio_seconds, help="one user turn")
    parser.add_argument("--model-name", default=d.model_name, help="model id reported by /v1/models")
    parser.add_argument("--lm-only", action="store_true", help="load only the LM and serve /v1/completions")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_model_args(parser)
    add_sampling_args(parser)  # defaults of every new session (clients may change them per session/request)


def run(args) -> int:
    import uvicorn

    from glm4voice.cli.chat import load_chat, settings_from
    from glm4voice.server.app import create_app
    from glm4voice.server.config import ServerConfig

    if args.max_sessions < 1:
        print("glm4voice serve: --max-sessions must be >= 1", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if getattr(args, "thread_choice", None) is not None:
        logging.getLogger("glm4voice.server").info("CPU threads: %s", args.thread_choice.reason)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        logging.getLogger("glm4voice.server").warning(
            "binding %s without --api-key: anyone who can reach this address can use the model", args.host)
    config = ServerConfig(host=args.host, port=args.port, api_key=args.api_key, max_sessions=args.max_sessions,
                          max_message_bytes=args.max_message_bytes, max_request_bytes=args.max_request_bytes,
                          max_audio_seconds=args.max_audio_seconds, idle_timeout=args.idle_timeout,
                          model_name=args.model_name)
    chat = load_chat(args, max_sessions=args.max_sessions, speech=not args.lm_only)
    chat.default_settings = settings_from(args)
    app = create_app(chat, config)
    print(f"glm4voice: serving on http://{args.host}:{args.port}/ "
          f"({'LM only' if args.lm_only else 'voice chat'}, up to {args.max_sessions} sessions)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, ws_max_size=config.ws_frame_limit,
                log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
