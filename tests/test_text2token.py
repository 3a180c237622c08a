"""Text-to-token model: sample layout, batched generation equals one-by-one, a tiny model learns its pairs and
speaks them back, export/load, and the interleave command end to end."""

import argparse
import json

import numpy as np
import pytest
import torch
from test_lm_samples import CODEBOOK, TOY_ITEMS, fake_codes, load_tokenizer, make_corpus, make_tokenizer_dir

from glm4voice.train import interleave as il
from glm4voice.train import lm_samples as ls
from glm4voice.train import text2token as t2t
from glm4voice.train.engine import read_metrics

TINY = ["--hidden", "64", "--layers", "2", "--heads", "2", "--kv-heads", "1", "--head-dim", "16", "--ffn", "128",
        "--seq-length", "256"]


@pytest.fixture(scope="module")
def tokdir(tmp_path_factory):
    return make_tokenizer_dir(tmp_path_factory.mktemp("tok"))


def _random_model(tok, seed=0):
    from glm4voice.lm.model import GLM

    torch.manual_seed(seed)
    m = GLM(t2t.LMSpec(hidden=32, layers=1, heads=2, kv_heads=1, head_dim=16, ffn=64, seq_length=1024).glm_config(tok))
    m.init_weights(0.5)  # large weights: confident, varied predictions
    return m


def test_sample_layout(tokdir):
    tok = load_tokenizer(tokdir)
    sp = ls.Specials.from_tokenizer(tok, CODEBOOK)
    codes = fake_codes("Paris.")
    s = t2t.t2t_sample(tok, sp, "Paris.", codes)
    prompt = [sp.gmask, sp.sop, *tok.encode("Paris."), sp.boa]
    assert s.ids == prompt + [sp.audio_offset + int(c) for c in codes] + [sp.eoa]
    assert s.mask == [False] * len(prompt) + [True] * (len(codes) + 1)


def test_batched_generation_equals_one_by_one(tokdir):
    tok = load_tokenizer(tokdir)
    model = t2t.TextToToken(_random_model(tok), tok, ls.Specials.from_tokenizer(tok, CODEBOOK))
    texts = ["Paris.", "What is the capital of France?", "a dog ran home."]
    batched = model.generate(texts, temperature=0, max_codes=12)
    for text, codes in zip(texts, batched, strict=True):
        (alone,) = model.generate([text], temperature=0, max_codes=12)
        assert np.array_equal(codes, alone)
        assert 0 < len(codes) <= 12 and codes.min() >= 0 and codes.max() < CODEBOOK
    a = model.generate(texts, temperature=1.0, seed=5, max_codes=12)
    b = model.generate(texts, temperature=1.0, seed=5, max_codes=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _train(corpus, tokdir, out, export, *extra, steps=40):
    p = argparse.ArgumentParser()
    t2t.add_args(p)
    args = p.parse_args([str(a) for a in (
        "--corpus", corpus, "--tokenizer", tokdir, "--out", out, "--export", export, "--export-dtype", "fp32",
        "--steps", steps, "--batch-size", 2, "--seq-len", 64, "--lr", 1e-2, "--warmup", 5, "--log-every", 5,
        "--save-every", 1000, "--eval-every", 0, *TINY, *extra)])
    assert t2t.main(args) == 0
    return [r for r in read_metrics(str(out)) if r["kind"] == "train"]


def test_tiny_model_learns_and_speaks_its_pairs(tokdir, tmp_path):
    items = [it for it in TOY_ITEMS if it[0] in ("arith-0", "cap-0")]
    corpus = make_corpus(tmp_path / "c", voices=("v1",), broken=False, items=items)
    rows = _train(corpus, tokdir, tmp_path / "run", tmp_path / "model", "--role", "answer", steps=60)
    assert rows[-1]["loss"] < 0.2 * rows[0]["loss"]
    model = t2t.TextToToken.from_dir(str(tmp_path / "model"))
    spoken = model.generate(["Five.", "Paris."], temperature=0)
    for text, codes in zip(["Five.", "Paris."], spoken, strict=True):
        assert np.array_equal(codes, fake_codes(text)), (text, codes)  # learnt, and stops at <|end_of_audio|>


def test_interleave_command_writes_documents_the_lm_reads(tokdir, tmp_path):
    corpus = make_corpus(tmp_path / "c", broken=False)
    _train(corpus, tokdir, tmp_path / "run", tmp_path / "model", steps=2)
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat on the mat while a dog ran home and the farmer watched\nshort\n")
    p = argparse.ArgumentParser()
    il.add_args(p)
    out = tmp_path / "inter.jsonl"
    assert il.main(p.parse_args(["--model", str(tmp_path / "model"), "--corpus", corpus, "--texts", str(texts),
                                 "--out", str(out), "--temperature", "1.0"])) == 0
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    assert docs and all(any("audio" in s for s in d["segments"]) for d in docs)
    assert "the cat sat on the mat while a dog ran home and the farmer watched" in {d["source"] for d in docs}
    data = ls.load_lm_data(corpus, interleaved_files=[str(out)])
    assert len(data.interleaved) == len(docs)
    tok = load_tokenizer(tokdir)
    sp = ls.Specials.from_tokenizer(tok, CODEBOOK)
    sample = ls.interleaved_sample(tok, sp, data.interleaved[0])
    assert sp.boa in sample.ids and sample.ids[-1] == sp.eot
