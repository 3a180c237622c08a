"""Adapting a tokenizer's encoder to new voices with its codebook and ASR branch frozen (train/tokenizer_adapt.py)."""

import argparse
import json
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from test_train_tokenizer import SPEC, _utts

from glm4voice.errors import CheckpointError, ConfigError
from glm4voice.train import tokenizer_adapt as tad
from glm4voice.train import tokenizer_asr as ta
from glm4voice.train import tokenizer_trainer as tt
from glm4voice.train.engine import TrainConfig, Trainer

WORDS = ["one", "two", "three", "four"]


def _tokenizer(tmp_path):
    """A tiny tokenizer with a word-piece branch and its vocabulary, exported as `train tokenizer-asr` does."""
    torch.manual_seed(0)
    model = tt.TokenizerTrainModel(replace(SPEC, vq_loss_scale=1.0)).eval()
    with torch.no_grad():
        model.vq.codebook.weight.normal_()
    byte_dir = tt.export(model, tmp_path / "tok")
    branch = tt.load_for_asr(byte_dir)
    piece_tok, pieces = ta.train_pieces(WORDS * 4, 270)
    branch.use_pieces(pieces)
    return ta.export(ta.CodesASR(branch), byte_dir, tmp_path / "tok_pieces", piece_tok), byte_dir


def _new_voice(utts):
    """The same words in a 'new voice': every tone an octave up, louder."""
    out = []
    for u in utts:
        t = np.arange(len(u.pcm)) / 16000
        f = 2 * (200 + 50 * WORDS.index(u.text))
        out.append(tt.Utterance(u.id + "n", u.text, "en", "new", (0.5 * np.sin(2 * np.pi * f * t) * 32767)
                                .astype(np.int16)))
    return out


@pytest.mark.parametrize("assign", tad.ASSIGN)
def test_only_the_pre_vq_encoder_trains_and_the_teacher_is_not_saved(tmp_path, assign):
    folder, _ = _tokenizer(tmp_path)
    branch = tt.load_for_asr(folder)
    model = tad.EncoderAdapt(branch, distill=1.0, assign=assign)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(tuple("branch." + p for p in tad.TRAINED_PREFIXES)) for n in trained)
    assert not any("codebook" in n or "embed_positions2" in n for n in trained)
    assert not any(k.startswith("teacher") for k in model.state_dict())
    piece_tok, _ = ta.read_pieces(folder / ta.ASR_PIECES)
    utts = _utts(8)
    batch = tad.AdaptBatches(utts, piece_tok, 8, seed=0, known_voices={"v"})(0, 0, 1)
    model.train()
    loss, stats = model(*batch)
    if assign == "ste":
        assert stats["distill_loss"] == pytest.approx(0.0, abs=1e-9)  # the student starts as the teacher
    else:  # cross-entropy of the soft assignment: positive, and below that of a uniform choice of codes
        assert 0.0 < stats["distill_loss"] < np.log(SPEC.codebook) and stats["tau"] > 0
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and grads <= trained
    assert not model.branch.vq.training  # the codebook never takes EMA updates
    res = tad.make_eval(utts[:4], utts[4:])(model)
    assert res["code_agreement"] == 1.0 and "wer_en" in res


@pytest.mark.parametrize("assign", tad.ASSIGN)
def test_adaptation_moves_the_new_voice_and_keeps_codebook_branch_and_known_codes(tmp_path, assign):
    folder, _ = _tokenizer(tmp_path)
    branch = tt.load_for_asr(folder)
    model = tad.EncoderAdapt(branch, distill=1.0, assign=assign)
    frozen = {k: v.clone() for k, v in branch.state_dict().items() if not k.startswith("encoder.")
              or "codebook" in k or "embed_positions2" in k}
    enc0 = {k: v.clone() for k, v in branch.state_dict().items() if k.startswith("encoder.layers.")}
    piece_tok, _ = ta.read_pieces(folder / ta.ASR_PIECES)
    known, new = _utts(8), _new_voice(_utts(8))
    batches = tad.AdaptBatches(known + new, piece_tok, 16, seed=0, known_voices={"v"})
    feats, mask, targets, flags = batches(0, 0, 1)
    assert flags.tolist() == [u.voice == "v" for u in batches.utts]  # batch of 16 = all, sorted by length
    with torch.no_grad():
        model.train()
        before = model(feats, mask, targets, flags)[1]["asr_loss"]
    torch.manual_seed(0)
    Trainer(TrainConfig(out_dir=str(tmp_path / "run"), steps=60, lr=3e-3, warmup=5, log_every=30, eval_every=0,
                        save_every=60), model, batch_fn=batches, loss_fn=lambda m, b: m(*b)).fit()
    with torch.no_grad():
        model.train()
        after = model(feats, mask, targets, flags)[1]
    assert after["asr_loss"] < before  # the frozen branch reads the adapted codes better
    for k, v in model.branch.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    assert any(not torch.equal(model.branch.state_dict()[k], v) for k, v in enc0.items())
    out = tad.export(model, folder, tmp_path / "adapted")
    again = tt.load_for_asr(out)
    assert again.pieces == model.branch.pieces
    assert (out / ta.ASR_PIECES).read_bytes() == (folder / ta.ASR_PIECES).read_bytes()
    sd, sd0 = load_file(str(out / "model.safetensors")), load_file(str(folder / "model.safetensors"))
    assert torch.equal(sd["codebook.weight"], sd0["codebook.weight"]) and torch.equal(sd["ema_count"], sd0["ema_count"])
    assert not torch.equal(sd["layers.0.self_attn.q_proj.weight"], sd0["layers.0.self_attn.q_proj.weight"])
    _, codes = again.transcribe(*tt.featurize([new[0].pcm]))
    _, codes_model = model.branch.transcribe(*tt.featurize([new[0].pcm]))
    assert codes == codes_model


def test_refuses_a_byte_branch_and_a_foreign_vocabulary(tmp_path):
    folder, byte_dir = _tokenizer(tmp_path)
    with pytest.raises(CheckpointError, match="word-piece"):
        tad.EncoderAdapt(tt.load_for_asr(byte_dir))
    with pytest.raises(ConfigError, match="distill"):
        tad.EncoderAdapt(tt.load_for_asr(folder), distill=-1.0)
    with pytest.raises(ConfigError, match="assign"):
        tad.EncoderAdapt(tt.load_for_asr(folder), assign="gumbel")
    other, _ = ta.train_pieces(["completely different words here"] * 4, 262)
    bad = tmp_path / "other.json"
    bad.write_text(other.to_str())
    corpus = _corpus(tmp_path)
    with pytest.raises(CheckpointError, match="not the vocabulary"):
        tad.main(_args(tmp_path, folder, corpus, pieces=bad))
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a word-piece vocabulary"):
        tad.main(_args(tmp_path, folder, corpus, pieces=tmp_path / "junk.json"))


def _corpus(tmp_path):
    """Known voice 'v' (train + held-out) and a new voice (train)."""
    root = tmp_path / "corpus"
    (root / "audio16k").mkdir(parents=True, exist_ok=True)
    utts = _utts(6) + _new_voice(_utts(4))
    rows = []
    for i, u in enumerate(utts):
        path = f"audio16k/{u.id}.flac"
        sf.write(root / path, u.pcm, 16000)
        rows.append({"id": u.id, "text": u.text, "language": "en", "voice": u.voice, "style": "", "role": "question",
                     "item_id": f"i{i}", "split": "heldout" if i in (4, 5) else "train",
                     "duration": len(u.pcm) / 16000, "path": path, "sample_rate": 16000})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    teacher = tmp_path / "teacher_corpus"
    teacher.mkdir(exist_ok=True)
    (teacher / "audio16k").symlink_to(root / "audio16k")
    (teacher / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    return str(root)


def _args(tmp_path, folder, corpus, **kw):
    p = argparse.ArgumentParser()
    tad.add_args(p)
    argv = ["--tokenizer", str(folder), "--corpus", corpus, "--teacher-corpus", str(tmp_path / "teacher_corpus"),
            "--out", str(tmp_path / "run"), "--steps", "6", "--batch-size", "4", "--eval-every", "3",
            "--save-every", "3", "--export", str(tmp_path / "export")]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return p.parse_args(argv)


def test_cli_trains_resumes_and_exports(tmp_path):
    folder, _ = _tokenizer(tmp_path)
    corpus = _corpus(tmp_path)
    assert tad.main(_args(tmp_path, folder, corpus, until=3)) == 0
    assert not (tmp_path / "export").exists()
    mid = tmp_path / "mid"
    args = _args(tmp_path, folder, corpus, export=mid)
    args.export_only = True
    assert tad.main(args) == 0  # the step-3 encoder, exported without training on
    assert not torch.equal(load_file(str(mid / "model.safetensors"))["conv1.weight"],
                           load_file(str(folder / "model.safetensors"))["conv1.weight"])
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["new_voices"] == ["new"]
    assert tad.main(_args(tmp_path, folder, corpus)) == 0  # resumes at step 3
    evals = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    evals = [e for e in evals if e["kind"] == "eval"]
    assert [e["step"] for e in evals] == [3, 6] and all(0.0 <= e["code_agreement"] <= 1.0 for e in evals)
    assert tt.load_for_asr(tmp_path / "export").pieces is not None
    args = _args(tmp_path, folder, corpus, out=tmp_path / "empty_run")
    args.export_only = True
    with pytest.raises(ConfigError, match="nothing to export"):
        tad.main(args)
    with pytest.raises(ConfigError, match="--pieces"):  # an older export without its vocabulary
        (tmp_path / "export" / ta.ASR_PIECES).unlink()
        tad.main(_args(tmp_path, tmp_path / "export", corpus, out=tmp_path / "run2"))


def _tone(freq, seconds=1.0):
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)


def test_shifted_features_move_frequencies_and_keep_the_frames():
    pcm = _tone(500.0)
    feats, mask = tt.featurize([pcm])
    frames = int(mask[0].sum())
    same = tt.shifted_features(pcm, 0.0, frames)
    assert torch.equal(same, feats[0, :, :frames])
    up, down = tt.shifted_features(pcm, 12.0, frames), tt.shifted_features(pcm, -12.0, frames)
    assert up.shape == down.shape == (feats.shape[1], frames)  # frame-aligned with the clean utterance
    peak = [int(f[:, frames // 2].argmax()) for f in (down, same, up)]
    assert peak[0] < peak[1] < peak[2]  # an octave down / up moves the tone's mel band
    octave_up = tt.featurize([_tone(1000.0)])[0][0, :, frames // 2].argmax()
    assert abs(peak[2] - int(octave_up)) <= 1
    bright = tt.tilt(same, 12.0)
    gain = (bright - same).mean(-1)
    assert float(gain[-1] - gain[0]) == pytest.approx(12.0 / 40.0, rel=1e-4)
    assert float(gain.mean()) == pytest.approx(0, abs=1e-6)


def test_consistency_batches_pair_clean_and_augmented_copies(tmp_path):
    folder, _ = _tokenizer(tmp_path)
    piece_tok, _ = ta.read_pieces(folder / ta.ASR_PIECES)
    utts = _utts(8)
    plain = tad.AdaptBatches(utts, piece_tok, 8, seed=0, known_voices=None)(0, 0, 1)
    untouched = tad.AdaptBatches(utts, piece_tok, 8, seed=0, known_voices=None, consistency=True, pitch=3,
                                 clean_share=1.0)(0, 0, 1)
    assert len(plain) == 4 and len(untouched) == 5
    feats, mask, _, known, clean = untouched
    assert torch.equal(feats, clean) and torch.equal(clean, plain[0]) and bool(known.all())
    feats, mask, _, _, clean = tad.AdaptBatches(utts, piece_tok, 8, seed=0, known_voices=None, consistency=True,
                                                pitch=3, tilt=6, clean_share=0.0)(0, 0, 1)
    assert feats.shape == clean.shape and torch.equal(clean, plain[0])
    for b in range(8):
        n = int(mask[b].sum())
        assert not torch.equal(feats[b, :, :n], clean[b, :, :n])  # every copy augmented
        assert torch.equal(feats[b, :, n:], clean[b, :, n:])  # padding untouched
    single = tad.AdaptBatches(utts, piece_tok, 8, seed=0, known_voices=None, pitch=3)(0, 0, 1)
    assert len(single) == 4 and not torch.equal(single[0], plain[0])  # the trainer's augmentation, no clean copy
    with pytest.raises(ConfigError, match="clean-share"):
        tad.AdaptBatches(utts, piece_tok, 8, seed=0, known_voices=None, consistency=True, clean_share=1.5)


def test_consistency_training_gives_shifted_speech_the_clean_codes(tmp_path):
    folder, _ = _tokenizer(tmp_path)
    branch = tt.load_for_asr(folder)
    utts = _utts(8)
    with torch.no_grad():  # a codebook of states of clean and pitch-shifted tones: the codes hear the pitch
        states = []
        for shift in (-4.0, 0.0, 4.0):
            feats, mask = tt.featurize([u.pcm for u in utts[:4]])
            for b, u in enumerate(utts[:4]):
                n = int(mask[b].sum())
                feats[b, :, :n] = tt.shifted_features(u.pcm, shift, n)
            h, valid = branch.encode(feats, mask)
            states.append(h[valid])
        states = torch.cat(states)
        pick = torch.randperm(len(states), generator=torch.Generator().manual_seed(0))[:SPEC.codebook]
        branch.vq.codebook.weight.copy_(states[pick])
    model = tad.EncoderAdapt(branch, distill=1.0, assign="ste", ctc_weight=0.0)
    piece_tok, _ = ta.read_pieces(folder / ta.ASR_PIECES)
    batches = tad.AdaptBatches(utts, piece_tok, 8, seed=0, known_voices=None, consistency=True, pitch=4,
                               clean_share=0.0)

    def agreement():  # codes of fixed pitch-shifted copies against the original tokenizer's codes of the originals
        feats, mask = tt.featurize([u.pcm for u in utts])
        shifted = feats.clone()
        for b, u in enumerate(utts):
            n = int(mask[b].sum())
            shifted[b, :, :n] = tt.shifted_features(u.pcm, 3.0 if b % 2 else -3.0, n)
        with torch.no_grad():
            _, valid, old = model.teacher.read(feats, mask)
            new = model.branch.read(shifted, mask)[2]
        return float((new == old)[valid].float().mean())

    before = agreement()
    feats, mask, targets, known, clean = batches(0, 0, 1)
    ste = tad.EncoderAdapt(tt.load_for_asr(folder), assign="ste").train()
    with torch.no_grad():  # the teacher reads the clean copy: no distillation loss only when the student does too
        assert ste(clean, mask, targets, known, clean)[1]["distill_loss"] == pytest.approx(0.0, abs=1e-9)
        assert ste(feats, mask, targets, known, clean)[1]["distill_loss"] > 1e-5
    torch.manual_seed(0)
    Trainer(TrainConfig(out_dir=str(tmp_path / "run"), steps=120, lr=1e-3, warmup=5, log_every=60, eval_every=0,
                        save_every=120), model, batch_fn=batches, loss_fn=lambda m, b: m(*b)).fit()
    assert before < 0.95 and agreement() > before + 0.05
