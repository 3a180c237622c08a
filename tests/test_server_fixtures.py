"""A live glm4voice server for the server and browser tests: uvicorn in a background thread on a free port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np


@contextlib.contextmanager
def live_server(chat, config):
    """Yield the base URL ("http://127.0.0.1:PORT") of ``create_app(chat, config)`` served by uvicorn."""
    import uvicorn

    from glm4voice.server.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(chat, config), log_level="warning",
                                           ws_max_size=config.ws_frame_limit, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pcm16(x) -> bytes:
    return (np.clip(np.asarray(x, dtype=np.float32), -1, 1) * 32767).astype("<i2").tobytes()
