"""Carry an LM and a speech decoder over to a new tokenizer's codes: a warm start instead of training from scratch.

A new speech tokenizer (e.g. one that hears more voices) gives every utterance new codes, and the LM's audio-token
embeddings and the flow's token embedding mean nothing for them. Both tokenizers emit one code per 80 ms of the same
audio (12.5 Hz, same framing), so the two token caches of one corpus align position by position. From their
co-occurrence counts C[new, old] this module builds, for every new code j, the distribution P(old | new = j) and
sets each code-indexed row to the expectation of the old rows under it:

    row_new[j] = sum_i P(old = i | new = j) * row_old[i]

for the LM's input embedding and output layer (an output row so made gives the expected old logit) and the flow's
``input_embedding``. New codes never seen in the caches get the mean of the old rows weighted by old-code frequency.
Everything else is copied unchanged. The new models are a starting point for `glm4voice train lm --init` and
`glm4voice train decoder --init` on the new token caches, not a finished model.

    glm4voice train remap-codes --old-tokens data/corpus_v6/tokens --new-tokens data/corpus_v6_t2/tokens \
        --lm glm4voice/assets/embedded/lm --decoder glm4voice/assets/embedded/decoder --out runs/remap

Writes OUT/lm and OUT/decoder (complete model folders), OUT/code_map.json (how well the codes correspond: coverage,
mean max P(old|new), mutual information in bits) and OUT/code_counts.npz (C, int64).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("glm4voice.train.remap_codes")

LM_ROWS = ("transformer.embedding.word_embeddings.weight", "transformer.output_layer.weight")
FLOW_ROWS = ("input_embedding.weight",)


def cooccurrence(old_dir: str | os.PathLike, new_dir: str | os.PathLike, *, old_size: int, new_size: int,
                 max_files: int | None = None, progress: bool = True) -> tuple[np.ndarray, dict]:
    """Counts C (new_size, old_size) of (new code, old code) at the same positions of the ``<id>.npy`` files the two
    folders share. Lengths may differ by one position (a tokenizer's last partial frame); a larger difference means
    the files are not the same audio, and the file is skipped and counted."""
    from tqdm import tqdm

    old_dir, new_dir = Path(old_dir), Path(new_dir)
    for d in (old_dir, new_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: no such token folder")
    names = sorted(set(p.name for p in old_dir.glob("*.npy")) & set(p.name for p in new_dir.glob("*.npy")))
    names = [n for n in names if not n.endswith(".part.npy")][:max_files]
    if not names:
        raise ValueError(f"{old_dir} and {new_dir} share no <id>.npy token files")
    counts = np.zeros(new_size * old_size, dtype=np.int64)
    skipped = {"length_mismatch": 0, "out_of_range": 0}
    for name in tqdm(names, desc="code pairs", unit="file", disable=not progress):
        old = np.load(old_dir / name, allow_pickle=False).astype(np.int64).ravel()
        new = np.load(new_dir / name, allow_pickle=False).astype(np.int64).ravel()
        if abs(len(old) - len(new)) > 1:
            skipped["length_mismatch"] += 1
            continue
        n = min(len(old), len(new))
        old, new = old[:n], new[:n]
        if n and (old.min() < 0 or new.min() < 0 or old.max() >= old_size or new.max() >= new_size):
            skipped["out_of_range"] += 1
            continue
        counts += np.bincount(new * old_size + old, minlength=new_size * old_size)
    used = len(names) - sum(skipped.values())
    if used == 0:
        raise ValueError(f"no usable file pair in {old_dir} / {new_dir}: {skipped}")
    return counts.reshape(new_size, old_size), {"files": len(names), "files_used": used, **skipped}


def mapping(counts: np.ndarray) -> tuple[torch.Tensor, dict]:
    """P(old | new) as a (new, old) float64 matrix (rows of unseen new codes: the old codes' overall frequency) and
    statistics: positions, new codes seen, mean over positions of max_i P(old = i | new), mutual information (bits)
    and the old codes' entropy (bits, the most the information can be)."""
    c = torch.from_numpy(counts).double()
    total = c.sum()
    if total <= 0:
        raise ValueError("no code pairs counted")
    row = c.sum(1, keepdim=True)
    p_old = c.sum(0) / total
    cond = torch.where(row > 0, c / row.clamp_min(1), p_old[None].expand_as(c))
    joint = c / total
    p_new = row[:, 0] / total
    nz = joint > 0
    mi = float((joint[nz] * (joint[nz] / (p_new[:, None] * p_old[None])[nz]).log2()).sum())
    h_old = float(-(p_old[p_old > 0] * p_old[p_old > 0].log2()).sum())
    stats = {"positions": int(total), "new_codes_seen": int((row > 0).sum()), "new_codes": int(c.shape[0]),
             "old_codes_seen": int((p_old > 0).sum()),
             "mean_max_p_old_given_new": float(c.max(1).values.sum() / total),
             "mutual_information_bits": mi, "old_entropy_bits": h_old}
    return cond, stats


def shuffled(cond: torch.Tensor, seed: int) -> torch.Tensor:
    """``cond`` with its rows permuted (seeded): the control arm of a remap, with no code correspondence left."""
    return cond[torch.randperm(cond.shape[0], generator=torch.Generator().manual_seed(seed))]


def remap_rows(weight: torch.Tensor, offset: int, cond: torch.Tensor) -> torch.Tensor:
    """``weight`` with rows offset..offset+new-1 replaced by P(old|new) @ old rows offset..offset+old-1."""
    n_new, n_old = cond.shape
    if offset < 0 or offset + max(n_new, n_old) > weight.shape[0]:
        raise ValueError(f"audio rows {offset}..{offset + max(n_new, n_old) - 1} exceed the table of "
                         f"{weight.shape[0]} rows")
    out = weight.clone()
    old = weight[offset: offset + n_old].double()
    out[offset: offset + n_new] = (cond @ old).to(weight.dtype)
    return out


def _remap_file(path: Path, names: tuple[str, ...], offset: int, cond: torch.Tensor, out: Path) -> None:
    from safetensors.torch import load_file, save_file

    from glm4voice.errors import CheckpointError
    from glm4voice.int8_weights import unpack

    tensors = unpack(load_file(str(path)), name=str(path))  # an int8-stored embedded model is written unpacked
    missing = [n for n in names if n not in tensors]
    if missing:
        raise CheckpointError(f"{path}: no tensor {missing[0]!r} (is this the right kind of model folder?)")
    for n in names:
        tensors[n] = remap_rows(tensors[n], offset, cond).contiguous()
    save_file(tensors, str(out), metadata={"format": "pt", "remapped_by": "glm4voice train remap-codes"})


def remap_lm(lm_dir: str | os.PathLike, cond: torch.Tensor, out_dir: str | os.PathLike) -> Path:
    """A copy of the LM folder whose audio-token rows follow the new codes."""
    from glm4voice.errors import CheckpointError
    from glm4voice.lm.text_tokenizer import TextTokenizer

    src, out = Path(lm_dir), Path(out_dir)
    tok = TextTokenizer.from_dir(src)
    if tok.codebook_size != cond.shape[0] or tok.codebook_size != cond.shape[1]:
        raise CheckpointError(f"{src}: {tok.codebook_size} audio tokens, but the codes map {cond.shape[1]} old "
                              f"to {cond.shape[0]} new codes; a change of codebook size changes the vocabulary")
    weights = src / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{src}: no model.safetensors (a sharded LM is not supported here)")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("model.safetensors"))
    _remap_file(weights, LM_ROWS, tok.audio_offset, cond, out / "model.safetensors")
    return out


def flow_table_rows(decoder_dir: str | os.PathLike) -> int:
    """The number of rows of a decoder folder's flow token table (its codebook size), read without loading it."""
    from safetensors import safe_open

    from glm4voice.errors import CheckpointError

    flow = Path(decoder_dir) / "flow.safetensors"
    if not flow.is_file():
        raise CheckpointError(f"{decoder_dir}: no flow.safetensors")
    with safe_open(str(flow), "pt") as f:
        if FLOW_ROWS[0] not in f.keys():
            raise CheckpointError(f"{flow}: no tensor {FLOW_ROWS[0]!r}")
        return f.get_slice(FLOW_ROWS[0]).get_shape()[0]


def remap_decoder(decoder_dir: str | os.PathLike, cond: torch.Tensor, out_dir: str | os.PathLike) -> Path:
    """A copy of the decoder folder whose flow token embedding follows the new codes (HiFT is copied)."""
    from glm4voice.errors import CheckpointError

    src, out = Path(decoder_dir), Path(out_dir)
    flow = src / "flow.safetensors"
    rows = flow_table_rows(src)
    if rows != cond.shape[0] or rows != cond.shape[1]:
        raise CheckpointError(f"{flow}: a token table of {rows} rows, but the codes map {cond.shape[1]} old to "
                              f"{cond.shape[0]} new codes")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("flow.safetensors"))
    _remap_file(flow, FLOW_ROWS, 0, cond, out / "flow.safetensors")
    return out


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--old-tokens", required=True, help="token cache of the old tokenizer (<id>.npy files)")
    parser.add_argument("--new-tokens", required=True, help="token cache of the same audio by the new tokenizer")
    parser.add_argument("--codebook", type=int, default=None,
                        help="codebook size of both tokenizers (default: the LM's number of audio tokens, else "
                             "the decoder's token table)")
    parser.add_argument("--lm", default=None, help="LM folder to carry over")
    parser.add_argument("--decoder", default=None, help="decoder folder to carry over")
    parser.add_argument("--out", required=True, help="output folder (lm/, decoder/, code_map.json)")
    parser.add_argument("--max-files", type=int, default=None, help="use at most this many token files")
    parser.add_argument("--shuffle", type=int, default=None, metavar="SEED",
                        help="a control: give every new code the map of a random other new code (seeded), so the "
                             "rows keep their statistics but lose the correspondence")


def main(args: argparse.Namespace) -> int:
    from glm4voice.errors import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.lm and not args.decoder:
        raise ConfigError("remap-codes: give --lm and/or --decoder")
    size = args.codebook
    if size is None and args.lm:
        from glm4voice.lm.text_tokenizer import TextTokenizer

        size = TextTokenizer.from_dir(args.lm).codebook_size
    if size is None:
        size = flow_table_rows(args.decoder)
    counts, files = cooccurrence(args.old_tokens, args.new_tokens, old_size=size, new_size=size,
                                 max_files=args.max_files)
    cond, stats = mapping(counts)
    if args.shuffle is not None:
        cond = shuffled(cond, args.shuffle)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "code_counts.npz", counts=counts)
    report = {"old_tokens": str(args.old_tokens), "new_tokens": str(args.new_tokens), **files, **stats,
              "shuffled_control_seed": args.shuffle}
    if args.lm:
        report["lm"] = str(remap_lm(args.lm, cond, out / "lm"))
    if args.decoder:
        report["decoder"] = str(remap_decoder(args.decoder, cond, out / "decoder"))
    (out / "code_map.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("%d positions in %d files; new codes seen %d/%d; mean max P(old|new) %.3f; mutual information %.2f "
             "of %.2f bits", stats["positions"], files["files_used"], stats["new_codes_seen"], stats["new_codes"],
             stats["mean_max_p_old_given_new"], stats["mutual_information_bits"], stats["old_entropy_bits"])
    print(json.dumps(report, indent=2))
    return 0
