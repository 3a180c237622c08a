import numpy as np
import pytest
import torch

from glm4voice.tokenizer.speech_tokenizer import SpeechTokenizer
from glm4voice.train import tokenizer_trainer as tt
from glm4voice.train.engine import TrainConfig, Trainer

SPEC = tt.TokenizerTrainSpec(d_model=32, heads=2, ffn=64, layers=2, post_layers=1, codebook=16, block=20,
                             asr_dim=32, asr_layers=1, asr_heads=2, vq_warmup=10)


def _utts(n=12):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        f = 200 + 50 * (i % 4)
        t = np.arange(int(16000 * (0.5 + 0.1 * (i % 5)))) / 16000
        pcm = (0.3 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(t.size)) * 32767
        out.append(tt.Utterance(f"u{i}", ["one", "two", "three", "four"][i % 4], "en", "v", pcm.astype(np.int16)))
    return out


def test_training_lowers_asr_loss_and_uses_codes(tmp_path):
    torch.manual_seed(0)
    model = tt.TokenizerTrainModel(SPEC)
    utts = _utts()
    batches = tt.Batches(utts, 6, seed=0)
    with torch.no_grad():
        first = model.eval()(*batches(0, 0, 1))[0].item()
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path), steps=40, lr=3e-3, warmup=5, log_every=10, eval_every=0,
                                  save_every=40), model, batch_fn=batches, loss_fn=lambda m, b: m(*b))
    trainer.fit()
    with torch.no_grad():
        last = model.eval()(*batches(0, 0, 1))[0].item()
    assert last < 0.5 * first
    assert int(model.vq.updates) == 30  # 10 warm-up steps without the bottleneck
    assert (model.vq.ema_count > 0.03).sum() > 4  # the data-driven init spread the codes

def test_export_loads_and_gives_training_codes(tmp_path):
    torch.manual_seed(0)
    model = tt.TokenizerTrainModel(SPEC).eval()
    utts = _utts(4)
    with torch.no_grad():
        model.vq.codebook.weight.normal_()
    _, codes = model.transcribe(*tt.featurize([u.pcm for u in utts]))
    folder = tt.export(model, tmp_path / "tok")
    tok = SpeechTokenizer.from_pretrained(str(folder))
    got = tok.encode([torch.from_numpy(u.pcm.astype(np.float32) / 32768) for u in utts])
    assert got == codes
    assert all(len(c) == int(np.ceil(len(u.pcm) / 1280)) for c, u in zip(got, utts, strict=True))
    again = tt.load_for_asr(folder)
    texts, codes2 = again.transcribe(*tt.featurize([u.pcm for u in utts]))
    assert codes2 == codes and len(texts) == 4


def test_evaluation_during_vq_warmup_scores_the_unquantised_branch():
    torch.manual_seed(0)
    model = tt.TokenizerTrainModel(SPEC).eval()
    utts = _utts(4)
    feats = tt.featurize([u.pcm for u in utts])
    with torch.no_grad():
        model.vq.codebook.weight.zero_()  # a codebook that fits nothing: every position maps to code 0
    quantised, codes = model.transcribe(*feats)
    plain, codes_plain = model.transcribe(*feats, quantize=False)
    assert codes == codes_plain and quantised != plain  # same codes reported, different ASR input
    evaluate = tt.make_eval(utts)
    assert not model.quantizing and evaluate(model)["quantized"] == 0
    model.steps_seen.fill_(SPEC.vq_warmup)
    assert model.quantizing and evaluate(model)["quantized"] == 1


def test_vq_loss_scale_sets_the_commitment_weight():
    utts = _utts(4)
    batch = tt.Batches(utts, 4, seed=0)(0, 0, 1)
    stats = {}
    for scale in (10.0, 1.0):
        torch.manual_seed(0)
        model = tt.TokenizerTrainModel(tt.TokenizerTrainSpec(**{**SPEC.__dict__, "vq_warmup": 0,
                                                                "vq_loss_scale": scale})).eval()
        with torch.no_grad():
            model.vq.codebook.weight.normal_()
        loss, stats[scale] = model(*batch)
        assert loss.item() == pytest.approx(stats[scale]["asr_loss"] + stats[scale]["vq_loss"], rel=1e-4)
    assert stats[10.0]["vq_loss"] > 0
    assert stats[10.0]["vq_loss"] == pytest.approx(10 * stats[1.0]["vq_loss"], rel=1e-4)
    assert stats[10.0]["asr_loss"] == pytest.approx(stats[1.0]["asr_loss"], rel=1e-4)


def test_augmentation_is_seeded_and_off_by_default():
    utts = _utts(6)
    plain = tt.Batches(utts, 3, seed=0)(5, 0, 1)
    ordered = [u.pcm for u in sorted(utts, key=lambda u: len(u.pcm))]
    assert any(torch.equal(plain[0], tt.featurize(ordered[i:i + 3])[0]) for i in range(4))  # no augmentation
    aug = tt.Batches(utts, 3, seed=0, speed=0.2, spec_masks=2)
    a, b = aug(5, 0, 1), aug(5, 0, 1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]  # same step, same batch (resume)
    assert a[2] == plain[2]  # same utterances and transcripts, only the audio changed
    assert not torch.equal(a[1].sum(1), plain[1].sum(1))  # resampled: other lengths
    assert torch.isfinite(a[0]).all()
    with pytest.raises(ValueError, match="speed perturbation"):
        tt.Batches(utts, 3, seed=0, speed=0.7)


def test_spec_masks_touch_only_valid_frames():
    utts = _utts(4)
    plain = tt.Batches(utts, 4, seed=0)(1, 0, 1)
    masked = tt.Batches(utts, 4, seed=0, spec_masks=3)(1, 0, 1)
    changed = (plain[0] != masked[0])
    assert changed.any()
    assert not (changed & ~plain[1][:, None, :]).any()  # padding frames untouched


@pytest.mark.parametrize("alpha", [0.9, 1.12])
def test_vtlp_moves_a_formant_by_alpha_and_keeps_the_band_edge(alpha):
    from glm4voice.audio import mel_centres

    n = 128
    centres = mel_centres(n)
    feats = torch.zeros(n, 5)
    src = int(np.searchsorted(centres, 1500.0))  # a "formant" at ~1.5 kHz, below the knee
    feats[src] = 1.0
    feats[-1] = 2.0  # the top bin
    assert torch.equal(tt.vtlp_warp(feats, 1.0), feats)
    out = tt.vtlp_warp(feats, alpha)
    peak = int(out[:-3, 0].argmax())
    assert out[peak, 0] > 0.5 and abs(np.log(centres[peak] / (alpha * centres[src]))) < 0.03
    assert out[-1, 0] == pytest.approx(2.0)  # 8 kHz stays at 8 kHz
    assert torch.equal(out[:, 0], out[:, 4])  # frames are warped alike


def test_vtlp_batches_are_seeded_and_leave_lengths_and_padding():
    utts = _utts(4)
    plain = tt.Batches(utts, 4, seed=0)(3, 0, 1)
    warped = tt.Batches(utts, 4, seed=0, vtlp=0.15)
    a, b = warped(3, 0, 1), warped(3, 0, 1)
    assert torch.equal(a[0], b[0])  # same step, same batch (resume)
    assert torch.equal(a[1], plain[1]) and a[2] == plain[2]  # same utterances, lengths and transcripts
    assert not torch.equal(plain[0], a[0])
    flat = (plain[0] == plain[0][:, :1]).all(1)  # frames at the floor in every bin (padding): a warp keeps them
    assert flat.any() and torch.equal(a[0].transpose(1, 2)[flat], plain[0].transpose(1, 2)[flat])
    with pytest.raises(ValueError, match="VTLP"):
        tt.Batches(utts, 3, seed=0, vtlp=0.6)


def test_pitch_and_tilt_batches_are_seeded_and_keep_lengths_padding_and_older_draws():
    utts = _utts(4)
    plain = tt.Batches(utts, 4, seed=0)(3, 0, 1)
    vtlp_only = tt.Batches(utts, 4, seed=0, vtlp=0.1)(3, 0, 1)
    shifted = tt.Batches(utts, 4, seed=0, pitch=4, tilt=6)
    a, b = shifted(3, 0, 1), shifted(3, 0, 1)
    assert torch.equal(a[0], b[0])  # same step, same batch (resume)
    assert torch.equal(a[1], plain[1]) and a[2] == plain[2]  # same utterances, lengths (tempo kept), transcripts
    for i in range(4):
        n = int(plain[1][i].sum())
        assert not torch.equal(a[0][i, :, :n], plain[0][i, :, :n])
        assert torch.equal(a[0][i, :, n:], plain[0][i, :, n:])  # padding untouched
    # a run without the new options draws exactly what it drew before they existed
    assert torch.equal(tt.Batches(utts, 4, seed=0, vtlp=0.1, pitch=0, tilt=0)(3, 0, 1)[0], vtlp_only[0])
    with pytest.raises(ValueError, match="pitch and tilt"):
        tt.Batches(utts, 3, seed=0, pitch=-1)


def test_oversample_repeats_the_named_voices():
    from glm4voice.errors import ConfigError

    utts = [tt.Utterance(f"u{i}", "one", "en", v, np.zeros(1600, np.int16))
            for i, v in enumerate(["espeak:en-us", "flite:rms", "flite:slt", "festival:kal_diphone"])]
    assert tt.oversample(utts, "") == utts
    out = tt.oversample(utts, "flite=3, flite:slt=2")
    assert [u.id for u in out].count("u1") == 3 and [u.id for u in out].count("u2") == 2  # a voice beats its engine
    assert [u.id for u in out].count("u0") == 1 and [u.id for u in out].count("u3") == 1
    assert out[1] is out[2]  # repeats share the audio
    for bad, msg in (("flite", "KEY=TIMES"), ("flite=0", ">= 1"), ("piper=2", "piper")):
        with pytest.raises(ConfigError, match=msg):
            tt.oversample(utts, bad)


def test_load_corpus_filters_voices_and_caps_each(tmp_path):
    import json

    import soundfile as sf

    (tmp_path / "a").mkdir()
    rows = []
    for i, voice in enumerate(["flite:awb"] * 5 + ["festival:ked_diphone"] * 2 + ["espeak:en-us"] * 3):
        path = f"a/{i}.wav"
        sf.write(tmp_path / path, np.full(1600, i, np.int16), 16000)
        rows.append({"id": f"r{i}", "text": "one", "language": "en", "voice": voice, "style": "plain",
                     "duration": 0.1, "path": path, "role": "question", "item_id": f"i{i}", "split": "heldout"})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = tt.load_corpus(str(tmp_path), split="heldout", max_seconds=10, seed=2, per_voice=3,
                         voices={"flite:awb", "festival:ked_diphone"})
    voices = [u.voice for u in got]
    assert voices.count("flite:awb") == 3 and voices.count("festival:ked_diphone") == 2 and len(got) == 5
    assert all(int(u.pcm[0]) == int(u.id[1:]) for u in got)  # each row's own audio
    again = tt.load_corpus(str(tmp_path), split="heldout", max_seconds=10, seed=2, per_voice=3,
                           voices={"flite:awb", "festival:ked_diphone"})
    assert [u.id for u in again] == [u.id for u in got]  # the draw is seeded
    assert len(tt.load_corpus(str(tmp_path), split="heldout", max_seconds=10)) == 10


def test_voice_evals_score_each_voice_alone():
    torch.manual_seed(0)
    model = tt.TokenizerTrainModel(SPEC).eval()
    utts = _utts(8)
    for i, u in enumerate(utts):
        u.voice = "flite:awb" if i % 2 else "festival:ked_diphone"
        u.text = "one two" if i % 2 else "three"
    base = tt.make_eval(utts[:4])
    evaluate = tt.with_voice_evals(base, utts)
    res = evaluate(model)
    assert set(base(model)) < set(res)  # the mixed set's metrics stay
    assert res["wer_en@flite:awb"] != res["wer_en@festival:ked_diphone"]  # different texts: a swap would show
    for voice in ("flite:awb", "festival:ked_diphone"):
        alone = tt.make_eval([u for u in utts if u.voice == voice])(model)
        assert res[f"wer_en@{voice}"] == alone["wer_en"]
    assert "phone_error@flite:awb" not in res  # no phoneme head: word error instead
    assert set(tt.with_voice_evals(None, utts[:2])(model)) == {"wer_en@flite:awb", "wer_en@festival:ked_diphone"}


def test_attention_head_variant_trains_a_step():
    spec = tt.TokenizerTrainSpec(**{**SPEC.__dict__, "ctc": 0})
    model = tt.TokenizerTrainModel(spec)
    loss, stats = model(*tt.Batches(_utts(4), 4, seed=0)(0, 0, 1))
    loss.backward()
    assert torch.isfinite(loss) and model.asr.embed.weight.grad is not None


def test_ctc_greedy_collapses_repeats_and_blanks():
    head = tt.CTCHead(4, 2)
    with torch.no_grad():
        head.conv.weight.zero_()
        head.conv.bias.zero_()
        head.out.weight.zero_()
        head.out.bias.fill_(-10.0)
    best = torch.tensor([104, 104, 256, 105, 105, 256, 105, 256])
    head.logits = lambda m: torch.nn.functional.one_hot(best, 257).float()[None]
    assert head.greedy(torch.zeros(1, 4, 4), torch.ones(1, 4, dtype=torch.bool)) == [[104, 105, 105]]


def test_load_for_asr_needs_branch(tmp_path):
    from glm4voice.errors import CheckpointError

    folder = tt.export(tt.TokenizerTrainModel(SPEC), tmp_path / "tok")
    (folder / tt.ASR_BRANCH_CONFIG).unlink()
    with pytest.raises(CheckpointError, match="ASR branch"):
        tt.load_for_asr(folder)


def test_error_rates():
    r = tt.error_rates(["What is two plus two?", "你好"], ["what is two plus three", "你好"], ["en", "zh"])
    assert r["wer_en"] == pytest.approx(0.2) and r["cer_zh"] == 0.0


def test_warmup_end_fits_the_codebook_by_kmeans_over_the_source_states():
    from glm4voice.train.vq import kmeans

    torch.manual_seed(0)
    model = tt.TokenizerTrainModel(SPEC).train()
    utts = _utts(8)
    source = tt.codebook_states(utts, 40, batch_size=3, seed=5)
    with torch.no_grad():
        h, valid = model.encode(*tt.featurize([u.pcm for u in utts]))
    states = source(model)
    assert states.shape == (40, SPEC.d_model) and model.training  # the source restores the mode
    # a seeded sample of the utterances' own pre-VQ states (the last positions differ by ~1e-3 with the padding of
    # another batching)
    assert torch.cdist(states, h.float()[valid]).min(1).values.max() < 1e-2 * h.float()[valid].norm(dim=1).mean()
    calls = []
    model.codebook_source = lambda m: calls.append(1) or states
    model.kmeans_iters = 7
    batch = tt.Batches(utts, 4, seed=0)(0, 0, 1)
    model.steps_seen.fill_(SPEC.vq_warmup - 2)
    model(*batch)
    assert not calls and not model.quantizing  # still warming up
    model(*batch)  # the step that ends the warm-up
    assert calls == [1] and model.quantizing
    want, _ = kmeans(states, SPEC.codebook, iters=7, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model.vq.codebook.weight, want)
    model(*batch)  # quantising now: no second fit
    assert calls == [1]
    with pytest.raises(ValueError):
        tt.codebook_states(utts, 0)
    # a run resumed with --vq-warmup at its step: quantising at once, codebook never fitted -> fitted on the first step
    fresh = tt.TokenizerTrainModel(SPEC).train()
    fresh.load_state_dict(tt.TokenizerTrainModel(SPEC).state_dict())  # what a resume restores: no fit, no update
    fresh.codebook_source = lambda m: calls.append(2) or states
    fresh.kmeans_iters = 7
    fresh.steps_seen.fill_(SPEC.vq_warmup + 50)
    fresh(*batch)
    assert calls == [1, 2] and int(fresh.vq.updates) == 1  # fitted, and the step itself quantised (an EMA update)
    fresh(*batch)
    assert calls == [1, 2]
    # a resumed run whose codebook has been trained (EMA updates) is not refitted
    trained = tt.TokenizerTrainModel(SPEC).train()
    trained.codebook_source = lambda m: calls.append(3) or states
    trained.steps_seen.fill_(SPEC.vq_warmup + 50)
    trained.vq.updates.fill_(40)
    trained(*batch)
    assert calls == [1, 2] and int(trained.vq.updates) == 41


def _tiny_corpus(folder, n_train=10, n_held=4):
    import json

    import soundfile as sf

    (folder / "audio16k").mkdir(parents=True)
    rows = []
    for i, u in enumerate(_utts(n_train + n_held)):
        path = f"audio16k/{u.id}.wav"
        sf.write(folder / path, u.pcm, 16000, subtype="PCM_16")
        rows.append({"id": u.id, "text": u.text, "language": "en", "voice": "espeak:en", "style": "plain",
                     "duration": len(u.pcm) / 16000, "path": path, "role": "question", "item_id": u.id,
                     "split": "train" if i < n_train else "heldout"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _main_args(corpus, out, *extra):
    import argparse

    parser = argparse.ArgumentParser()
    tt.add_args(parser)
    size = ["--d-model", "32", "--heads", "2", "--ffn", "64", "--layers", "2", "--post-layers", "1", "--codebook",
            "16", "--block", "20", "--asr-dim", "32", "--asr-layers", "1", "--asr-heads", "2"]
    return parser.parse_args(["--corpus", str(corpus), "--out", str(out), "--batch-size", "4", "--eval-every", "0",
                              "--warmup", "1", "--threads", "1", *size, *extra])


def test_main_fits_the_codebook_by_kmeans_and_exports_only_once_quantising(tmp_path, caplog):
    import logging

    corpus = _tiny_corpus(tmp_path / "c")
    caplog.set_level(logging.INFO, logger="glm4voice.train.tokenizer")
    # stopped by --until inside the warm-up: no export (its codebook would not fit the encoder)
    tt.main(_main_args(corpus, tmp_path / "run", "--steps", "8", "--until", "2", "--vq-warmup", "4",
                       "--vq-init-frames", "60", "--export", str(tmp_path / "tok")))
    assert not (tmp_path / "tok").exists() and "still in the VQ warm-up" in caplog.text
    # resumed past the switch: k-means over the sampled states, then the export
    tt.main(_main_args(corpus, tmp_path / "run", "--steps", "8", "--vq-warmup", "4", "--vq-init-frames", "60",
                       "--kmeans-iters", "5", "--export", str(tmp_path / "tok")))
    assert "codebook: k-means over 60 states (5 iterations)" in caplog.text
    tok = SpeechTokenizer.from_pretrained(str(tmp_path / "tok"))
    codes = tok.encode([torch.from_numpy(_utts(1)[0].pcm.astype(np.float32) / 32768)])
    assert len(codes[0]) > 0 and max(codes[0]) < 16
