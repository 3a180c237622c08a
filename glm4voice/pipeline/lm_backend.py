"""Where the language model runs: in this process (``LocalLM``) or behind an OpenAI-compatible HTTP server
(``RemoteLM``, ``--lm-url``). The pipeline sees one small interface:

    stream = backend.open()                      # one per conversation; holds its KV cache slot (local)
    for token_id in stream.generate(prompt_ids, sampling): ...   # generated ids, the stop id included
    stream.keep(history_ids)                     # what the conversation continues from (after barge-in)
    stream.close()                               # frees the slot

``generate`` reuses the cached keys/values of the longest common prefix of ``prompt_ids`` and what the slot
already holds, so a new turn only prefills its own tokens. Closing the iterator early stops generation at once.
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from glm4voice.errors import ContextLengthError, Glm4VoiceError


class BusyError(Glm4VoiceError):
    """Every session slot is in use; try again later (the server answers "busy", never queues)."""


class BackendError(Glm4VoiceError):
    """The LM backend failed (e.g. the remote LM server is unreachable or answered an error)."""


@dataclass(frozen=True)
class Sampling:
    """Decoding options the pipeline passes to a backend."""

    temperature: float = 0.2
    top_p: float = 0.8
    top_k: int = 50
    max_new_tokens: int = 2000
    seed: int | None = None
    language: str | None = None  # language lock of text tokens ("en", "zh"), None: free
    # an answer opens with text: if its first draw is a speech code, draw again among the other ids (local
    # backends; only for prompts that end at an answer start, lm.prompt.at_answer_start)
    text_first: bool = True


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class RunAhead:
    """Iterates ``tokens`` (a backend stream's ``generate``) in a thread of its own, so the LM computes the next ids
    while the caller decodes speech (torch releases the GIL in its kernels; with one intra-op thread each, the LM
    and the decoder each get a core). Yields the same ids in the same order. ``close()`` stops the worker after
    the id it is computing, closes ``tokens`` in the worker's thread and waits for it, so nothing touches the LM
    slot afterwards; an exception of ``tokens`` is raised to the caller at the point it happened."""

    _END = object()

    def __init__(self, tokens: Iterator[int]):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._done = False
        self._worker = threading.Thread(target=self._run, args=(tokens,), name="glm4voice-lm-ahead", daemon=True)
        self._worker.start()

    def _run(self, tokens) -> None:
        try:
            for tok in tokens:
                if self._stop.is_set():
                    break
                self._q.put(tok)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._q.put(e)
        finally:
            try:
                tokens.close()
            finally:
                self._q.put(self._END)

    def __iter__(self) -> RunAhead:
        return self

    def __next__(self) -> int:
        if self._done:
            raise StopIteration
        item = self._q.get()
        if item is self._END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            self.close()
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._done = True
        if self._worker is not threading.current_thread():
            self._worker.join()


# --- remote: an OpenAI-compatible /v1/completions server (another `glm4voice serve`, or vLLM) --------------
class RemoteLM:
    """An LM served elsewhere. Prompts go as token ids to ``POST {url}/v1/completions`` with ``stream: true``;
    the generated ids are read from each chunk's ``choices[0].token_ids`` (glm4voice, vLLM with
    ``return_token_ids``) or from ``logprobs.tokens`` entries ``"token_id:N"`` (vLLM
    ``return_tokens_as_token_ids``). The remote server keeps its own prefix cache."""

    def __init__(self, url: str, *, api_key: str | None = None, model: str | None = None, max_seq: int = 8192,
                 timeout: float = 60.0, max_sessions: int = 64):
        self.url = url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        self.api_key, self.model, self.max_seq, self.timeout = api_key, model, max_seq, timeout
        self._slots = threading.BoundedSemaphore(max_sessions)
        self.max_sessions = max_sessions

    def open(self, hint: list[int] | None = None) -> RemoteStream:
        if not self._slots.acquire(blocking=False):
            raise BusyError(f"all {self.max_sessions} LM sessions are in use")
        return RemoteStream(self)

    def request(self, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310 - the URL is the user's --lm-url
        except urllib.error.HTTPError as e:
            detail = e.read(2000).decode("utf-8", "replace")
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            if e.code == 400 and "context" in detail:
                raise ContextLengthError(f"remote LM: {detail}") from e
            if e.code in (429, 503):
                raise BusyError(f"remote LM is busy: {detail}") from e
            raise BackendError(f"remote LM {self.url}{path} answered HTTP {e.code}: {detail}") from e
        except (urllib.error.URLError, OSError) as e:
            raise BackendError(f"cannot reach the remote LM at {self.url} ({e})") from e


class RemoteStream:
    def __init__(self, backend: RemoteLM):
        self.backend = backend
        self._closed = False

    def generate(self, prompt: list[int], sampling: Sampling) -> Iterator[int]:
        body = {"prompt": list(prompt), "max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "top_k": sampling.top_k, "stream": True, "return_token_ids": True,
                "skip_special_tokens": False}
        if self.backend.model:
            body["model"] = self.backend.model
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.language:
            body["language"] = sampling.language  # glm4voice extension (language lock)
        if not sampling.text_first:
            body["text_first"] = False  # glm4voice extension; a glm4voice server's default is true
        resp = self.backend.request("/completions", body)
        try:
            for raw in resp:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise BackendError(f"remote LM error: {chunk['error'].get('message', chunk['error'])}")
                yield from _chunk_ids(chunk)
        finally:
            resp.close()  # closing the connection stops generation on the server

    def keep(self, ids: list[int]) -> None:
        """Nothing to do: the remote server matches prefixes itself."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.backend._slots.release()


def _chunk_ids(chunk: dict) -> list[int]:
    choice = (chunk.get("choices") or [{}])[0]
    if choice.get("token_ids") is not None:
        return [int(t) for t in choice["token_ids"]]
    tokens = (choice.get("logprobs") or {}).get("tokens")
    if tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
        return [int(t.split(":", 1)[1]) for t in tokens]
    if choice.get("text"):
        raise BackendError("the remote LM streamed text without token ids; it must support return_token_ids "
                           "(glm4voice serve, or vLLM with return_token_ids / return_tokens_as_token_ids)")
    return []


# --- local: the GLM in this process --------------------------------------------------------------------------
class LocalLM:
    """The GLM with a static KV cache of ``max_sessions`` slots (``lm.generate.Generator``).

    Concurrent sessions decode **together**: a stream that needs its next logits posts (slot, last id) and either
    waits for the step in progress or, if none runs, becomes the stepper and runs one ``decode_step`` for every
    posted slot at once (each at its own position), so K sessions cost about one batched step per token instead
    of K. Prefills run one at a time between steps. Sampling stays per stream (its own parameters, seed and
    language mask). A slot keeps the ids whose keys/values it holds after its stream closes, so a later request
    with the same prefix (the next turn sent by a remote pipeline) picks that slot and prefills only new tokens."""

    def __init__(self, model, text_tokenizer, *, max_sessions: int = 4, max_seq: int | None = None):
        from glm4voice.lm.generate import Generator

        self.model, self.tok = model, text_tokenizer
        self.gen = Generator(model, max_batch=max_sessions, max_seq=max_seq)
        self.max_seq, self.max_sessions = self.gen.max_seq, max_sessions
        self.lock = threading.Lock()
        self._turn = threading.Condition(self.lock)  # guards the model: one prefill or one batched step at a time
        self._busy = False
        self._posted: dict[int, int] = {}  # slot -> id waiting for the next step
        self._results: dict[int, object] = {}  # slot -> logits (or the exception of its step)
        self._free = set(range(max_sessions))
        self._last_used = [0.0] * max_sessions
        self._masks: dict[str, object] = {}
        self.stop_ids = frozenset(text_tokenizer.stop_ids)
        self.steps = 0  # decode steps run
        self.batched_rows = 0  # rows decoded in those steps (rows / steps = mean batch)

    def open(self, hint: list[int] | None = None) -> LocalStream:
        """A stream on a free slot: the one whose cached ids share the longest prefix with ``hint``, else the
        least recently used. Raises ``BusyError`` when every slot is taken."""
        import time

        with self.lock:
            if not self._free:
                raise BusyError(f"all {self.max_sessions} LM slots are in use")
            slot = max(self._free, key=lambda s: (common_prefix(self.gen.held[s], hint or []),
                                                  -self._last_used[s]))
            self._free.discard(slot)
            self._last_used[slot] = time.monotonic()
        return LocalStream(self, slot)

    def allowed(self, language: str | None):
        """The language-lock mask (cached per language), or None."""
        if language is None:
            return None
        with self.lock:
            if language not in self._masks:
                from glm4voice.lm.sampling import language_mask

                self._masks[language] = language_mask(self.tok, language, self.model.cfg.padded_vocab_size,
                                                      self.gen.device)
            return self._masks[language]

    def text_first(self):
        """The mask of the ids an answer may start with (every id but the speech codes), cached."""
        with self.lock:
            if "text_first" not in self._masks:
                from glm4voice.lm.sampling import no_audio_mask

                self._masks["text_first"] = no_audio_mask(self.tok, self.model.cfg.padded_vocab_size,
                                                          self.gen.device)
            return self._masks["text_first"]

    def prefill(self, ids: list[int], slot: int):
        with self._turn:
            while self._busy:
                self._turn.wait()
            self._busy = True
        try:
            return self.gen.prefill(ids, slot)
        finally:
            with self._turn:
                self._busy = False
                self._turn.notify_all()

    def decode(self, slot: int, token: int):
        """Logits (vocab,) after appending ``token`` to ``slot``, computed in a batch with the other waiting slots."""
        with self._turn:
            self._posted[slot] = token
            while slot not in self._results:
                if not self._busy:
                    self._busy = True
                    batch, self._posted = self._posted, {}
                    break
                self._turn.wait()
            else:
                return _unwrap(self._results.pop(slot))
        try:
            logits = self.gen.decode_step(list(batch.values()), list(batch))
            out = {s: logits[i] for i, s in enumerate(batch)}
        except BaseException as e:  # every slot of the failed step gets the error
            out = dict.fromkeys(batch, e)
        with self._turn:
            self._busy = False
            self.steps += 1
            self.batched_rows += len(batch)
            self._results.update(out)
            self._turn.notify_all()
            return _unwrap(self._results.pop(slot))

    def _release(self, slot: int) -> None:
        with self.lock:
            self._free.add(slot)


def _unwrap(result):
    if isinstance(result, BaseException):
        raise result
    return result


class LocalStream:
    def __init__(self, backend: LocalLM, slot: int):
        self.backend, self.slot = backend, slot
        self._closed = False
        self.reused = 0  # prompt ids whose cached keys/values the last generate reused

    def generate(self, prompt: list[int], sampling: Sampling) -> Iterator[int]:
        """Generated ids (a stop id included, then nothing more); ends at the limit or a full context."""
        from glm4voice.lm.prompt import at_answer_start
        from glm4voice.lm.sampling import SamplingParams, make_generator, sample_first

        b, slot = self.backend, self.slot
        if len(prompt) >= b.max_seq:
            raise ContextLengthError(f"prompt of {len(prompt)} tokens leaves no room in the context of {b.max_seq}")
        params = SamplingParams(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                                seed=sampling.seed)
        allowed = b.allowed(sampling.language)
        first = b.text_first() if sampling.text_first and at_answer_start(b.tok, prompt) else None
        rng = make_generator(sampling.seed, b.gen.device)
        with b.lock:
            self.reused = min(common_prefix(b.gen.held[slot], prompt), len(prompt) - 1)
        logits = b.prefill(prompt, slot)
        for n in range(sampling.max_new_tokens):
            token = sample_first(logits, params, rng, allowed, first if n == 0 else None)
            yield token
            if token in b.stop_ids or n + 1 == sampling.max_new_tokens or len(b.gen.held[slot]) >= b.max_seq:
                return
            logits = b.decode(slot, token)

    def keep(self, ids: list[int]) -> None:
        """The conversation continues from ``ids``: only the cached prefix they share stays valid."""
        b = self.backend
        with b.lock:
            held = b.gen.held[self.slot]
            b.gen.held[self.slot] = held[:common_prefix(held, ids)]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.backend._release(self.slot)
