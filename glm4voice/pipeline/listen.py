"""Streaming user input: microphone audio in small chunks -> speech codes, with end-of-turn detection.

A ``Listener`` owns the input side of one conversation. Audio is fed as it arrives (any chunk size, 16 kHz
mono float). With voice-activity detection (hands-free mode) the listener keeps a short pre-roll, starts the
streaming speech tokenizer when the detector hears speech, feeds it while the user speaks (the tokenizer runs
each 4 s attention block as soon as it is complete, so that little is left at the end) and returns a
``UserTurn`` with the codes once ``silence_ms`` of silence follows the speech. Without detection (hold to talk)
every sample goes to the tokenizer and ``commit()`` ends the turn.
"""

from __future__ import annotations

import time

import torch

from glm4voice.constants import TOKENIZER_SAMPLE_RATE
from glm4voice.errors import AudioError
from glm4voice.pipeline.events import SpeechStarted, UserTurn
from glm4voice.pipeline.vad import SpeechEnd, SpeechStart, TurnDetector, _mono_16k

RECENT_EXTRA_SAMPLES = 5 * TOKENIZER_SAMPLE_RATE  # pre-speech audio kept beyond the pre-roll (the detector
# confirms speech min_speech_ms after it began, possibly chunks later)


class Listener:
    """Streaming speech input of one conversation. Not thread-safe: one feeder at a time."""

    def __init__(self, tokenizer, detector: TurnDetector | None, *, max_seconds: float = 120.0,
                 tokenizer_lock=None):
        self.tokenizer = tokenizer
        self.detector = detector
        self.max_samples = int(max_seconds * TOKENIZER_SAMPLE_RATE)
        self._lock = tokenizer_lock
        self.clear()

    def clear(self) -> None:
        """Drop everything heard so far (the tokenizer and detector states are freed)."""
        self._turn = self.detector.init_state() if self.detector else None
        self._tok = None  # tokenizer stream state while a turn is being heard
        self._samples = 0  # samples given to the tokenizer in this turn
        self._codes: list[int] = []  # codes of this turn's closed 30 s chunks
        self._seen = 0  # samples fed since the stream (re)started
        self._recent = torch.zeros(0)  # the latest samples not given to the tokenizer, ending at self._seen
        self._preroll = int(self.detector.settings.preroll_ms * TOKENIZER_SAMPLE_RATE / 1000) if self.detector else 0

    @property
    def hearing(self) -> bool:
        """A user turn is in progress (speech detected, or audio received in hold-to-talk mode)."""
        return self._tok is not None

    def feed(self, pcm) -> list[SpeechStarted | UserTurn]:
        """Add 16 kHz mono samples; returns the events they complete (in hold-to-talk mode: none)."""
        x = _mono_16k(pcm)
        if self.detector is None:
            self._tokenize(x)
            return []
        events: list[SpeechStarted | UserTurn] = []
        first = self._seen  # stream index of x[0]
        vad_events, self._turn = self.detector.step(x, self._turn)
        done = 0  # samples of x already routed (to the recent buffer or the tokenizer)
        for ev in vad_events:
            at = round(ev.seconds * TOKENIZER_SAMPLE_RATE)  # stream index of the event
            cut = min(x.numel(), max(done, at - first))
            if isinstance(ev, SpeechStart):
                self._remember(x[done:cut])
                keep = max(0, at - self._preroll - (first + cut - self._recent.numel()))
                events.append(SpeechStarted(ev.seconds))
                self._tokenize(self._recent[keep:])
                self._recent = torch.zeros(0)
            elif isinstance(ev, SpeechEnd) and self.hearing:
                self._tokenize(x[done:cut])
                events.append(self.commit())
            done = cut
        if self.hearing:
            self._tokenize(x[done:])
        else:
            self._remember(x[done:])
        self._seen = first + x.numel()
        return events

    def commit(self) -> UserTurn:
        """End the user's turn now; returns its codes (raises AudioError if nothing was heard)."""
        if self._tok is None:
            raise AudioError("no speech to commit: send audio before ending the turn")
        t = time.perf_counter()
        codes = self._codes + self._locked(self.tokenizer.finish, self._tok)
        seconds = self._samples / TOKENIZER_SAMPLE_RATE
        self._tok, self._samples, self._codes = None, 0, []
        if not codes:
            raise AudioError(f"the audio of this turn ({seconds:.2f} s) is too short to hold speech")
        return UserTurn(tuple(codes), seconds, time.perf_counter() - t, time.perf_counter())

    # -- internals -------------------------------------------------------------------------------------------
    def _tokenize(self, x: torch.Tensor) -> None:
        if not x.numel():
            return
        if self._tok is None:
            self._tok = self.tokenizer.init_state()
        if self._samples + x.numel() > self.max_samples:
            self.clear()
            raise AudioError(f"user turn longer than {self.max_samples / TOKENIZER_SAMPLE_RATE:.0f} s; dropped")
        self._samples += x.numel()
        codes, self._tok = self._locked(self.tokenizer.step, x, self._tok)  # codes of closed 30 s chunks
        self._codes += codes

    def _locked(self, fn, *args):
        if self._lock is None:
            return fn(*args)
        with self._lock:
            return fn(*args)

    def _remember(self, x: torch.Tensor) -> None:
        """Keep the latest pre-speech samples for the pre-roll."""
        cap = self._preroll + RECENT_EXTRA_SAMPLES
        self._recent = torch.cat([self._recent, x])[-cap:]
