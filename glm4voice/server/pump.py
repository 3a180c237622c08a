"""Driving a blocking event iterator from async code, one event per worker-thread call.

The iterator's ``next`` and ``close`` are serialised by a lock: when the async side is cancelled while a worker
thread is still computing the next event, ``close`` waits for that step to finish instead of failing with
"generator already executing", so the session's cleanup always runs.
"""

from __future__ import annotations

import threading

import anyio


class Pump:
    def __init__(self, events):
        self._events = events
        self._lock = threading.Lock()

    def _next(self):
        with self._lock:
            return next(self._events, None)

    def _close(self):
        with self._lock:
            self._events.close()

    async def next(self):
        """The next event, or None at the end."""
        return await anyio.to_thread.run_sync(self._next)

    async def close(self) -> None:
        """Close the iterator (runs its cleanup); shielded so that it completes even in a cancelled task."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close)
