"""A training-only CTC objective on the LM's hidden states over its input speech (`glm4voice train lm --ctc-weight`).

Why: sessions 21 and 22 found that the embedded LM answers a spoken question by recognising its gist, not its words
(asked to transcribe, it writes memorised training sentences; model card, "What the LM hears"). Its only teacher
of the words in input speech is the next-token loss of the ASR documents, which a decoder can meet by recalling a
training sentence. Here a CTC classifier over word pieces reads the output of block K (``--ctc-layer``) at every
position of an input utterance: its codes and the closing ``<|end_of_audio|>``. CTC (Graves et al. 2006) cannot
fall back on a memorised sentence: it must emit the pieces in order from the positions that carry them. The blocks
above K, and every later position that attends to these (the answer), can then use the words. K must be below the
last block: the last block's output at an audio position feeds only that position's own prediction, so nothing
that answers would see what the CTC taught it.

The head (``Linear(hidden, pieces + 1)``, the last class the CTC blank) exists only while training: the checkpoint
``last.pt`` holds it (a resumed run continues it), the export is the plain GLM (``AudioCTC.lm``).

Spans: ``ctc_spans`` finds each ``<|begin_of_audio|> codes <|end_of_audio|>`` run of a sample and pairs it, in
order, with the utterance's transcript as word-piece ids (``lm_samples.Mixture(ctc_encode=...)``); packing carries
them into ``PackedBatch.ctc`` as (row, start, length, targets).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glm4voice.errors import ConfigError

CTC_PIECES = "ctc_pieces.json"  # the run's word-piece vocabulary, kept in the run folder so a resumed run keeps it

Span = tuple[int, int, tuple[int, ...]]  # start, length (positions), target piece ids


class AudioCTC(nn.Module):
    """A GLM plus a CTC head on the output of block ``layer`` (1-based). ``forward`` takes the GLM's training
    arguments and returns (logits, CTC logits (B, T, pieces + 1)); ``lm`` is the plain model to export."""

    def __init__(self, lm: nn.Module, n_pieces: int, layer: int):
        super().__init__()
        n_layers = len(lm.layers)
        if not 1 <= layer < n_layers:
            raise ConfigError(f"--ctc-layer must name a block below the last (1..{n_layers - 1}), not {layer}: the "
                              f"last block's output at the question's positions is not seen by the answer")
        if n_pieces <= 0:
            raise ConfigError(f"the CTC head needs word pieces, got {n_pieces}")
        self.lm = lm
        self.layer = layer
        self.blank = n_pieces
        self.head = nn.Linear(lm.cfg.hidden_size, n_pieces + 1, device=lm.device)
        # True: the CTC loss trains the head only (the LM's states are detached), as while a new head warms up: a
        # random head's large early gradients would otherwise pull the trained LM away from what it knows
        self.head_only = False
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def cfg(self):
        return self.lm.cfg

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None, *,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        seen: list[Tensor] = []
        hook = self.lm.layers[self.layer - 1].register_forward_hook(lambda _m, _a, out: seen.append(out))
        try:
            logits = self.lm(input_ids, position_ids=position_ids, mask=mask)
        finally:
            hook.remove()
        hidden = seen[0].detach() if self.head_only else seen[0]
        return logits, self.head(hidden)


def ctc_spans(ids: Sequence[int], texts: Sequence[str], boa: int, eoa: int,
              encode: Callable[[str], list[int]]) -> tuple[Span, ...]:
    """The sample's audio runs (``boa`` codes ``eoa``) paired in order with ``texts``: (first code's position,
    codes + 1 (the closing ``eoa``, which has heard them all), the text's piece ids). A text that encodes to nothing
    gets no span; an unclosed run (a sample cut by packing) is not matched here."""
    runs = []
    start = None
    for i, t in enumerate(ids):
        if t == boa:
            start = i + 1
        elif t == eoa and start is not None:
            runs.append((start, i - start + 1))
            start = None
    if len(runs) != len(texts):
        raise ValueError(f"{len(runs)} audio runs in the sample but {len(texts)} transcripts")
    out = []
    for (s, n), text in zip(runs, texts, strict=True):
        targets = tuple(encode(text))
        if targets:
            out.append((s, n, targets))
    return tuple(out)


def _gather(ctc_logits: Tensor, spans: Sequence[tuple[int, int, int, Sequence[int]]]) -> tuple[Tensor, Tensor]:
    """Log-probabilities (T_max, N, C) of the spans' positions (padded) and their lengths."""
    n_max = max(n for _, _, n, _ in spans)
    lp = ctc_logits.new_zeros(len(spans), n_max, ctc_logits.shape[-1], dtype=torch.float32)
    for j, (r, s, n, _) in enumerate(spans):
        lp[j, :n] = ctc_logits[r, s:s + n].float()
    lengths = torch.tensor([n for _, _, n, _ in spans], device=ctc_logits.device)
    return lp.log_softmax(-1).transpose(0, 1), lengths


def ctc_loss(ctc_logits: Tensor, spans: Sequence[tuple[int, int, int, Sequence[int]]], blank: int) -> Tensor:
    """Mean over spans of the CTC loss divided by its target length (``F.ctc_loss`` ``mean``); spans CTC cannot
    align (more targets than positions) count zero rather than infinity."""
    lp, lengths = _gather(ctc_logits, spans)
    targets = torch.tensor([t for *_, ts in spans for t in ts], device=ctc_logits.device)
    target_lengths = torch.tensor([len(ts) for *_, ts in spans], device=ctc_logits.device)
    return F.ctc_loss(lp, targets, lengths, target_lengths, blank=blank, reduction="mean", zero_infinity=True)


def greedy_ctc(ctc_logits: Tensor, spans: Sequence[tuple[int, int, int, Sequence[int]]], blank: int) -> list[list[int]]:
    """Best path per span: argmax, repeats merged, blanks dropped."""
    out = []
    for r, s, n, _ in spans:
        best = ctc_logits[r, s:s + n].argmax(-1).tolist()
        out.append([p for i, p in enumerate(best) if p != blank and (i == 0 or p != best[i - 1])])
    return out


def piece_vocabulary(out_dir: str | Path, texts: Sequence[str], n_pieces: int):
    """The run's word pieces: read from ``out_dir/ctc_pieces.json`` when a run is resumed, else learnt from
    ``texts`` (byte-level BPE over lower-cased transcripts, ``tokenizer_asr.train_pieces``) and saved there.
    Returns (encode(text) -> piece ids, number of pieces)."""
    from glm4voice.train.tokenizer_asr import read_pieces, train_pieces

    saved = Path(out_dir) / CTC_PIECES
    if saved.is_file():
        tok, pieces = read_pieces(saved)
    else:
        if not texts:
            raise ConfigError("the CTC objective needs transcripts to learn word pieces from; the corpus has none")
        tok, pieces = train_pieces(sorted(set(texts)), n_pieces)
        saved.parent.mkdir(parents=True, exist_ok=True)
        tmp = saved.with_suffix(".part")
        tmp.write_text(tok.to_str(), encoding="utf-8")
        tmp.replace(saved)
    return (lambda text: tok.encode(text.lower()).ids), len(pieces)
