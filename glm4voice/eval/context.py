"""What every suite shares: the system under test, the data, the judge, options; everything loaded lazily, once.

Replies are cached per (item, input mode, output mode), so ``glm4voice eval all`` asks each question once even
though several suites look at the answer (spoken QA, style, quality, judge score).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from glm4voice.eval.data import EvalItem, EvalSet, load_eval_set
from glm4voice.eval.system import Generation, ModelSpec, PipelineResponder, Reply, Responder, load_audio16k

log = logging.getLogger("glm4voice.eval")


@dataclass
class Context:
    spec: ModelSpec = field(default_factory=ModelSpec)
    data: str | None = None  # None: the built-in held-out set
    out: Path = Path("eval-results")
    device: str = "cpu"
    dtype: str = "float32"
    limit: int | None = None  # items per suite (spread over kinds)
    per_kind: int = 6  # built-in set: items per (kind, language, style)
    seed: int = 0
    split: str = "heldout"  # of a corpus
    judge_name: str = "auto"
    cache_dir: Path | None = None  # joined judge weights and the built-in set (default ~/.cache/glm4voice)
    audio_is_output: bool = False  # the data's audio are answers to score (any system), not questions to ask
    text_only: bool = False  # spoken_qa judges the text answers only (S->T): no speech decoding, no ASR judge
    generation: Generation = field(default_factory=Generation)
    latency_runs: int = 5
    judge_url: str | None = None
    judge_model: str | None = None
    judge_api_key: str | None = None
    # injected or loaded on first use
    dataset: EvalSet | None = None  # the items to use instead of loading ``data``
    responder: Responder | None = None
    judge: object | None = None
    _sets: dict = field(default_factory=dict)
    _replies: dict = field(default_factory=dict)
    _components: dict = field(default_factory=dict)

    # -- lazily loaded pieces --------------------------------------------------------------------------------
    def cache(self) -> Path:
        from glm4voice.eval.judge import default_cache_dir

        return Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()

    def torch_dtype(self):
        import torch

        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]

    def eval_set(self, *, speak: bool = True) -> EvalSet:
        if self.dataset is not None:
            return self.dataset
        key = speak or self.data is not None
        if key not in self._sets:
            self._sets[key] = load_eval_set(self.data, cache_dir=self.cache() / "eval-sets", split=self.split,
                                            per_kind=self.per_kind, seed=self.seed, speak=speak)
            log.info("data: %s, %d items", self._sets[key].name, len(self._sets[key].items))
        return self._sets[key]

    def get_judge(self):
        if self.judge is None:
            from glm4voice.eval.judge import load_judge

            self.judge = load_judge(self.judge_name, cache_dir=self.cache())
            log.info("ASR judge: %s", self.judge.name)
        return self.judge

    def get_responder(self) -> Responder:
        if self.responder is None:
            self.responder = PipelineResponder.load(self.spec, device=self.device, dtype=self.torch_dtype(),
                                                    generation=self.generation)
        return self.responder

    def tokenizer(self):
        if "tokenizer" not in self._components:
            from glm4voice.tokenizer.speech_tokenizer import SpeechTokenizer

            self._components["tokenizer"] = SpeechTokenizer.from_pretrained(
                self.spec.tokenizer, device=self.device, dtype=self.torch_dtype())
        return self._components["tokenizer"]

    def decoder(self):
        if "decoder" not in self._components:
            from glm4voice.decoder import SpeechDecoder

            self._components["decoder"] = SpeechDecoder.from_pretrained(
                self.spec.decoder, device=self.device, dtype=self.torch_dtype())
        return self._components["decoder"]

    # -- asking ----------------------------------------------------------------------------------------------
    def ask(self, item: EvalItem, *, spoken: bool, audio_out: bool, text: str | None = None,
            instruction: str = "") -> Reply:
        """The system's reply to ``item`` (its audio if ``spoken``, else ``text`` or its text), cached."""
        key = (item.id, spoken, audio_out, text, instruction)
        if key not in self._replies:
            responder = self.get_responder()
            if spoken:
                reply = responder.reply(audio=load_audio16k(item.audio), audio_out=audio_out,
                                        instruction=instruction)
            else:
                reply = responder.reply(text=text or item.text, audio_out=audio_out, instruction=instruction)
            self._replies[key] = reply
        return self._replies[key]
