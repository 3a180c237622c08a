"""Refitting a tokenizer's ASR branch on frozen codes with a word-piece CTC head or attention decoder
(train/tokenizer_asr.py)."""

import argparse
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from test_train_tokenizer import SPEC, _utts

from glm4voice.errors import ConfigError
from glm4voice.train import tokenizer_asr as ta
from glm4voice.train import tokenizer_trainer as tt

TEXTS = ["what is two plus two", "what is one plus one", "hello there", "the capital of france is paris"]


def _model(tmp_path):
    torch.manual_seed(0)
    model = tt.TokenizerTrainModel(SPEC).eval()
    with torch.no_grad():
        model.vq.codebook.weight.normal_()
    return tt.export(model, tmp_path / "tok")


def _rows(n_each=6):
    rng = np.random.default_rng(0)
    rows = []
    for k, text in enumerate(TEXTS):  # each transcript has its own code pattern, with a little jitter
        base = (np.arange(6 + 2 * k) * (k + 3)) % SPEC.codebook
        for j in range(n_each):
            codes = base.copy()
            codes[rng.integers(len(codes))] = rng.integers(SPEC.codebook)
            rows.append({"id": f"{k}-{j}", "text": text, "language": "en", "codes": codes.astype(np.int64)})
    return rows


def test_word_piece_head_learns_codes_and_survives_export(tmp_path):
    from glm4voice.train.engine import TrainConfig, Trainer

    folder = _model(tmp_path)
    branch = tt.load_for_asr(folder)
    piece_tok, pieces = ta.train_pieces(TEXTS * 3, 300)
    assert 256 < len(pieces) <= 300 and all(bytes([b]) in pieces for b in range(256))
    branch.use_pieces(pieces)
    model = ta.CodesASR(branch)
    frozen = {k: v.clone() for k, v in branch.state_dict().items() if k.startswith(("encoder.", "vq."))}
    rows = _rows()
    torch.manual_seed(0)
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path / "run"), steps=250, lr=3e-3, warmup=10, log_every=50,
                                  eval_every=0, save_every=250), model,
                      batch_fn=ta.CodeBatches(rows, piece_tok, 8, seed=0), loss_fn=lambda m, b: m(*b))
    trainer.fit()
    model.eval()
    clean = [r for r in rows if r["id"].endswith("-0")]
    hyps = model.transcribe_codes(*ta.pad_codes(clean))
    assert hyps == [r["text"] for r in clean]
    assert ta.make_eval(clean)(model) == {"wer_en": 0.0}
    for k, v in branch.state_dict().items():  # the tokenizer itself is untouched: the codes stay valid
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    out = ta.export(model, folder, tmp_path / "refit")
    meta = json.loads((out / tt.ASR_BRANCH_CONFIG).read_text())
    assert meta["text"] == "pieces" and len(meta["pieces"]) == len(pieces)
    assert (out / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    again = tt.load_for_asr(out)
    assert again.pieces == pieces
    assert ta.CodesASR(again).transcribe_codes(*ta.pad_codes(clean)) == hyps
    # audio in -> codes -> the word-piece branch, as `glm4voice eval tokenizer` calls it
    texts, codes = again.transcribe(*tt.featurize([u.pcm for u in _utts(2)]))
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts) and all(codes)


def test_code_noise_is_seeded_and_keeps_padding():
    rows = _rows(2)
    piece_tok, _ = ta.train_pieces(TEXTS * 3, 280)
    clean = ta.CodeBatches(rows, piece_tok, 8, seed=1)
    noisy = ta.CodeBatches(rows, piece_tok, 8, seed=1, noise=0.5)
    c0, v0, t0 = clean(3, 0, 1)
    c1, v1, t1 = noisy(3, 0, 1)
    c2, _, _ = noisy(3, 0, 1)
    assert torch.equal(c1, c2) and torch.equal(v0, v1) and t0 == t1
    assert (c1[~v1] == -1).all() and (c0[v0] != c1[v1]).any()
    with pytest.raises(ConfigError, match="code-noise"):
        ta.CodeBatches(rows, piece_tok, 8, seed=1, noise=1.0)


def _corpus(tmp_path, folder, *, wrong_cache: bool):
    """A two-utterance corpus (manifest + FLAC + cached codes of ``folder``'s tokenizer, or wrong ones)."""
    root = tmp_path / "corpus"
    (root / "tokens").mkdir(parents=True)
    (root / "audio16k").mkdir()
    model = tt.load_for_asr(folder)
    rows = []
    for i, (u, split) in enumerate(zip(_utts(6), ["train"] * 4 + ["heldout"] * 2, strict=True)):
        path = f"audio16k/u{i}.flac"
        sf.write(root / path, u.pcm, 16000)
        _, codes = model.transcribe(*tt.featurize([u.pcm]))
        codes = np.asarray(codes[0])
        if wrong_cache:
            codes = (codes + 1) % SPEC.codebook
        np.save(root / "tokens" / f"u{i}.npy", codes.astype(np.int32))
        rows.append({"id": f"u{i}", "text": u.text, "language": "en", "voice": "v", "style": "", "role": "question",
                     "item_id": f"i{i}", "split": split, "duration": len(u.pcm) / 16000, "path": path,
                     "sample_rate": 16000})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root)


def _args(tmp_path, folder, corpus, **kw):
    p = argparse.ArgumentParser()
    ta.add_args(p)
    argv = ["--tokenizer", str(folder), "--corpus", corpus, "--out", str(tmp_path / "run"), "--steps", "6",
            "--batch-size", "2", "--pieces", "270", "--eval-every", "3", "--save-every", "3",
            "--export", str(tmp_path / "export")]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return p.parse_args(argv)


def test_cli_trains_resumes_and_exports(tmp_path):
    folder = _model(tmp_path)
    corpus = _corpus(tmp_path, folder, wrong_cache=False)
    assert ta.main(_args(tmp_path, folder, corpus, until=3)) == 0
    vocab = (tmp_path / "run" / "pieces.json").read_text()
    assert not (tmp_path / "export").exists()
    assert ta.main(_args(tmp_path, folder, corpus)) == 0  # resumes at step 3 with the saved vocabulary
    assert (tmp_path / "run" / "pieces.json").read_text() == vocab
    steps = [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")
             if json.loads(line)["kind"] == "eval"]
    assert steps == [3, 6]
    exported = tt.load_for_asr(tmp_path / "export")
    assert exported.pieces is not None  # and the vocabulary that makes its targets travels with it
    assert ta.read_pieces(tmp_path / "export" / ta.ASR_PIECES)[1] == exported.pieces
    # a refitted branch can be refitted again, here with the attention decoder (its post-VQ layers are kept)
    assert ta.main(_args(tmp_path, tmp_path / "export", corpus, out=tmp_path / "run2", export=tmp_path / "att",
                         head="attention", asr_layers=1, asr_dim=64)) == 0
    meta = json.loads((tmp_path / "att" / tt.ASR_BRANCH_CONFIG).read_text())
    assert meta["spec"]["ctc"] == 0 and meta["spec"]["asr_layers"] == 1 and meta["spec"]["asr_dim"] == 64
    att = tt.load_for_asr(tmp_path / "att")
    assert att.pieces is not None and not isinstance(att.asr, tt.CTCHead)
    texts, codes = att.transcribe(*tt.featurize([u.pcm for u in _utts(2)]))
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts) and all(codes)
    with pytest.raises(ConfigError, match="multiple"):
        ta.main(_args(tmp_path, folder, corpus, out=tmp_path / "run3", head="attention", asr_dim=65))
    with pytest.raises(ConfigError, match="--head attention"):  # a CTC head has no decoder to size
        ta.main(_args(tmp_path, folder, corpus, out=tmp_path / "run4", asr_layers=3))


def test_attention_head_learns_codes_and_survives_export(tmp_path):
    """The paper's reader of the codes: a Whisper-style decoder over word pieces (``--head attention``)."""
    from dataclasses import replace

    from glm4voice.train.engine import TrainConfig, Trainer

    folder = _model(tmp_path)
    branch = tt.load_for_asr(folder)
    branch.spec = replace(branch.spec, ctc=0, asr_layers=1, asr_dim=64)
    piece_tok, pieces = ta.train_pieces(TEXTS * 3, 300)
    branch.use_pieces(pieces)
    assert branch.asr.cfg.vocab_size == len(pieces) + 2 and branch.asr.cfg.eos_id == len(pieces) + 1
    model = ta.CodesASR(branch)
    rows = _rows()
    torch.manual_seed(0)
    Trainer(TrainConfig(out_dir=str(tmp_path / "run"), steps=300, lr=3e-3, warmup=10, log_every=50, eval_every=0,
                        save_every=300), model, batch_fn=ta.CodeBatches(rows, piece_tok, 8, seed=0),
            loss_fn=lambda m, b: m(*b)).fit()
    model.eval()
    clean = [r for r in rows if r["id"].endswith("-0")]
    hyps = model.transcribe_codes(*ta.pad_codes(clean))
    assert hyps == [r["text"] for r in clean]
    out = ta.export(model, folder, tmp_path / "refit")
    again = tt.load_for_asr(out)
    assert json.loads((out / tt.ASR_BRANCH_CONFIG).read_text())["spec"]["ctc"] == 0
    assert ta.CodesASR(again).transcribe_codes(*ta.pad_codes(clean)) == hyps


def test_greedy_attention_decoding_stops_without_eos():
    """An untrained decoder rarely says EOS: greedy decoding stops at 4 tokens per memory position."""
    from glm4voice.train.asr_head import ASRHead, ASRHeadConfig

    torch.manual_seed(0)
    head = ASRHead(ASRHeadConfig(vocab_size=50, dim=32, layers=1, heads=4, bos_id=48, eos_id=49), 32).eval()
    with torch.no_grad():
        head.ln.bias.fill_(1.0)  # the final LayerNorm's output sums to its bias's sum: EOS's logit is -320
        head.embed.weight[49] = -10.0
    out = head.greedy(torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.bool))
    assert [len(o) for o in out] == [4 * 5 + 7] * 2
    assert [len(o) for o in head.greedy(torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.bool),
                                        per_position=1.0)] == [5 + 7] * 2  # word pieces: about 1 per code


def test_cli_refuses_a_cache_of_another_tokenizer(tmp_path):
    folder = _model(tmp_path)
    corpus = _corpus(tmp_path, folder, wrong_cache=True)
    with pytest.raises(ConfigError, match="re-cache"):
        ta.main(_args(tmp_path, folder, corpus))
    assert os.path.isdir(corpus)


def test_incremental_greedy_equals_greedy_over_full_forward_passes():
    """The cached decoding (memory keys/values once, self-attention cache) picks what a full forward pass over the
    prefix picks at every step; padded memory positions are ignored either way."""
    from glm4voice.train.asr_head import ASRHead, ASRHeadConfig

    torch.manual_seed(1)
    head = ASRHead(ASRHeadConfig(vocab_size=40, dim=32, layers=2, heads=4, bos_id=38, eos_id=39), 24).eval()
    memory = torch.randn(3, 7, 24)
    valid = torch.ones(3, 7, dtype=torch.bool)
    valid[1, 5:] = False
    got = head.greedy(memory, valid, max_len=12)
    seq = torch.full((3, 1), 38)
    with torch.no_grad():
        for _ in range(11):
            seq = torch.cat([seq, head(seq, memory, valid)[:, -1].argmax(-1, keepdim=True)], 1)
    want = [row[: row.index(39)] if 39 in row else row for row in seq[:, 1:].tolist()]
    assert got == want and any(len(w) > 3 for w in want)


def test_post_full_lets_the_reader_look_past_the_encoder_blocks():
    """--post-full: the post-VQ layers see the whole utterance; by default the first position only sees its own
    block (the encoder's block-causal attention), so a change far ahead does not reach it."""
    from dataclasses import replace

    torch.manual_seed(0)
    block = SPEC.block // 4  # 12.5 Hz positions per block
    codes = torch.randint(0, SPEC.codebook, (1, 3 * block))
    later = codes.clone()
    later[0, -1] = (later[0, -1] + 1) % SPEC.codebook
    valid = torch.ones_like(codes, dtype=torch.bool)
    for full in (0, 1):
        model = tt.TokenizerTrainModel(replace(SPEC, post_full=full)).eval()
        with torch.no_grad():
            a, b = (model.memory(model.vq.codebook(c), valid) for c in (codes, later))
        assert torch.equal(a[0, :block], b[0, :block]) is (not full)
