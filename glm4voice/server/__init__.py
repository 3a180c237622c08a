"""The server: one process, a thin async shell over the pipeline (WebSocket protocol, OpenAI-compatible API,
web UI). See docs/server.md and docs/protocol.md."""
