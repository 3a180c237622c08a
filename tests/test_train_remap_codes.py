"""remap-codes: an LM and a decoder carried over to a new tokenizer's codes (train/remap_codes.py)."""

import json

import numpy as np
import pytest
import torch

from glm4voice.checkpoints import embedded_dir
from glm4voice.train import remap_codes as rc

K = 1024  # the embedded model's codebook


def _caches(tmp_path, perm, n_files=30, seed=0):
    """Two token folders of the same 'audio': the new codes are perm[old] (a relabelling), the new files one code
    shorter (a last partial frame)."""
    rng = np.random.default_rng(seed)
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    for i in range(n_files):
        old = rng.integers(0, K, size=rng.integers(20, 60)).astype(np.int32)
        np.save(old_dir / f"u{i}.npy", old)
        np.save(new_dir / f"u{i}.npy", perm[old][:-1].astype(np.int32))
    return old_dir, new_dir


def test_counts_and_mapping_of_a_relabelling(tmp_path):
    perm = np.random.default_rng(1).permutation(K)
    old_dir, new_dir = _caches(tmp_path, perm)
    np.save(new_dir / "u0.npy", np.zeros(3, dtype=np.int32))  # not the same audio: 20+ codes against 3
    np.save(old_dir / "only_old.npy", np.zeros(5, dtype=np.int32))  # in one folder only: ignored
    counts, files = rc.cooccurrence(old_dir, new_dir, old_size=K, new_size=K, progress=False)
    assert files == {"files": 30, "files_used": 29, "length_mismatch": 1, "out_of_range": 0}
    # every count sits on the relabelling
    assert counts.sum() == counts[perm, np.arange(K)].sum() > 0
    cond, stats = rc.mapping(counts)
    seen = counts.sum(1) > 0
    assert torch.allclose(cond.sum(1), torch.ones(K, dtype=torch.float64))
    assert stats["mean_max_p_old_given_new"] == pytest.approx(1.0)
    assert stats["mutual_information_bits"] == pytest.approx(stats["old_entropy_bits"])
    assert stats["new_codes_seen"] == int(seen.sum()) < K  # 29 files of ~40 codes miss some of 1,024
    # an unseen new code gets the old codes' overall frequency
    unseen = int(np.flatnonzero(~seen)[0])
    assert torch.allclose(cond[unseen], torch.from_numpy(counts.sum(0) / counts.sum()))


def test_independent_codes_carry_no_information():
    rng = np.random.default_rng(0)
    counts = np.bincount(rng.integers(0, 8, 20000) * 8 + rng.integers(0, 8, 20000), minlength=64).reshape(8, 8)
    _, stats = rc.mapping(counts)
    assert stats["mutual_information_bits"] < 0.01 and stats["old_entropy_bits"] == pytest.approx(3.0, abs=0.01)
    with pytest.raises(ValueError, match="no code pairs"):
        rc.mapping(np.zeros((4, 4), dtype=np.int64))


@pytest.mark.parametrize("stored", ["float", "int8"])
def test_remapped_lm_on_new_codes_equals_the_old_lm_on_old_codes(tmp_path, stored):
    import shutil

    from safetensors.torch import load_file, save_file

    from glm4voice.int8_weights import pack, unpack
    from glm4voice.lm.load import load_lm
    from glm4voice.lm.text_tokenizer import TextTokenizer

    perm = np.random.default_rng(2).permutation(K)
    counts = np.zeros((K, K), dtype=np.int64)
    counts[perm, np.arange(K)] = 5
    cond, _ = rc.mapping(counts)
    # the LM as a trainer exports it (float) and as build_embedded --int8 ships it, whatever the shipped one is
    src = shutil.copytree(embedded_dir("lm"), tmp_path / stored)
    plain = {k: v.contiguous() for k, v in unpack(load_file(str(src / "model.safetensors"))).items()}
    save_file(pack(plain) if stored == "int8" else plain, str(src / "model.safetensors"))
    out = rc.remap_lm(src, cond, tmp_path / "lm")
    tok = TextTokenizer.from_dir(src)
    old_lm, new_lm = load_lm(src, dtype=torch.float32), load_lm(out, dtype=torch.float32)
    codes = np.random.default_rng(3).integers(0, K, 12)
    text = tok.encode("What is two plus two?")
    old_ids = torch.tensor([text + tok.audio_ids(codes.tolist())])
    new_ids = torch.tensor([text + tok.audio_ids(perm[codes].tolist())])
    with torch.no_grad():
        a, b = old_lm(old_ids)[0, -1], new_lm(new_ids)[0, -1]
    off = tok.audio_offset
    assert torch.allclose(a[:off], b[:off], atol=1e-4)  # text logits unchanged
    assert torch.allclose(a[off: off + K], b[off: off + K][perm], atol=1e-4)  # audio logits relabelled
    assert (out / "tokenizer_config.json").read_bytes() == (src / "tokenizer_config.json").read_bytes()


def test_remapped_decoder_reads_new_codes_as_the_old_one_read_old_codes(tmp_path):
    from glm4voice.decoder.load import load_modules

    perm = np.random.default_rng(4).permutation(K)
    counts = np.zeros((K, K), dtype=np.int64)
    counts[perm, np.arange(K)] = 1
    cond, _ = rc.mapping(counts)
    out = rc.remap_decoder(embedded_dir("decoder"), cond, tmp_path / "dec")
    _, flow_old, hift_old = load_modules(embedded_dir("decoder"))
    _, flow_new, hift_new = load_modules(out)
    old = flow_old.input_embedding.weight
    assert torch.equal(flow_new.input_embedding.weight[perm], old)
    assert all(torch.equal(a, b) for a, b in zip(hift_old.state_dict().values(), hift_new.state_dict().values(),
                                                 strict=True))


def test_cli_writes_models_and_report_and_refuses_mismatches(tmp_path):
    import argparse

    from glm4voice.errors import CheckpointError, ConfigError

    perm = np.random.default_rng(5).permutation(K)
    old_dir, new_dir = _caches(tmp_path, perm, n_files=5)
    parser = argparse.ArgumentParser()
    rc.add_args(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["--old-tokens", str(old_dir), "--new-tokens", str(new_dir), "--decoder",
                              str(embedded_dir("decoder")), "--out", str(out)])
    assert rc.main(args) == 0
    report = json.loads((out / "code_map.json").read_text())
    assert report["files_used"] == 5 and report["mean_max_p_old_given_new"] == pytest.approx(1.0)
    assert (out / "decoder" / "flow.safetensors").is_file() and not (out / "lm").exists()
    assert np.load(out / "code_counts.npz")["counts"].sum() == report["positions"]
    # the shuffled control keeps the rows but not their places
    args.shuffle, args.out = 3, str(tmp_path / "ctl")
    assert rc.main(args) == 0
    from safetensors.torch import load_file

    a = load_file(str(out / "decoder" / "flow.safetensors"))["input_embedding.weight"]
    b = load_file(str(tmp_path / "ctl" / "decoder" / "flow.safetensors"))["input_embedding.weight"]
    assert not torch.equal(a, b)
    assert torch.equal(a.float().sort(0).values, b.float().sort(0).values)
    with pytest.raises(ConfigError, match="--lm and/or --decoder"):
        rc.main(parser.parse_args(["--old-tokens", str(old_dir), "--new-tokens", str(new_dir), "--out", str(out)]))
    with pytest.raises(CheckpointError, match="1024 audio tokens"):
        rc.remap_lm(embedded_dir("lm"), torch.ones(8, 8) / 8, tmp_path / "x")
    with pytest.raises(CheckpointError, match="no flow.safetensors"):
        rc.remap_decoder(tmp_path, torch.ones(K, K) / K, tmp_path / "y")
    with pytest.raises(ValueError, match="share no"):
        rc.cooccurrence(old_dir, tmp_path, old_size=K, new_size=K, progress=False)
    n = len(np.load(old_dir / "u1.npy"))
    np.save(new_dir / "u1.npy", np.full(n, K + 3, dtype=np.int32))  # a code the codebook does not have
    _, files = rc.cooccurrence(old_dir, new_dir, old_size=K, new_size=K, progress=False)
    assert files["out_of_range"] == 1 and files["files_used"] == 4
