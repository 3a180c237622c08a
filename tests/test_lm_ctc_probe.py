"""scripts/lm_ctc_probe.py: a linear CTC head on a frozen LM's block learns the toy transcripts; the LM stays put."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from test_lm_samples import make_corpus, make_tokenizer_dir
from test_train_lm import export_tiny_lm, load_script

from glm4voice.train.tokenizer_asr import train_pieces


def test_probe_learns_on_frozen_states(tmp_path, capsys):
    mod = load_script("lm_ctc_probe")
    corpus = make_corpus(tmp_path / "corpus", broken=False)
    export_tiny_lm(corpus, make_tokenizer_dir(tmp_path / "tok"), tmp_path)
    texts = [json.loads(line)["text"] for line in open(Path(corpus) / "manifest.jsonl", encoding="utf-8")]
    piece_tok, _ = train_pieces(texts, 300)
    (tmp_path / "pieces.json").write_text(piece_tok.to_str())
    before = (tmp_path / "lm" / "model.safetensors").read_bytes()
    out = mod.main(["--corpus", corpus, "--lm", str(tmp_path / "lm"), "--layer", "1", "--pieces",
                    str(tmp_path / "pieces.json"), "--steps", "60", "--batch", "2", "--seq-len", "256",
                    "--eval-every", "30", "--eval-batches", "2", "--eval-split", "train", "--lr", "0.2",
                    "--out", str(tmp_path / "p.json")])
    first, last = out["curve"][0], out["curve"][-1]
    assert [c["step"] for c in out["curve"]] == [0, 30, 60]
    assert last["ctc_loss"] < 0.5 * first["ctc_loss"] and last["per"] < first["per"]
    assert last["utterances"] > 0 and out["examples"] and json.loads((tmp_path / "p.json").read_text())["layer"] == 1
    assert (tmp_path / "lm" / "model.safetensors").read_bytes() == before
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["per"] == last["per"]
    torch.set_num_threads(2)
