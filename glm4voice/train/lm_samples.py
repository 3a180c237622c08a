"""LM training samples in the official token format, a mixture sampler, and packing into fixed-length rows.

Every builder returns a ``Sample``: ``ids`` (token ids) and ``mask`` (``mask[i]`` is True when ``ids[i]`` is a
prediction target, i.e. the loss is ``CE(logits[i - 1], ids[i])`` summed over the True positions). Formats:

* SFT dialogue (SPEC §2.6, the prompt of ``web_demo.py``, built by ``glm4voice.lm.prompt.build_turn``), audio
  question::

      [gMASK] <sop> <|system|> BPE("\\n" + SYSTEM_AUDIO) <|user|> BPE("\\n") <|begin_of_audio|> q-audio
      <|end_of_audio|> <|assistant|> BPE("streaming_transcription\\n") ANSWER <|user|>

  text question: ``<|user|> BPE("\\n" + question)`` and the text-input system prompt. ANSWER is "streaming
  thoughts": 13 answer text tokens, 26 answer audio tokens, repeated; when the text runs out its last (<= 13) tokens
  are followed by all remaining audio (``interleave_answer``). The answer ends with ``<|user|>``, the token the
  official server stops on. As in the paper (GLM-4-Voice §3.3), each dialogue is trained as two copies with the same
  ids: a *text-loss* copy (loss on the answer's text tokens) and a *speech-loss* copy (loss on its audio tokens and the
  closing ``<|user|>``, which follows the audio).
* Pre-training documents ``[gMASK] <sop> BODY <|endoftext|>`` with the loss on BODY and the closing token:
  text-only (BPE of the text); speech-only (``<|begin_of_audio|> codes <|end_of_audio|>``); interleaved (text
  segments and ``<|begin_of_audio|> codes <|end_of_audio|>`` segments in reading order); ASR (``BPE(ASR_PROMPT)``,
  the audio, then the transcript; loss on the transcript only) and TTS (``BPE(TTS_PROMPT + text)`` then the audio;
  loss on the audio only). The short task prompts keep "audio then its transcript" apart from "text then the speech
  that continues it" (interleaved).

With ``Mixture(ctc_encode=...)`` (``train lm --ctc-weight``) a sample with input speech also carries ``ctc`` spans:
the positions of each input utterance's codes and closing ``<|end_of_audio|>`` and its transcript as word pieces,
for the training-only CTC head of ``lm_ctc``; packing moves them to row positions (``PackedBatch.ctc``).

A ``Mixture`` draws documents by configurable ratios; ``pack_batch`` fills rows of a fixed length with whole
draws (a draw that does not fit closes the row with padding; one longer than a whole row is cut). Rows
are a pure function of (seed, step, global row index), so a resumed run sees the same batches and N processes with
batch b each see exactly the rows of one process with batch N*b.

``tok`` arguments are a ``glm4voice.lm.TextTokenizer`` (only ``encode``, ``token_id`` and ``decode`` are used).
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from glm4voice.constants import (
    AUDIO_TOKEN_FORMAT,
    AUDIO_TOKENS_PER_BLOCK,
    BEGIN_OF_AUDIO,
    END_OF_AUDIO,
    TEXT_TOKENS_PER_BLOCK,
)
from glm4voice.errors import ConfigError, TokenError
from glm4voice.lm.prompt import build_turn
from glm4voice.train.texts import AUGMENT_SETS, rephrase

# Our pre-training task prompts (the official pre-training formats are not released, SPEC §5).
ASR_PROMPT = "Transcribe the speech:"
TTS_PROMPT = "Speak the text: "

PRETRAIN_KINDS = ("text", "speech", "asr", "tts", "interleaved")
# audio question, text question, style-request dialogues (audio question), conversations of MULTI_TURNS audio turns
SFT_KINDS = ("sft", "sft_text", "style", "multi")
MULTI_TURNS = (2, 3)
KINDS = PRETRAIN_KINDS + SFT_KINDS
DEFAULT_MIX = {
    "pretrain": {"text": 0.2, "speech": 0.1, "asr": 0.2, "tts": 0.2, "interleaved": 0.3},
    "sft": {"sft": 0.5, "sft_text": 0.15, "style": 0.15, "multi": 0.1, "asr": 0.05, "tts": 0.05},
}
SFT_LOSS = ("split", "joint")  # split: the paper's text-loss + speech-loss copies; joint: one copy, both losses


@dataclass(frozen=True)
class Specials:
    """Ids of the special tokens the formats use, looked up by name (as the official code does)."""

    gmask: int
    sop: int
    system: int
    user: int
    assistant: int
    eot: int
    boa: int
    eoa: int
    audio_offset: int  # id of <|audio_0|>; audio ids are contiguous
    codebook_size: int  # number of <|audio_N|> tokens

    @classmethod
    def from_tokenizer(cls, tok, codebook_size: int | None = None) -> Specials:
        """``codebook_size`` defaults to the tokenizer's number of ``<|audio_N|>`` tokens."""
        t = tok.token_id
        n = tok.codebook_size if codebook_size is None else codebook_size
        if n <= 0:
            raise ConfigError(f"the text tokenizer has no {AUDIO_TOKEN_FORMAT.format(0)} token")
        return cls(t("[gMASK]"), t("<sop>"), t("<|system|>"), t("<|user|>"), t("<|assistant|>"), t("<|endoftext|>"),
                   t(BEGIN_OF_AUDIO), t(END_OF_AUDIO), t(AUDIO_TOKEN_FORMAT.format(0)), n)

    def audio_ids(self, codes: Sequence[int] | np.ndarray) -> list[int]:
        a = np.asarray(codes, dtype=np.int64).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= self.codebook_size):
            bad = int(a[(a < 0) | (a >= self.codebook_size)][0])
            raise TokenError(f"speech code {bad} outside the codebook 0..{self.codebook_size - 1}")
        return (a + self.audio_offset).tolist()

    def is_audio(self, ids):
        """Elementwise: is the id an audio token (numpy array or torch tensor)."""
        return (ids >= self.audio_offset) & (ids < self.audio_offset + self.codebook_size)


@dataclass(frozen=True)
class Sample:
    ids: list[int]
    mask: list[bool]  # mask[i]: ids[i] is a loss target
    kind: str = ""
    ctc: tuple = ()  # lm_ctc.Span per input utterance with a transcript (the training-only CTC objective)

    def __post_init__(self):
        if len(self.ids) != len(self.mask):
            raise ValueError(f"{len(self.ids)} ids but {len(self.mask)} mask entries")

    def __len__(self) -> int:
        return len(self.ids)


class _Builder:
    """Appends spans with a loss flag; keeps ids and mask in step."""

    def __init__(self):
        self.ids: list[int] = []
        self.mask: list[bool] = []

    def add(self, ids: Sequence[int], loss: bool | Sequence[bool] = False) -> _Builder:
        self.ids.extend(ids)
        self.mask.extend([loss] * len(ids) if isinstance(loss, bool) else loss)
        return self

    def sample(self, kind: str) -> Sample:
        return Sample(self.ids, self.mask, kind)


# ---- streaming thoughts ----------------------------------------------------------------------------------------

def interleave_answer(text_ids: Sequence[int], audio_ids: Sequence[int], *, text_block: int = TEXT_TOKENS_PER_BLOCK,
                      audio_block: int = AUDIO_TOKENS_PER_BLOCK) -> tuple[list[int], list[bool]]:
    """Streaming-thoughts order: ``text_block`` text ids, ``audio_block`` audio ids, repeated while text remains;
    after the last text block all remaining audio. Returns (ids, is_text)."""
    ids: list[int] = []
    is_text: list[bool] = []
    t = a = 0
    while t < len(text_ids):
        chunk = text_ids[t:t + text_block]
        t += len(chunk)
        ids += chunk
        is_text += [True] * len(chunk)
        if t >= len(text_ids):
            break
        chunk = audio_ids[a:a + audio_block]
        a += len(chunk)
        ids += chunk
        is_text += [False] * len(chunk)
    ids += audio_ids[a:]
    is_text += [False] * (len(audio_ids) - a)
    return ids, is_text


def dialogue_prompt(tok, sp: Specials, question: str | Sequence[int] | np.ndarray,
                    history: Sequence[int] | None = None) -> list[int]:
    """Prompt ids (``history`` + a user turn) from the inference prompt builder (``glm4voice.lm.prompt``, SPEC §2.6):
    a ``str`` question is text input, anything else speech codes."""
    if isinstance(question, str):
        return build_turn(tok, text=question, history=history or None)
    sp.audio_ids(question)  # the codebook check, with this module's message
    return build_turn(tok, audio=[int(c) for c in question], history=history or None)


Turn = tuple["str | Sequence[int] | np.ndarray", str, "Sequence[int] | np.ndarray"]  # question, answer text, codes


def conversation_samples(tok, sp: Specials, turns: Sequence[Turn], *, loss: str = "split",
                         kind: str = "sft") -> list[Sample]:
    """A conversation of one or more turns as training samples: [text-loss copy, speech-loss copy] (``split``) or
    one copy with both losses (``joint``). Every answer is trained; each later turn's prompt is what the inference
    prompt builder makes from the history (``build_turn(history=...)``, SPEC §2.6)."""
    if loss not in SFT_LOSS:
        raise ConfigError(f"sft loss must be one of {SFT_LOSS}, not {loss!r}")
    ids: list[int] = []
    text_mask: list[bool] = []
    speech_mask: list[bool] = []
    for question, answer_text, answer_codes in turns:
        prompt = dialogue_prompt(tok, sp, question, history=ids)
        if prompt[:len(ids)] != ids:  # the builder drops the closing <|user|> and starts the new turn with it
            raise AssertionError("the prompt builder must extend the history")
        prompt = prompt[len(ids):]
        answer, is_text = interleave_answer(tok.encode(answer_text), sp.audio_ids(answer_codes))
        ids += prompt + answer + [sp.user]
        text_mask += [False] * len(prompt) + is_text + [False]
        speech_mask += [False] * len(prompt) + [not x for x in is_text] + [True]
    if loss == "joint":
        return [Sample(ids, [a or b for a, b in zip(text_mask, speech_mask, strict=True)], kind)]
    return [Sample(ids, text_mask, kind + ":text"), Sample(ids, speech_mask, kind + ":speech")]


def dialogue_samples(tok, sp: Specials, question: str | Sequence[int] | np.ndarray, answer_text: str,
                     answer_codes: Sequence[int] | np.ndarray, *, loss: str = "split",
                     kind: str = "sft") -> list[Sample]:
    """One question and its answer (see ``conversation_samples``)."""
    return conversation_samples(tok, sp, [(question, answer_text, answer_codes)], loss=loss, kind=kind)


# ---- pre-training documents ------------------------------------------------------------------------------------

def _document(sp: Specials, body: _Builder, kind: str) -> Sample:
    return _Builder().add([sp.gmask, sp.sop]).add(body.ids, body.mask).add([sp.eot], True).sample(kind)


def text_sample(tok, sp: Specials, text: str) -> Sample:
    return _document(sp, _Builder().add(tok.encode(text), True), "text")


def _audio_span(sp: Specials, codes) -> list[int]:
    return [sp.boa, *sp.audio_ids(codes), sp.eoa]


def speech_sample(tok, sp: Specials, codes) -> Sample:
    return _document(sp, _Builder().add(_audio_span(sp, codes), True), "speech")


def asr_sample(tok, sp: Specials, codes, text: str) -> Sample:
    body = _Builder().add(tok.encode(ASR_PROMPT)).add(_audio_span(sp, codes)).add(tok.encode(text), True)
    return _document(sp, body, "asr")


def tts_sample(tok, sp: Specials, text: str, codes) -> Sample:
    body = _Builder().add(tok.encode(TTS_PROMPT + text)).add([sp.boa]).add([*sp.audio_ids(codes), sp.eoa], True)
    return _document(sp, body, "tts")


Segment = tuple[str, "str | Sequence[int]"]  # ("text", str) or ("audio", codes)


def interleaved_sample(tok, sp: Specials, segments: Sequence[Segment]) -> Sample:
    body = _Builder()
    for kind, value in segments:
        if kind == "text":
            body.add(tok.encode(value), True)
        elif kind == "audio":
            body.add(_audio_span(sp, value), True)
        else:
            raise ValueError(f"segment kind must be 'text' or 'audio', not {kind!r}")
    return _document(sp, body, "interleaved")


# ---- data --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Utt:
    id: str
    text: str
    language: str
    codes: np.ndarray  # int32 speech codes


@dataclass(frozen=True)
class Dialogue:
    question: Utt
    answer: Utt
    kind: str  # item kind (arithmetic, capital, style, ...)
    style: str  # answer style name (corpus.ANSWER_STYLES), "normal" unless asked


@dataclass
class LMData:
    """Everything the mixture draws from, in memory (token ids are small)."""

    texts: list[str] = field(default_factory=list)
    utterances: list[Utt] = field(default_factory=list)
    dialogues: list[Dialogue] = field(default_factory=list)
    interleaved: list[list[Segment]] = field(default_factory=list)
    problems: Counter = field(default_factory=Counter)  # reason -> rows left out
    # utterances that join the pools of some utterance kinds only (kind -> list; `train lm --extra-kinds`)
    kind_utterances: dict[str, list[Utt]] = field(default_factory=dict)

    def pool(self, kind: str) -> list:
        if kind == "text":
            return self.texts
        if kind in ("speech", "asr", "tts"):
            more = self.kind_utterances.get(kind)
            return self.utterances + more if more else self.utterances
        if kind == "interleaved":  # generated documents, and spoken Q/A pairs with a random modality per side
            return self.interleaved + self.dialogues
        if kind in ("sft", "sft_text", "multi"):
            return self.dialogues
        if kind == "style":
            return [d for d in self.dialogues if d.style != "normal"]
        raise ConfigError(f"unknown sample kind {kind!r}; known: {', '.join(KINDS)}")

    def summary(self) -> str:
        styled = sum(d.style != "normal" for d in self.dialogues)
        return (f"{len(self.texts)} texts, {len(self.utterances)} utterances, {len(self.dialogues)} dialogues "
                f"({styled} style-controlled), {len(self.interleaved)} interleaved documents; "
                + "".join(f"{len(v)} more utterances for {k} only; " for k, v in sorted(self.kind_utterances.items()))
                + f"left out: {dict(self.problems) or 'none'}")


def _read_jsonl(path: str) -> tuple[list[dict], int]:
    rows, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    bad += 1
    return rows, bad


def _style_names() -> dict[str, str]:
    from glm4voice.train.corpus import ANSWER_STYLES

    return {s.key(): name for name, s in ANSWER_STYLES.items()}


def load_lm_data(corpus_dir: str, *, split: str = "train", interleaved_files: Sequence[str] = (),
                 text_files: Sequence[str] = (), with_item_texts: bool = True, tokens: str = "tokens") -> LMData:
    """Utterances with cached speech tokens (``tokens/<id>.npy``; ``tokens`` names another subfolder, e.g. the
    codes of a new tokenizer, ``glm4voice data tokens --out``) and their dialogues from a corpus folder.

    Rows without a token file, with an empty or unreadable one, or of another split are left out and counted in
    ``problems`` (the audio itself is not needed here). Text-only data: the questions and answers of the corpus's
    ``items.jsonl`` of this split, plus every non-empty line of ``text_files``. ``interleaved_files``: jsonl made by
    ``glm4voice train interleave`` (one ``{"segments": [{"text": ...} | {"audio": [...]}]}`` per line).
    """
    from glm4voice.train.corpus import ITEMS, MANIFEST, token_path

    data = LMData()
    tokens_dir = os.path.join(corpus_dir, tokens)
    rows, bad = _read_jsonl(os.path.join(corpus_dir, MANIFEST))
    data.problems["unparsable manifest line"] += bad
    styles = _style_names()
    by_id: dict[str, Utt] = {}
    for r in rows:
        if any(k not in r for k in ("id", "text", "role", "item_id", "split")):
            data.problems["missing fields"] += 1
            continue
        if r["split"] != split:
            continue
        path = token_path(corpus_dir, r["id"], tokens_dir=tokens_dir)
        if not os.path.exists(path):
            data.problems["no token file"] += 1
            continue
        try:
            codes = np.load(path, allow_pickle=False).astype(np.int32).reshape(-1)
        except (OSError, ValueError):
            data.problems["unreadable token file"] += 1
            continue
        if codes.size == 0:
            data.problems["empty token file"] += 1
            continue
        u = Utt(r["id"], r["text"], r.get("language", ""), codes)
        by_id[r["id"]] = u
        data.utterances.append(u)
    answers = {r["item_id"]: r for r in rows if r.get("role") == "answer" and r.get("id") in by_id}
    # an answer's split is its item's; a question of a held-out voice is held out while its answer row is "train"
    all_answers = {r["item_id"]: r for r in rows if r.get("role") == "answer"}
    for r in rows:
        if r.get("role") != "question" or r.get("id") not in by_id:
            continue
        a = answers.get(r["item_id"]) or all_answers.get(r["item_id"])
        if a is None:
            data.problems["question without answer row"] += 1
            continue
        au = by_id.get(a["id"]) or _load_utt(corpus_dir, a, tokens)
        if au is None:
            data.problems["answer without tokens"] += 1
            continue
        data.dialogues.append(Dialogue(by_id[r["id"]], au, r.get("kind", ""), styles.get(a.get("style", ""),
                                                                                           "normal")))
    items_path = os.path.join(corpus_dir, ITEMS)
    if with_item_texts and os.path.exists(items_path):
        items, bad = _read_jsonl(items_path)
        data.problems["unparsable item line"] += bad
        for it in items:
            if it.get("split") == split:
                data.texts += [it["question"], it["answer"]]
    for path in text_files:
        with open(path, encoding="utf-8") as f:
            data.texts += [line.rstrip("\n") for line in f if line.strip()]
    for path in interleaved_files:
        docs, bad = _read_jsonl(path)
        data.problems["unparsable interleaved line"] += bad
        data.interleaved += [segments_from_json(d) for d in docs]
    data.problems = Counter({k: v for k, v in data.problems.items() if v})
    return data


def _load_utt(corpus_dir: str, row: dict, tokens: str = "tokens") -> Utt | None:
    from glm4voice.train.corpus import token_path

    path = token_path(corpus_dir, row["id"], tokens_dir=os.path.join(corpus_dir, tokens))
    if not os.path.exists(path):
        return None
    codes = np.load(path, allow_pickle=False).astype(np.int32).reshape(-1)
    return Utt(row["id"], row["text"], row.get("language", ""), codes) if codes.size else None


def segments_from_json(doc: dict) -> list[Segment]:
    out: list[Segment] = []
    for s in doc["segments"]:
        if "text" in s:
            out.append(("text", s["text"]))
        else:
            out.append(("audio", np.asarray(s["audio"], dtype=np.int32)))
    return out


# ---- mixture -----------------------------------------------------------------------------------------------------

def parse_mix(spec: str | dict[str, float]) -> dict[str, float]:
    """``"text=0.2,asr=0.3"`` (or a dict) -> normalised ratios; unknown kinds and non-positive totals raise."""
    if isinstance(spec, str):
        spec = spec.strip()
        if spec in DEFAULT_MIX:
            return parse_mix(DEFAULT_MIX[spec])
        try:
            pairs = {k.strip(): float(v) for k, v in (p.split("=") for p in spec.split(",") if p.strip())}
        except ValueError as e:
            raise ConfigError(f"mixture {spec!r}: expected kind=ratio,kind=ratio,...") from e
    else:
        pairs = dict(spec)
    unknown = sorted(set(pairs) - set(KINDS))
    if unknown:
        raise ConfigError(f"unknown sample kinds {unknown} in the mixture; known: {', '.join(KINDS)}")
    if any(v < 0 for v in pairs.values()) or sum(pairs.values()) <= 0:
        raise ConfigError(f"mixture ratios must be >= 0 with a positive sum, got {pairs}")
    total = sum(pairs.values())
    return {k: v / total for k, v in pairs.items() if v > 0}


def perturb_codes(codes, p: float, rng: random.Random, codebook_size: int) -> list[int]:
    """Input-speech augmentation: each code, with probability ``p``, is replaced by a random code, dropped or
    doubled (equal odds). An unseen voice or speaking rate moves some codes and stretches others; the LM should read
    the words, not recall one exact code sequence of a training utterance. Never returns an empty list."""
    out: list[int] = []
    for c in (int(c) for c in codes):
        if rng.random() >= p:
            out.append(c)
            continue
        op = rng.randrange(3)
        if op == 0:
            out.append(rng.randrange(codebook_size))
        elif op == 2:
            out += [c, c]
    return out or [int(c) for c in codes[:1]]


class Mixture:
    """Draws documents by kind ratio from ``LMData``; each draw returns a list of samples (two for split SFT)."""

    def __init__(self, tok, sp: Specials, data: LMData, mix: str | dict[str, float], *, sft_loss: str = "split",
                 max_audio: int | None = None, rephrase: float = 0.0, augment_set: int = 1,
                 code_noise: float = 0.0, ctc_encode: Callable[[str], list[int]] | None = None):
        self.tok, self.sp, self.data = tok, sp, data
        # given, samples with input speech carry CTC spans: its positions and its transcript's pieces (lm_ctc)
        self.ctc_encode = ctc_encode
        self.ratios = parse_mix(mix)
        self.pools = {k: data.pool(k) for k in self.ratios}
        empty = [k for k, p in self.pools.items() if not p]
        if empty:
            raise ConfigError(f"the mixture asks for {empty} but the data has none of them ({data.summary()})")
        self.kinds = list(self.ratios)
        self.weights = [self.ratios[k] for k in self.kinds]
        self.sft_loss = sft_loss
        self.max_audio = max_audio  # cut very long utterances (codes) in pre-training documents
        if not 0.0 <= rephrase <= 1.0:
            raise ConfigError(f"rephrase probability must be in [0, 1], not {rephrase}")
        # typed questions (sft_text) re-worded with another training phrasing with this probability
        # (texts.rephrase); 0 draws nothing extra from the RNG, so older runs resume with the same batches
        self.rephrase = rephrase
        if augment_set not in AUGMENT_SETS:
            raise ConfigError(f"augmentation set must be one of {AUGMENT_SETS}, not {augment_set}")
        self.augment_set = augment_set
        if not 0.0 <= code_noise < 1.0:
            raise ConfigError(f"code noise probability must be in [0, 1), not {code_noise}")
        # speech *inputs* (spoken questions, ASR audio) perturbed code by code (perturb_codes); 0 draws nothing
        self.code_noise = code_noise

    def draw(self, rng: random.Random) -> list[Sample]:
        kind = rng.choices(self.kinds, self.weights)[0]
        x = self.pools[kind][rng.randrange(len(self.pools[kind]))]
        return self.build(kind, x, rng)

    def build(self, kind: str, x, rng: random.Random) -> list[Sample]:
        samples, heard = self._build(kind, x, rng)
        if self.ctc_encode is not None and heard:
            from dataclasses import replace

            from glm4voice.train.lm_ctc import ctc_spans

            # one copy of a split dialogue carries the spans (the copies have the same ids: the same hidden states)
            spans = ctc_spans(samples[0].ids, heard, self.sp.boa, self.sp.eoa, self.ctc_encode)
            samples = [replace(samples[0], ctc=spans), *samples[1:]]
        if kind in SFT_KINDS:
            rng.shuffle(samples)  # a copy cut at the end of a row is the text or the speech one alike
        return samples

    def _build(self, kind: str, x, rng: random.Random) -> tuple[list[Sample], list[str]]:
        """The samples and the transcripts of their input utterances in order (for CTC spans; [] if none or if an
        utterance was cut to ``max_audio``)."""
        tok, sp = self.tok, self.sp
        if kind == "text":
            return [text_sample(tok, sp, x)], []
        if kind == "interleaved":
            if isinstance(x, Dialogue):
                from glm4voice.train.interleave import pair_segments

                x = pair_segments(x.question, x.answer, rng)
            return [interleaved_sample(tok, sp, x)], []
        if kind in ("speech", "asr", "tts"):
            codes = x.codes[:self.max_audio] if self.max_audio else x.codes
            whole = [x.text] if len(codes) == len(x.codes) else []
            if kind == "speech":
                return [speech_sample(tok, sp, codes)], whole
            if kind == "asr":
                return [asr_sample(tok, sp, self._heard(codes, rng), x.text)], whole
            return [tts_sample(tok, sp, x.text, codes)], []
        dialogues = [x]
        if kind == "multi":  # further turns: other dialogues of the pool, drawn by the same RNG
            pool = self.pools[kind]
            dialogues += [pool[rng.randrange(len(pool))] for _ in range(rng.randint(*MULTI_TURNS) - 1)]
        turns = [(self._typed(d, rng) if kind == "sft_text" else self._heard(d.question.codes, rng), d.answer.text,
                  d.answer.codes)
                 for d in dialogues]
        heard = [] if kind == "sft_text" else [d.question.text for d in dialogues]
        return conversation_samples(tok, sp, turns, loss=self.sft_loss, kind=kind), heard

    def _heard(self, codes, rng: random.Random):
        return perturb_codes(codes, self.code_noise, rng, self.sp.codebook_size) if self.code_noise else codes

    def _typed(self, d: Dialogue, rng: random.Random) -> str:
        if self.rephrase and rng.random() < self.rephrase:
            return rephrase(d.kind, d.question.language, d.question.text, rng, d.style, augment=self.augment_set)
        return d.question.text


# ---- packing -----------------------------------------------------------------------------------------------------

@dataclass
class PackedBatch:
    """``input_ids``, ``loss_mask``, ``position_ids`` (restart at 0 per document), ``doc_ids`` (-1 = padding), all
    (B, T); ``stats``: documents per kind, cut documents, padding share."""

    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    doc_ids: torch.Tensor
    stats: dict
    ctc: list = field(default_factory=list)  # (row, start, length, target pieces) per input utterance (lm_ctc)

    def to(self, device) -> PackedBatch:
        return PackedBatch(self.input_ids.to(device), self.loss_mask.to(device), self.position_ids.to(device),
                           self.doc_ids.to(device), self.stats, self.ctc)


def pack_row(draw: Callable[[random.Random], list[Sample]], rng: random.Random, seq_len: int, pad_id: int,
             stats: Counter, fill_tries: int = 1) -> tuple[list[int], list[bool], list[int], list[int]]:
    """Fill one row with whole draws (a draw's documents, e.g. the two copies of a dialogue, go in together).

    A draw that does not fit is dropped (counted in ``stats["unfit"]``); the ``fill_tries``-th such draw ends the
    row with padding. With ``fill_tries`` 1 (the default) the first misfit ends the row; more tries fill rows
    tighter (less padding, so more tokens per step) at the cost of favouring short documents at row ends. A draw
    that does not fit an empty row goes in anyway: its documents in order, the one crossing the row end cut
    (counted in ``stats["cut"]``). Returns ids, mask, positions, document numbers and the documents' CTC spans
    moved to row positions (a span the cut reaches is dropped).
    """
    ids: list[int] = []
    spans: list = []
    mask: list[bool] = []
    pos: list[int] = []
    doc: list[int] = []
    n = 0
    misses = 0
    while len(ids) < seq_len:
        samples = draw(rng)
        if ids and len(ids) + sum(map(len, samples)) > seq_len:
            misses += 1
            stats["unfit"] += 1
            if misses < fill_tries:
                continue
            fill = seq_len - len(ids)
            stats["pad_tokens"] += fill
            return ids + [pad_id] * fill, mask + [False] * fill, pos + [0] * fill, doc + [-1] * fill, spans
        for s in samples:
            room = seq_len - len(ids)
            if room <= 0:
                break
            if len(s) > room:
                s = Sample(s.ids[:room], s.mask[:room], s.kind, tuple(c for c in s.ctc if c[0] + c[1] <= room))
                stats["cut"] += 1
            spans += [(len(ids) + start, length, targets) for start, length, targets in s.ctc]
            ids += s.ids
            mask += s.mask
            pos += range(len(s))
            doc += [n] * len(s)
            n += 1
            stats[f"docs:{s.kind}"] += 1
    return ids, mask, pos, doc, spans


def pack_batch(draw: Callable[[random.Random], list[Sample]], *, seed: int, step: int, rank: int, batch_size: int,
               seq_len: int, pad_id: int, fill_tries: int = 1) -> PackedBatch:
    """Rows ``rank * batch_size .. + batch_size - 1`` of step ``step``'s global batch; row r uses its own RNG seeded
    by (seed, step, r), so the batch does not depend on the number of processes or on what ran before."""
    stats: Counter = Counter()
    rows = [pack_row(draw, random.Random(f"lm:{seed}:{step}:{rank * batch_size + i}"), seq_len, pad_id, stats,
                     fill_tries) for i in range(batch_size)]
    cols = [torch.tensor([r[j] for r in rows]) for j in range(4)]
    stats["pad_share"] = stats.pop("pad_tokens", 0) / (batch_size * seq_len)
    ctc = [(i, start, n, targets) for i, r in enumerate(rows) for start, n, targets in r[4]]
    return PackedBatch(cols[0].long(), cols[1].bool(), cols[2].long(), cols[3].long(), dict(stats), ctc)


class MixtureBatches:
    """``batch_fn(step, rank, world)`` for the training engine."""

    def __init__(self, mixture: Mixture, *, batch_size: int, seq_len: int, seed: int, fill_tries: int = 1):
        self.mixture, self.batch_size, self.seq_len, self.seed = mixture, batch_size, seq_len, seed
        self.fill_tries = fill_tries

    def __call__(self, step: int, rank: int, world: int) -> PackedBatch:
        return pack_batch(self.mixture.draw, seed=self.seed, step=step, rank=rank, batch_size=self.batch_size,
                          seq_len=self.seq_len, pad_id=self.mixture.sp.eot, fill_tries=self.fill_tries)
