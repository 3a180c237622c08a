"""Server limits and policy (no web framework imported here, so the CLI can read the defaults cheaply)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback only unless asked otherwise
    port: int = 8000
    api_key: str | None = None  # when set, every API call and WebSocket needs it
    max_sessions: int = 4  # conversations generating or connected at once
    max_message_bytes: int = 1 << 20  # one WebSocket message (1 MiB: ~30 s of 16 kHz PCM, or an encoded clip)
    max_request_bytes: int = 25 << 20  # one HTTP request body (OpenAI's own audio upload limit is 25 MB)
    max_audio_seconds: float = 120.0  # one user turn
    idle_timeout: float = 300.0  # seconds without a client message (and no answer running) before closing
    model_name: str = "glm-4-voice"

    @property
    def ws_frame_limit(self) -> int:
        """uvicorn's hard WebSocket frame limit: above our own limit so that too-large messages get a protocol
        error instead of a dropped connection (messages beyond this are refused by the WebSocket layer, 1009)."""
        return 4 * self.max_message_bytes + (1 << 16)
