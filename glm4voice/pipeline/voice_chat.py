"""``VoiceChat``: the loaded components (speech tokenizer, LM backend, text tokenizer, speech decoder) shared by
every conversation, and the factory of ``Session`` objects.

    chat = VoiceChat.from_pretrained()                 # the embedded model; or model=/tokenizer=/lm=/decoder=
    with chat.session() as s:
        text, pcm, events = s.ask(user_text="What is the capital of France?")

Components are thread-safe to share. Sessions answering at the same time run their LM steps as one batch
(``LocalLM``) and their decoder blocks as one batch when they fall due together (``decoding.DecoderPool``); the
speech tokenizer runs under a lock. Different components overlap.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from glm4voice.errors import CheckpointError, Glm4VoiceError
from glm4voice.pipeline.lm_backend import BusyError
from glm4voice.pipeline.session import ChatSettings, Session

COMPONENTS = ("tokenizer", "lm", "decoder")


class VoiceChat:
    def __init__(self, *, lm, text_tokenizer, tokenizer=None, decoder=None, max_seq: int, max_sessions: int,
                 name: str = "glm-4-voice", device: torch.device | str = "cpu", run_ahead: bool = False):
        self.run_ahead = run_ahead  # the LM generates in its own thread, ahead of the speech decoder
        self.lm, self.text_tokenizer, self.tokenizer, self.decoder = lm, text_tokenizer, tokenizer, decoder
        self.max_seq, self.max_sessions, self.name, self.device = max_seq, max_sessions, name, torch.device(device)
        self.tokenizer_lock = threading.Lock()
        self._decoders = None
        self._sessions: set[Session] = set()
        self._sessions_lock = threading.Lock()
        self._vad = None
        self.default_settings = ChatSettings()
        self.vocab_size = text_tokenizer.vocab_size
        self._stop_ids = text_tokenizer.stop_ids

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, *, model: str | os.PathLike | None = None, tokenizer=None, lm=None, decoder=None,
                        lm_url: str | None = None, lm_api_key: str | None = None, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, max_sessions: int = 4, max_seq: int | None = None,
                        speech: bool = True, flow_steps: int | None = None, run_ahead: bool = False) -> VoiceChat:
        """Load the three components. ``model`` is a folder with ``tokenizer/``, ``lm/`` and ``decoder/`` (or
        ``"official"`` for the THUDM checkpoints); ``tokenizer``/``lm``/``decoder`` override one component;
        nothing given means the embedded model. With ``lm_url`` the LM runs in another server and ``lm`` only
        provides the text tokenizer files. ``speech=False`` loads only the LM (an LM-only server). ``flow_steps``
        overrides the decoder's flow steps (``SpeechDecoder.set_flow_steps``); ``run_ahead`` runs the LM in its own
        thread, ahead of the speech decoder (``lm_backend.RunAhead``)."""
        from glm4voice.checkpoints import resolve

        paths = {c: _component_spec(model, c, given) for c, given in
                 (("tokenizer", tokenizer), ("lm", lm), ("decoder", decoder))}
        lm_dir = resolve(paths["lm"], "lm")
        text_tokenizer, backend, seq = _load_lm(lm_dir, lm_url=lm_url, lm_api_key=lm_api_key, device=device,
                                                dtype=dtype, max_sessions=max_sessions, max_seq=max_seq)
        tok = dec = None
        if speech:
            from glm4voice.decoder import SpeechDecoder
            from glm4voice.tokenizer import SpeechTokenizer

            tok = SpeechTokenizer.from_pretrained(paths["tokenizer"], device=device)  # fp32 (SPEC §7)
            dec = SpeechDecoder.from_pretrained(paths["decoder"], device=device, flow_steps=flow_steps)
        return cls(lm=backend, text_tokenizer=text_tokenizer, tokenizer=tok, decoder=dec, max_seq=seq,
                   max_sessions=max_sessions, device=device, run_ahead=run_ahead)

    # -- sessions --------------------------------------------------------------------------------------------
    def session(self, settings: ChatSettings | None = None) -> Session:
        """A new conversation; raises ``BusyError`` when ``max_sessions`` are open."""
        with self._sessions_lock:
            if len(self._sessions) >= self.max_sessions:
                raise BusyError(f"all {self.max_sessions} sessions are in use; try again later")
            s = Session(self, settings or self.default_settings)
            self._sessions.add(s)
            return s

    def _session_closed(self, s: Session) -> None:
        with self._sessions_lock:
            self._sessions.discard(s)

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    # -- components used by Session --------------------------------------------------------------------------
    def require_tokenizer(self):
        if self.tokenizer is None:
            raise Glm4VoiceError("this instance has no speech tokenizer (LM-only); speech input is unavailable")
        return self.tokenizer

    def require_decoder(self):
        if self.decoder is None:
            raise Glm4VoiceError("this instance has no speech decoder (LM-only); use output 'text'")
        return self.decoder

    def tokenize(self, audio) -> list[int]:
        tok = self.require_tokenizer()
        with self.tokenizer_lock:
            (codes,) = tok.encode([audio], batched=False)
        if not codes:
            raise Glm4VoiceError("the audio is too short to hold speech")
        return codes

    def decoders(self):
        """The shared streaming decoders (blocks of concurrent sessions are decoded in one batch)."""
        if self._decoders is None:
            from glm4voice.pipeline.decoding import DecoderPool

            self._decoders = DecoderPool(self.require_decoder())
        return self._decoders

    def turn_detector(self, silence_ms: float | None = None):
        from glm4voice.pipeline.vad import SileroVAD, TurnDetector, TurnSettings

        if self._vad is None:
            self._vad = SileroVAD.from_package()
        return TurnDetector(self._vad, TurnSettings() if silence_ms is None else TurnSettings(silence_ms=silence_ms))

    def system_prompt(self, *, audio_input: bool, instruction: str = "") -> str:
        """The official system prompt of the first turn's input mode, plus the optional style instruction."""
        from glm4voice.lm.prompt import SYSTEM_PROMPT_AUDIO, SYSTEM_PROMPT_TEXT

        base = SYSTEM_PROMPT_AUDIO if audio_input else SYSTEM_PROMPT_TEXT
        if not instruction.strip():
            return base
        return base + ("" if base.endswith(" ") else " ") + instruction.strip()

    def head(self, system: str) -> list[int]:
        """``[gMASK] <sop> <|system|> BPE("\\n" + system)``: the ids before the first user turn."""
        from glm4voice.lm.prompt import build_turn

        tok = self.text_tokenizer
        full = build_turn(tok, text="x", system=system)
        return full[:full.index(tok.token_id("<|user|>"))]

    def user_turn(self, *, codes=None, text=None) -> list[int]:
        from glm4voice.lm.prompt import user_turn

        return user_turn(self.text_tokenizer, text=None if codes is not None else text,
                         audio=list(codes) if codes is not None else None)

    def route(self, token_id: int) -> tuple[str, int]:
        """("text", id) | ("audio", code) | ("stop", id) | ("other", id): what the pipeline does with a generated
        id. Stop ids end the turn; audio ids go to the decoder; BPE ids are text; any other id (special tokens,
        padding rows) goes to the history only and never reaches the decoder."""
        tok = self.text_tokenizer
        if token_id in self._stop_ids:
            return "stop", token_id
        if tok.is_audio(token_id):
            return "audio", tok.audio_code(token_id)
        if 0 <= token_id < tok.n_ranks:
            return "text", token_id
        return "other", token_id

    def encode_raw(self, text: str) -> list[int]:
        """A raw completion prompt as the official model server tokenizes it: [gMASK] <sop> + the text with its
        special-token strings as ids."""
        tok = self.text_tokenizer
        return tok.prefix_ids + tok.encode(text, allow_special=True)


def _component_spec(model, component: str, given):
    if given is not None:
        return given
    if model is None or str(model) in ("embedded", "official"):
        return model
    path = Path(model).expanduser()
    if path.is_dir():
        return path / component
    raise CheckpointError(f"--model {model!r}: expected a folder holding tokenizer/, lm/ and decoder/, "
                          f"'official' or 'embedded'")


DEFAULT_MAX_SEQ = 8192  # KV-cache positions per session when the config allows more (9B bf16: ~40 KB/token)


def _load_lm(lm_dir: Path, *, lm_url, lm_api_key, device, dtype, max_sessions, max_seq):
    """(text tokenizer, LM backend, context length) from an LM folder, or its tokenizer files + ``lm_url``."""
    from glm4voice.lm.config import GLMConfig
    from glm4voice.lm.text_tokenizer import TextTokenizer
    from glm4voice.pipeline.lm_backend import LocalLM, RemoteLM

    tok = TextTokenizer.from_dir(lm_dir)
    cfg = GLMConfig.from_json(lm_dir)
    seq = min(max_seq or DEFAULT_MAX_SEQ, cfg.seq_length)
    if lm_url:
        remote = RemoteLM(lm_url, api_key=lm_api_key, max_seq=seq, max_sessions=max_sessions)
        remote.max_seq = seq = min(seq, _remote_context(remote) or seq)
        return tok, remote, seq
    from glm4voice.lm.load import load_lm

    model = load_lm(lm_dir, device=device, dtype=dtype)
    backend = LocalLM(model, tok, max_sessions=max_sessions, max_seq=seq)
    return tok, backend, backend.max_seq


def _remote_context(remote) -> int | None:
    """The remote server's context length from /v1/models (``max_model_len``), if it says."""
    import json

    try:
        with remote.request("/models") as resp:
            models = json.loads(resp.read())["data"]
        return min(int(m["max_model_len"]) for m in models if m.get("max_model_len"))
    except (KeyError, ValueError, TypeError, Glm4VoiceError):
        return None
