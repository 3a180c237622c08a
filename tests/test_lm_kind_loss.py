"""scripts/lm_kind_loss.py: per-kind losses on training vs held-out batches show a toy LM's memorisation."""

from __future__ import annotations

import json

import torch
from test_lm_samples import make_corpus, make_tokenizer_dir
from test_train_lm import export_tiny_lm, load_script


def test_kind_losses_show_the_gap_between_splits(tmp_path, capsys):
    mod = load_script("lm_kind_loss")
    corpus = make_corpus(tmp_path / "corpus", broken=False)
    lm = export_tiny_lm(corpus, make_tokenizer_dir(tmp_path / "tok"), tmp_path, "--lr", 1e-2, "--warmup", 5,
                        "--mix", "asr=1", steps=80, batch_size=2, seq_len=256)
    assert mod.main(["--corpus", corpus, "--lm", lm, lm, "--kinds", "asr,sft", "--batches", "2", "--batch-size", "2",
                     "--seq-len", "256", "--out", str(tmp_path / "k.json")]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {lm} |")]
    assert len(table) == 4  # two LMs (the same one twice) x two kinds
    rows = json.loads((tmp_path / "k.json").read_text())
    get = {(i // 4, r["split"], r["kind"]): r for i, r in enumerate(rows)}
    assert {(s, k) for _, s, k in get} == {("train", "asr"), ("heldout", "asr"), ("train", "sft"), ("heldout", "sft")}
    for key in [k for k in get if k[0] == 0]:  # the same batches for every LM: equal numbers for the same LM
        assert get[key]["eval_text_loss"] == get[(1, *key[1:])]["eval_text_loss"]
    # 80 steps of ASR on a few utterances: the training transcripts are learnt, the held-out one is not
    assert get[(0, "train", "asr")]["eval_text_loss"] < 0.5 * get[(0, "heldout", "asr")]["eval_text_loss"]
    torch.set_num_threads(2)
