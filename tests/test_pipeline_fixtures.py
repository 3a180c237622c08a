"""Tiny models for the pipeline, server and browser tests, saved with the components' own writers and loaded
through the production loaders (``VoiceChat.from_pretrained``).

- speech tokenizer and decoder: the official-format tiny random checkpoints of the reference set (codebook and
  decoder vocabulary of 256 codes), copied into the model folder;
- text tokenizer: a byte-level vocabulary (the 256 single bytes, no merges) in the official GLM-4 file format,
  with the specials and 256 audio tokens (``train.bpe.save_glm4_tokenizer``);
- LM: a 2-layer GLM (``lm.save_pretrained``). ``scripted=True`` makes it a deterministic bigram machine: the
  blocks' output projections are zero, so the last hidden state is the normalised embedding of the current token,
  and the output layer maps each token of a chain to the next with a large margin. After a prompt (which ends with
  "\\n") it answers, at any temperature, 13 text tokens, 26 audio tokens, 13 text tokens, then ``<|user|>``:
  the text ``ANSWER_TEXT`` and the speech codes ``ANSWER_CODES`` (the official 13/26 interleave). With
  ``scripted=False`` the weights are random (any token can come out, including specials).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tests.conftest import reference_root

ANSWER_TEXT = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ANSWER_CODES = tuple(range(7, 7 + 26))  # 26 distinct speech codes -> 2.08 s of speech
CHAIN_MARGIN = 40.0  # logit of the scripted next token; the others stay below about 15 (random cosines)
CODEBOOK = 256


def answer_chain(tok) -> list[int]:
    """The scripted answer's ids: text[0:13] audio[0:26] text[13:26] <|user|>."""
    t = tok.encode(ANSWER_TEXT)
    return [*t[:13], *tok.audio_ids(ANSWER_CODES), *t[13:], tok.token_id("<|user|>")]


def build_models(root: Path, *, scripted: bool = True, seed: int = 0, seq_length: int = 1024) -> Path:
    """Write tokenizer/, lm/ and decoder/ under ``root``; returns ``root`` (a ``--model`` folder)."""
    from glm4voice.lm.config import GLMConfig
    from glm4voice.lm.load import save_pretrained
    from glm4voice.lm.model import GLM
    from glm4voice.lm.text_tokenizer import TextTokenizer
    from glm4voice.train.bpe import save_glm4_tokenizer

    ref = reference_root()
    root = Path(root)
    for part in ("tokenizer", "decoder"):
        if not (root / part).exists():
            shutil.copytree(ref / part, root / part, ignore=shutil.ignore_patterns("expected*", "inputs"))
    lm_dir = root / "lm"
    save_glm4_tokenizer({bytes([b]): b for b in range(256)}, str(lm_dir), codebook_size=CODEBOOK)
    tok = TextTokenizer.from_dir(lm_dir)
    stops = tuple(tok.token_id(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>"))
    cfg = GLMConfig(hidden_size=64, num_layers=2, num_attention_heads=4, kv_channels=16, multi_query_group_num=2,
                    ffn_hidden_size=128, padded_vocab_size=tok.vocab_size, seq_length=seq_length,
                    torch_dtype="float32", eos_token_id=stops, pad_token_id=stops[0])
    g = torch.Generator().manual_seed(seed)
    model = GLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
        if scripted:
            _script(model, tok, g)
    save_pretrained(model, lm_dir)
    return root


def _script(model, tok, g: torch.Generator) -> None:
    for layer in model.layers:  # blocks add nothing: the residual stream stays the token embedding
        layer.attn.out.weight.zero_()
        layer.mlp.down.weight.zero_()
    d = model.cfg.hidden_size
    emb = torch.randn(model.embed.weight.shape, generator=g)
    model.embed.weight.copy_(emb)
    unit = emb / emb.norm(dim=-1, keepdim=True)  # = RMSNorm(embedding) / sqrt(d)
    model.output.weight.zero_()
    chain = [tok.encode("\n")[-1], *answer_chain(tok)]
    for cur, nxt in zip(chain[:-1], chain[1:], strict=True):
        model.output.weight[nxt] += CHAIN_MARGIN * unit[cur] / d**0.5
