"""One conversation: history as token ids, the LM cache slot, the input listener, and ``respond()``.

    with chat.session() as s:
        for ev in s.respond(user_audio="question.wav"): ...   # TextDelta, AudioChunk, Timing, TurnEnd
        for ev in s.respond(user_text="and in French?"): ...   # the history carries over (cache reused)

``respond`` is a generator: the caller pulls events at its own pace. A turn ends when the LM emits a stop id
or the token limit, or early by ``cancel()`` (barge-in, from any thread) or by closing the generator. After a
cancel the history keeps only what was actually spoken: the generated ids up to the last audio code whose
audio was delivered (or, with ``played_seconds``, heard), so the next turn continues from what the user heard.
Every exit path drops the decoder state and leaves the LM slot consistent with the history; ``close()``
releases the slot.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from glm4voice.constants import DECODER_SAMPLE_RATE, TOKEN_RATE_HZ
from glm4voice.errors import AudioError, ContextLengthError, Glm4VoiceError
from glm4voice.pipeline.events import AudioChunk, ErrorEvent, Event, TextDelta, Timing, TurnEnd, UserTurn
from glm4voice.pipeline.lm_backend import BackendError, RunAhead, Sampling

OUTPUTS = ("audio", "text")
LANGUAGES = (None, "en", "zh")
DECODER_MODES = ("low_latency", "official")


@dataclass(frozen=True)
class ChatSettings:
    """Per-conversation options. Sampling defaults are the official web demo's (SPEC §2.7)."""

    temperature: float = 0.2
    top_p: float = 0.8
    top_k: int = 50  # transformers' default top-k, active in the official generate (SPEC §2.7)
    max_new_tokens: int = 2000
    seed: int | None = None
    language: str | None = None  # lock the answer's text to "en" or "zh"; None: free
    instruction: str = ""  # extra style instruction, e.g. "Speak slowly."
    output: str = "audio"  # "audio": speech + text; "text": text only (no speech decoding)
    decoder_mode: str = "low_latency"  # "official" reproduces the web demo's block schedule
    text_first: bool = True  # an answer's first id is text (Sampling.text_first; docs/lm.md)

    def __post_init__(self):
        problems = []
        if not (isinstance(self.temperature, (int, float)) and 0.0 <= self.temperature <= 5.0):
            problems.append(f"temperature must be in [0, 5], got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            problems.append(f"top_k must be an integer >= 0 (0: off), got {self.top_k!r}")
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            problems.append(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            problems.append(f"seed must be an integer or null, got {self.seed!r}")
        if self.language not in LANGUAGES:
            problems.append(f"language must be one of {LANGUAGES}, got {self.language!r}")
        if not isinstance(self.instruction, str) or len(self.instruction) > 500:
            problems.append("instruction must be a string of at most 500 characters")
        if self.output not in OUTPUTS:
            problems.append(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if not isinstance(self.text_first, bool):
            problems.append(f"text_first must be true or false, got {self.text_first!r}")
        if self.decoder_mode not in DECODER_MODES:
            problems.append(f"decoder_mode must be one of {DECODER_MODES}, got {self.decoder_mode!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def updated(self, changes: dict) -> ChatSettings:
        """A copy with ``changes`` applied; unknown names or bad values raise ValueError naming them."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        changes = dict(changes)
        if changes.get("language") == "":
            changes["language"] = None
        return replace(self, **changes)

    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.top_k, self.max_new_tokens, self.seed, self.language,
                        self.text_first)


SAMPLES_PER_CODE = DECODER_SAMPLE_RATE / TOKEN_RATE_HZ  # 1764 output samples per speech code (80 ms)


class Session:
    """The state of one conversation. Create with ``VoiceChat.session()``; use as a context manager."""

    def __init__(self, chat, settings: ChatSettings | None = None):
        self.chat = chat
        self.settings = settings or ChatSettings()
        self.history: list[int] = []  # token ids of the whole conversation so far
        self.turns = 0
        self.last_answer: list[int] = []  # ids the last answer added to the history
        self.last_prompt_tokens = 0
        self._system, self._head_len, self._audio_mode = "", 0, False  # the system prompt in the history
        self._pending_head = ("", 0, False)
        self._lm = chat.lm.open()  # raises BusyError when every slot is taken
        self._cancel = threading.Event()
        self._played: float | None = None
        self._listener = None
        self.closed = False
        self.responding = False

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Free everything this conversation holds (LM slot, input stream). Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self._cancel.set()
        self._listener = None
        self._lm.close()
        self.chat._session_closed(self)

    def reset(self) -> None:
        """Forget the conversation (the next turn starts with the system prompt again)."""
        self.history = []
        self.turns = 0
        self._lm.keep([])
        if self._listener is not None:
            self._listener.clear()

    def cancel(self, played_seconds: float | None = None) -> None:
        """Stop the current answer at once (barge-in). ``played_seconds``: how much of the answer's audio the
        user actually heard; the history keeps the answer up to that point. Thread-safe."""
        self._played = played_seconds
        self._cancel.set()

    # -- streaming input -------------------------------------------------------------------------------------
    def listener(self, *, vad: bool = True, silence_ms: float | None = None):
        """The streaming-input side (created on first use, recreated when the mode changes)."""
        from glm4voice.pipeline.listen import Listener

        key = (vad, silence_ms)
        if self._listener is None or self._listener_key != key:
            self._listener = Listener(self.chat.require_tokenizer(), self.chat.turn_detector(silence_ms) if vad
                                      else None, tokenizer_lock=self.chat.tokenizer_lock)
            self._listener_key = key
        return self._listener

    # -- answering -------------------------------------------------------------------------------------------
    def respond(self, *, user_audio=None, user_text: str | None = None, user_turn: UserTurn | None = None,
                settings: ChatSettings | None = None) -> Iterator[Event]:
        """Answer one user turn: audio (path, bytes or 16 kHz samples), text, or a ``UserTurn`` from the
        listener. Yields events; bad input raises ``Glm4VoiceError`` (or ValueError) before anything is
        generated, leaving the conversation unchanged."""
        if self.closed:
            raise Glm4VoiceError("this session is closed")
        if self.responding:
            raise Glm4VoiceError("an answer is still running in this session; cancel() it or read it to the end")
        if (user_audio is not None) + (user_text is not None) + (user_turn is not None) != 1:
            raise ValueError("give exactly one of user_audio, user_text, user_turn")
        settings = settings or self.settings
        t_start = user_turn.ended_at if user_turn is not None else time.perf_counter()
        timings: list[Timing] = []
        codes = None
        if user_audio is not None:
            t = time.perf_counter()
            codes = self.chat.tokenize(user_audio)
            timings.append(Timing("tokenize", time.perf_counter() - t))
        elif user_turn is not None:
            codes = list(user_turn.codes)
            timings.append(Timing("tokenize", user_turn.tokenize_seconds))
        elif not user_text.strip():
            raise ValueError("user_text is empty")
        prompt = self._prompt(codes, user_text, settings)
        budget = self.chat.max_seq - len(prompt)
        if budget < 1:
            raise ContextLengthError(
                f"the conversation ({len(prompt)} tokens with this turn) fills the model's context of "
                f"{self.chat.max_seq} tokens; start a new conversation (reset)")
        settings = replace(settings, max_new_tokens=min(settings.max_new_tokens, budget))
        self._cancel.clear()
        self._played = None
        self.last_prompt_tokens = len(prompt)
        return self._answer(prompt, settings, t_start, timings)

    def _prompt(self, codes, text, settings: ChatSettings) -> list[int]:
        """History (with the system prompt the settings ask for) + this user turn. The system prompt follows the
        first turn's input mode, as the official demo's does, plus the style instruction; changing the
        instruction mid-conversation swaps the system prompt in place (the turns after it are kept)."""
        chat = self.chat
        audio_mode = self._audio_mode if self.history else codes is not None
        system = chat.system_prompt(audio_input=audio_mode, instruction=settings.instruction)
        if not self.history:
            base = chat.head(system)
        elif system != self._system:
            base = chat.head(system) + self.history[self._head_len:]
        else:
            base = self.history
        self._pending_head = (system, len(chat.head(system)), audio_mode)
        return base + chat.user_turn(codes=codes, text=text)

    def add_user_turn(self, *, audio=None, text: str | None = None, settings: ChatSettings | None = None) -> None:
        """Put an earlier user turn into the history without answering it (conversation replay, e.g. the
        OpenAI API's message list); follow it with ``add_answer``."""
        codes = self.chat.tokenize(audio) if audio is not None else None
        if codes is None and not (text or "").strip():
            raise ValueError("a user turn needs audio or text")
        self._set_history(self._prompt(codes, None if codes is not None else text, settings or self.settings))

    def add_answer(self, ids: list[int]) -> None:
        """Append an earlier answer's ids (text and audio tokens; a trailing stop id is dropped)."""
        ids = list(ids)
        while ids and self.chat.route(ids[-1])[0] == "stop":
            ids.pop()
        self._set_history(self.history + ids)

    def _set_history(self, ids: list[int]) -> None:
        self.history = ids
        self._system, self._head_len, self._audio_mode = self._pending_head
        self._lm.keep(ids)

    def _answer(self, prompt: list[int], settings: ChatSettings, t_start: float, timings: list[Timing]):
        chat = self.chat
        audio_out = settings.output == "audio"
        mode = settings.decoder_mode
        dec_state = chat.decoders().init_state(mode) if audio_out else None
        gen: list[int] = []  # generated ids except the stop id
        text = chat.text_tokenizer.stream_decoder()
        audio_codes: list[int] = []
        audio_pos: list[int] = []  # index in gen of each audio code
        shown = ""
        samples_out = 0
        reason = "max_tokens"
        stats = {"lm": 0.0, "dec": 0.0, "first_audio": False, "first_text": False}
        self.responding = True
        tokens = self._lm.generate(prompt, settings.sampling())
        if audio_out and chat.run_ahead:
            tokens = RunAhead(tokens)  # the LM computes the next ids while this thread decodes speech
        try:
            yield from timings
            t_lm = time.perf_counter()
            first = True
            while True:
                if self._cancel.is_set():
                    reason = "cancelled"
                    break
                t = time.perf_counter()
                try:
                    tok = next(tokens)
                except StopIteration:
                    break
                dt = time.perf_counter() - t
                if first:
                    first = False
                    yield Timing("lm_prefill", time.perf_counter() - t_lm)
                else:
                    stats["lm"] += dt
                kind, value = chat.route(tok)
                if kind == "stop":
                    reason = "stop_token"
                    break
                gen.append(tok)
                if kind == "text":
                    delta = text.push(tok)  # "" while a UTF-8 character is incomplete
                    if delta:
                        shown += delta
                        if not stats["first_text"]:
                            stats["first_text"] = True
                            yield Timing("time_to_first_text", time.perf_counter() - t_start)
                        yield TextDelta(delta)
                elif kind == "audio":
                    audio_codes.append(value)
                    audio_pos.append(len(gen) - 1)
                    if audio_out:
                        t = time.perf_counter()
                        pcm, dec_state = chat.decoders().step(mode, [value], dec_state)
                        if pcm.numel():
                            samples_out += pcm.numel()  # counted as delivered once handed to the caller
                            yield from self._audio_events(pcm, time.perf_counter() - t, stats, t_start)
                        if chat.decoders().owes_audio(dec_state):  # the first block's rest: now, not a code later
                            t = time.perf_counter()
                            pcm, dec_state = chat.decoders().step(mode, [], dec_state)
                            samples_out += pcm.numel()
                            yield from self._audio_events(pcm, time.perf_counter() - t, stats, t_start)
            if audio_out and reason != "cancelled":
                t = time.perf_counter()
                pcm = chat.decoders().finish(mode, dec_state)
                if pcm.numel():
                    samples_out += pcm.numel()
                    yield from self._audio_events(pcm, time.perf_counter() - t, stats, t_start)
            delta = text.flush()
            if delta:
                shown += delta
                yield TextDelta(delta)
        except GeneratorExit:
            reason = "cancelled"
            raise
        except Glm4VoiceError as e:
            reason = "error"
            yield ErrorEvent(str(e), "lm_unavailable" if isinstance(e, BackendError) else "internal")
        finally:
            tokens.close()
            dec_state = None  # the decoder stream state dies with the turn, on every path
            kept_ids, kept_codes = self._commit(prompt, gen, audio_pos, samples_out, reason, audio_out)
            self.responding = False
        if reason == "cancelled":  # report what the history kept: the spoken part
            shown = chat.text_tokenizer.decode([t for t in gen[:kept_ids] if chat.route(t)[0] == "text"])
            samples_out = min(samples_out, int(kept_codes * SAMPLES_PER_CODE))
        yield Timing("total", time.perf_counter() - t_start)
        yield TurnEnd(reason, shown, tuple(audio_codes[:kept_codes]), samples_out / DECODER_SAMPLE_RATE,
                      len(gen) + (reason == "stop_token"))

    def _audio_events(self, pcm: torch.Tensor, decode_seconds: float, stats: dict, t_start: float):
        if not stats["first_audio"]:
            stats["first_audio"] = True
            yield Timing("lm_first_audio_block", stats["lm"])
            yield Timing("speech_decode", decode_seconds)
            yield Timing("time_to_first_audio", time.perf_counter() - t_start)
        yield AudioChunk(pcm.detach().float().cpu().numpy().astype(np.float32, copy=False), DECODER_SAMPLE_RATE)

    def _commit(self, prompt: list[int], gen: list[int], audio_pos: list[int], samples_out: int, reason: str,
                audio_out: bool) -> tuple[int, int]:
        """Append the answer (or, after a cancel, its spoken part) to the history; returns (ids kept, codes
        kept)."""
        keep_ids, keep_codes = len(gen), len(audio_pos)
        if reason == "cancelled" and audio_out:
            spoken = int(samples_out // SAMPLES_PER_CODE)
            if self._played is not None:
                spoken = min(spoken, int(math.floor(max(0.0, self._played) * TOKEN_RATE_HZ)))
            keep_codes = min(spoken, len(audio_pos))
            keep_ids = audio_pos[keep_codes - 1] + 1 if keep_codes else 0
        self._set_history(prompt + gen[:keep_ids])
        self.last_answer = gen[:keep_ids]
        self.turns += 1
        return keep_ids, keep_codes

    # -- convenience -----------------------------------------------------------------------------------------
    def ask(self, **kwargs) -> tuple[str, np.ndarray, list[Event]]:
        """Run ``respond`` to the end: (text, audio float32 at 22,050 Hz, all events)."""
        events = list(self.respond(**kwargs))
        text = "".join(e.text for e in events if isinstance(e, TextDelta))
        pcm = [e.pcm for e in events if isinstance(e, AudioChunk)]
        for e in events:
            if isinstance(e, ErrorEvent):
                raise AudioError(e.message) if e.code == "audio" else Glm4VoiceError(e.message)
        return text, (np.concatenate(pcm) if pcm else np.zeros(0, np.float32)), events
