"""Decoder training: data alignment, flow-matching loss and its prompt mask, vocoder losses, resume, export."""

import argparse
import json
import logging
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from glm4voice.constants import DECODER_HOP, DECODER_SAMPLE_RATE
from glm4voice.decoder.flow import feat_len
from glm4voice.decoder.model import SpeechDecoder
from glm4voice.errors import AudioError
from glm4voice.train import decoder_data as dd
from glm4voice.train import decoder_trainer as dt
from glm4voice.train.engine import TrainConfig, Trainer

VOCAB = 32
TINY = ["--vocab-size", str(VOCAB), "--d-model", "32", "--heads", "2", "--ffn", "64", "--encoder-layers", "1",
        "--unet-channels", "16", "--unet-transformer-blocks", "1", "--unet-mid-blocks", "1", "--unet-heads", "2",
        "--unet-head-dim", "8", "--hift-channels", "16"]


def _tone_audio(tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 'voice' whose pitch and loudness follow the tokens (so tokens -> mel is learnable), plus a little noise."""
    per = dd.SAMPLES_PER_TOKEN
    t = np.arange(per) / DECODER_SAMPLE_RATE
    pieces = []
    for k in tokens:
        f = 110 + 12 * (k % 16)
        pieces.append((0.1 + 0.02 * (k // 16)) * np.sin(2 * np.pi * f * t) + 0.003 * rng.standard_normal(per))
    return np.concatenate(pieces).astype(np.float32)


def make_corpus(root, n=8, heldout=2, seed=0):
    """A corpus folder in the layout of train/corpus.py with answers only: FLAC at 16 and 22.05 kHz, tokens."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in ("audio16k/qa", "audio22k/qa", "tokens"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n + heldout):
        uid = f"qa-{i:02d}.a"
        tokens = rng.integers(0, VOCAB, int(rng.integers(15, 40)))
        wav = _tone_audio(tokens, rng)
        sf.write(root / f"audio22k/qa/{uid}.flac", wav, DECODER_SAMPLE_RATE, subtype="PCM_16")
        sf.write(root / f"audio16k/qa/{uid}.flac", wav[::2], 11025, subtype="PCM_16")  # existence only
        np.save(root / f"tokens/{uid}.npy", tokens.astype(np.int32))
        rows.append({"id": uid, "item_id": uid[:-2], "kind": "qa", "role": "answer", "text": "x", "language": "en",
                     "voice": "target", "style": "normal", "split": "train" if i < n else "heldout",
                     "duration": len(tokens) / 12.5, "path": f"audio16k/qa/{uid}.flac",
                     "path_22k": f"audio22k/qa/{uid}.flac"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def utts(corpus):
    train, skipped = dd.load_decoder_corpus(str(corpus), split="train", vocab_size=VOCAB)
    assert len(train) == 8 and not skipped
    return train


def _args(*argv):
    p = argparse.ArgumentParser()
    dt.add_args(p)
    return p.parse_args([*TINY, *argv])


def _tiny_cfg():
    return dt.build_config(_args("--out", "unused"))


# --- data ----------------------------------------------------------------------------------------------------------
def test_decoder_mel_matches_matcha_definition():
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(1)
    wav = (0.3 * rng.standard_normal(5000)).astype(np.float32)
    ours = dd.decoder_mel(torch.from_numpy(wav)).numpy()
    # independent reference: reflect pad 384, framed FFT with periodic Hann, librosa slaney mel 0-8 kHz, ln clamp
    x = np.pad(wav.astype(np.float64), 384, mode="reflect")
    win = np.hanning(1025)[:-1]
    frames = np.stack([x[i * 256: i * 256 + 1024] * win for i in range((len(x) - 1024) // 256 + 1)])
    mag = np.sqrt(np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-9)
    basis = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000)
    ref = np.log(np.maximum(basis @ mag.T, 1e-5))
    assert ours.shape == (80, 5000 // 256) == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_decoder_mel_rejects_too_short_audio():
    with pytest.raises(AudioError, match="samples"):
        dd.decoder_mel(torch.zeros(100))


@pytest.mark.parametrize("n_tokens", [1, 10, 25, 37])
def test_aligned_audio_gives_exactly_the_flow_frame_count(n_tokens):
    for samples in (n_tokens * 1764 - 900, n_tokens * 1764 + 900):  # shorter and longer than the tokens
        audio = dd.aligned_audio(np.ones(max(samples, 1), np.float32), n_tokens)
        assert audio.numel() == feat_len(n_tokens) * DECODER_HOP
        assert dd.decoder_mel(audio).shape[-1] == feat_len(n_tokens)


def test_f0_track_finds_pitch_and_voicing():
    t = torch.arange(DECODER_SAMPLE_RATE) / DECODER_SAMPLE_RATE
    for f in (90.0, 180.0, 333.0):
        wav = 0.4 * torch.sin(2 * math.pi * f * t) + 0.2 * torch.sin(2 * math.pi * 2 * f * t + 1.0)
        f0 = dd.f0_track(wav, 86)
        assert torch.allclose(f0[2:-2], torch.full_like(f0[2:-2], f), rtol=0.01)
    noise = 0.3 * torch.randn(DECODER_SAMPLE_RATE, generator=torch.Generator().manual_seed(0))
    assert (dd.f0_track(noise, 86) == 0).float().mean() > 0.9
    tone_then_silence = torch.cat([0.4 * torch.sin(2 * math.pi * 150 * t[:11025]), torch.zeros(11025)])
    f0 = dd.f0_track(tone_then_silence, 86)
    assert (f0[5:35] > 0).all() and (f0[50:] == 0).all()


def test_corpus_rows_with_bad_tokens_are_skipped_and_counted(tmp_path):
    root = make_corpus(tmp_path, n=4, heldout=0)
    np.save(root / "tokens/qa-00.a.npy", np.array([1, 2, VOCAB + 5], np.int32))  # out of range
    np.save(root / "tokens/qa-01.a.npy", np.arange(3, dtype=np.int32))  # far fewer tokens than the audio
    (root / "tokens/qa-02.a.npy").unlink()
    utts, skipped = dd.load_decoder_corpus(str(root), split="train", vocab_size=VOCAB)
    assert [u.id for u in utts] == ["qa-03.a"]
    assert skipped == {f"token outside [0, {VOCAB})": 1, "token count != duration": 1, "no tokens": 1}
    # the vocoder alone can train before tokens exist: the row is framed on its duration
    voc, skipped = dd.load_decoder_corpus(str(root), split="train", vocab_size=VOCAB, need_tokens=False)
    no_tok = [u for u in voc if u.id == "qa-02.a"]
    assert len(voc) == 2 and no_tok[0].tokens is None
    assert no_tok[0].n_tokens == math.ceil(sf.info(str(root / "audio22k/qa/qa-02.a.flac")).duration * 12.5 - 1e-6)
    with pytest.raises(ValueError, match="speech tokens"):
        dd.FlowBatches(voc, dd.FeatureCache(voc), 2, seed=0)
    # another tokenizer's codes in another subfolder (data tokens --out CORPUS/NAME)
    (root / "tokens").rename(root / "tokens_b")
    assert [u.id for u in dd.load_decoder_corpus(str(root), split="train", vocab_size=VOCAB, tokens="tokens_b")[0]] \
        == ["qa-03.a"]
    assert dd.load_decoder_corpus(str(root), split="train", vocab_size=VOCAB)[1] == {"no tokens": 4}


def test_flow_batches_are_deterministic_and_aligned_to_the_frame_grid(utts):
    feats = dd.FeatureCache(utts)
    prefix = dd.FlowBatches(utts, feats, 4, seed=3, min_tokens=10, max_tokens=14, p_prefix=1.0)
    windows = dd.FlowBatches(utts, feats, 4, seed=3, min_tokens=10, max_tokens=14, p_prefix=0.0)
    a, b = prefix(5), prefix(5)
    for f in ("tokens", "mel", "prompt", "drop", "t", "z"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert not torch.equal(prefix(6).z[:, :, :10], a.z[:, :, :10])
    assert a.mel.shape[-1] == feat_len(a.tokens.shape[1]) == a.z.shape[-1]
    for batch, aligned_start in ((a, False), (windows(7), True)):
        n = batch.tokens.shape[1]
        for row in range(4):
            hits = [(i, s) for i, u in enumerate(utts) for s in range(len(u.tokens) - n + 1)
                    if np.array_equal(u.tokens[s: s + n], batch.tokens[row].numpy())
                    and torch.equal(feats.get(i)[0][:, feat_len(s): feat_len(s) + feat_len(n)], batch.mel[row])]
            assert hits, "window tokens and mel frames do not come from one place of one utterance"
            assert all(s % 10 == 0 for _, s in hits) if aligned_start else any(s == 0 for _, s in hits)
    assert (a.prompt <= (0.8 * a.mel.shape[-1])).all()


# --- flow loss ----------------------------------------------------------------------------------------------------
def _flow(seed=0):
    torch.manual_seed(seed)
    from glm4voice.decoder.flow import Flow
    return Flow(_tiny_cfg().flow)


def test_prompt_frames_are_excluded_from_the_flow_loss(utts):
    flow = _flow()
    batch = dd.FlowBatches(utts, dd.FeatureCache(utts), 3, seed=0, p_prompt=1.0, p_drop=0.0, p_prefix=1.0,
                           min_tokens=20, max_tokens=20)(0)
    batch.prompt = torch.tensor([40, 0, 100])
    base, _ = dt.flow_matching_loss(flow, batch)

    def perturb(frames):
        def hook(module, inputs, out):
            out = out.clone()
            out[0, :, frames] += 100.0
            return out
        return flow.decoder.estimator.register_forward_hook(hook)

    h = perturb(slice(0, 40))  # inside row 0's prompt: no effect
    inside, _ = dt.flow_matching_loss(flow, batch)
    h.remove()
    h = perturb(slice(40, 41))  # the first frame after the prompt counts
    after, _ = dt.flow_matching_loss(flow, batch)
    h.remove()
    assert inside.item() == pytest.approx(base.item(), rel=1e-6)
    assert after.item() > base.item() + 1.0


def test_guidance_dropout_zeroes_every_condition(utts):
    flow = _flow()
    batch = dd.FlowBatches(utts, dd.FeatureCache(utts), 2, seed=0, p_drop=0.0, p_prompt=1.0, max_prompt=0.5)(1)
    batch.prompt = torch.tensor([10, 10])
    batch.drop = torch.tensor([True, False])
    seen = {}
    h = flow.decoder.estimator.register_forward_pre_hook(lambda m, args: seen.update(args=args))
    dt.flow_matching_loss(flow, batch)
    h.remove()
    _, _, mu, _, spks, cond = seen["args"]
    assert mu[0].abs().sum() == 0 and spks[0].abs().sum() == 0
    assert mu[1].abs().sum() > 0 and spks[1].abs().sum() > 0 and cond[1].abs().sum() > 0
    # a dropped row gets no prompt from the batch maker either
    many = dd.FlowBatches(utts, dd.FeatureCache(utts), 64, seed=0, p_drop=0.5, p_prompt=1.0)(2)
    assert many.drop.any() and (many.prompt[many.drop] == 0).all()


def test_flow_training_lowers_the_loss(utts):
    feats = dd.FeatureCache(utts)
    batches = dd.FlowBatches(utts, feats, 2, seed=0, max_tokens=15)
    model = dt.FlowTrainModel(_flow())
    probe = [batches(1000 + k) for k in range(3)]

    def probe_loss():
        with torch.no_grad():
            return sum(model(b)[0].item() for b in probe)

    first = probe_loss()
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        Trainer(TrainConfig(out_dir=d, steps=20, lr=3e-2, warmup=3, log_every=10, eval_every=0, save_every=20),
                model, batch_fn=batches, loss_fn=lambda m, b: m(b)).fit()
    assert probe_loss() < 0.5 * first


# --- vocoder --------------------------------------------------------------------------------------------------------
def _vocoder(discs=None, loss=None):
    from glm4voice.decoder.hift import HiFT
    torch.manual_seed(0)
    return dt.VocoderTrainModel(dt.add_weight_norm(dt.init_hift(HiFT(_tiny_cfg().hift))), loss or dt.VocoderLoss(),
                                discs)


def test_vocoder_training_lowers_reconstruction_losses(utts):
    batches = dd.VocoderBatches(utts, dd.FeatureCache(utts), 2, seed=0, frames=16)
    model = _vocoder()
    probe = [batches(1000 + k) for k in range(2)]

    def probe_loss():
        with torch.no_grad():
            return sum(model((b, 0))[0].item() for b in probe)

    first = probe_loss()
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        Trainer(TrainConfig(out_dir=d, steps=15, lr=2e-3, warmup=2, log_every=5, eval_every=0, save_every=15,
                            grad_clip=100.0), model, batch_fn=lambda s, r, w: (batches(s, r, w), s),
                loss_fn=lambda m, b: m(b)).fit()
    assert probe_loss() < 0.8 * first


def test_adversarial_step_trains_discriminators_only_on_their_own_loss(utts):
    from glm4voice.train.vocoder_losses import Discriminators, discriminator_loss

    torch.manual_seed(0)
    discs = Discriminators(periods=(2,), scales=(1,), channels=16)  # MSD groups need >= 16
    model = _vocoder(discs, dt.VocoderLoss(adv_start=5))
    batch = dd.VocoderBatches(utts, dd.FeatureCache(utts), 2, seed=0, frames=16)(0)
    _, m = model((batch, 4))
    assert "d_loss" not in m  # before the warm-up ends: reconstruction only
    loss, m = model((batch, 5))
    assert {"adv", "fm", "d_loss"} <= m.keys()
    loss.backward()
    got = {k: p.grad.clone() for k, p in discs.named_parameters()}
    assert all(p.grad is not None for p in model.hift.parameters() if p.requires_grad)
    model.zero_grad()
    with torch.no_grad():
        audio, _ = model.synthesize(batch)
    discriminator_loss(discs(batch.audio), discs(audio)).backward()
    for k, p in discs.named_parameters():
        torch.testing.assert_close(got[k], p.grad, rtol=1e-4, atol=1e-6, msg=k)


# --- command: resume and export -----------------------------------------------------------------------------------
def _final_state(run):
    return torch.load(run / "last.pt", weights_only=True)["model"]


def test_resumed_run_equals_uninterrupted_and_export_decodes(corpus, tmp_path):
    common = ["--corpus", str(corpus), "--part", "both", "--steps", "4", "--batch-size", "2", "--max-tokens", "15",
              "--crop-frames", "16", "--eval-every", "4", "--save-every", "2", "--log-every", "1", "--warmup", "2"]
    dt.main(_args("--out", str(tmp_path / "a"), *common))
    dt.main(_args("--out", str(tmp_path / "b"), *common, "--until", "3"))
    assert torch.load(tmp_path / "b/flow/last.pt", weights_only=True)["step"] == 3
    assert not (tmp_path / "dec").exists()
    dt.main(_args("--out", str(tmp_path / "b"), *common, "--export", str(tmp_path / "dec")))
    for part in ("flow", "hift"):
        a, b = _final_state(tmp_path / "a" / part), _final_state(tmp_path / "b" / part)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{part}: {k} differs after resume"
    rows = [json.loads(x) for x in (tmp_path / "a/flow/metrics.jsonl").read_text().splitlines()]
    assert any("heldout_mel_l1" in r for r in rows)
    assert (tmp_path / "a/hift/samples/heldout_copy_synthesis.wav").exists()

    # the export loads through the production loader, in fp16 files, with the trained weights
    from safetensors import safe_open
    with safe_open(str(tmp_path / "dec/flow.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    dec = SpeechDecoder.from_pretrained(str(tmp_path / "dec"))
    trained = {k[len("flow."):]: v for k, v in a_flow_state(tmp_path / "b").items()}
    for k, v in dec.flow.state_dict().items():
        torch.testing.assert_close(v, trained[k].half().float(), rtol=0, atol=0, msg=k)
    pcm = dec.decode(torch.randint(0, VOCAB, (23,)))
    assert pcm.shape == (feat_len(23) * DECODER_HOP,) and torch.isfinite(pcm).all()

    # --export-only rebuilds the same folder from the runs
    dt.main(_args("--out", str(tmp_path / "b"), "--export-only", "--export", str(tmp_path / "dec2")))
    dec2 = SpeechDecoder.from_pretrained(str(tmp_path / "dec2"))
    for k, v in dec.hift.state_dict().items():
        assert torch.equal(v, dec2.hift.state_dict()[k]), k


    # fine-tuning: --init gives the architecture and the starting weights; a part not trained comes from it
    dt.main(_args("--out", str(tmp_path / "ft"), "--init", str(tmp_path / "dec"), "--corpus", str(corpus),
                  "--part", "flow", "--steps", "2", "--batch-size", "2", "--max-tokens", "15", "--eval-every", "0",
                  "--lr", "1e-3", "--warmup", "1", "--export", str(tmp_path / "dec_ft"), "--d-model", "48"))
    ft = SpeechDecoder.from_pretrained(str(tmp_path / "dec_ft"))
    assert ft.cfg == dec.cfg
    for k, v in dec.hift.state_dict().items():  # weight norm g, v re-stored in fp16: equal up to its rounding
        torch.testing.assert_close(ft.hift.state_dict()[k], v, rtol=2e-3, atol=1e-5, msg=k)
    # ... and in fact the init's file ships unchanged (no re-rounding on every rebuild)
    assert (tmp_path / "dec_ft/hift.safetensors").read_bytes() == (tmp_path / "dec/hift.safetensors").read_bytes()
    assert (tmp_path / "dec_ft/flow.safetensors").read_bytes() != (tmp_path / "dec/flow.safetensors").read_bytes()
    moved = [(ft.flow.state_dict()[k] - v).abs().max().item() for k, v in dec.flow.state_dict().items()]
    assert 0 < max(moved) < 0.05  # started from the init weights and trained a little


def a_flow_state(run):
    return _final_state(run / "flow")


def test_other_sizes_in_the_same_run_folder_are_refused(corpus, tmp_path):
    from glm4voice.errors import ConfigError

    dt.run_config(str(tmp_path), _tiny_cfg())
    with pytest.raises(ConfigError, match="another decoder architecture"):
        dt.main(_args("--out", str(tmp_path), "--corpus", str(corpus), "--d-model", "48"))


def test_speech_rows_train_the_decoder_and_corpora_pool(tmp_path, caplog):
    """A decoder-only corpus (`data synth --target-voice-phrasings`) has role "speech" rows; they load like answers,
    question rows never do, and `--corpus a,b` pools the rows of both folders."""
    extra = make_corpus(tmp_path / "speech", n=3, heldout=0, seed=1)
    rows = [json.loads(x) for x in (extra / "manifest.jsonl").read_text().splitlines()]
    rows[0]["role"] = "speech"
    rows[1]["role"] = "question"  # a question with a 22 kHz file is still not target-voice speech
    (extra / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    utts, skipped = dd.load_decoder_corpus(str(extra), split="train", vocab_size=VOCAB)
    assert sorted(u.id for u in utts) == ["qa-00.a", "qa-02.a"] and not skipped

    base = make_corpus(tmp_path / "base", n=4, heldout=1)
    common = ["--part", "flow", "--steps", "1", "--batch-size", "2", "--max-tokens", "15", "--crop-frames", "16",
              "--eval-every", "1", "--warmup", "1"]
    with caplog.at_level(logging.INFO, logger="glm4voice.train.decoder"):
        dt.main(_args("--out", str(tmp_path / "run"), "--corpus", f"{base},{extra}", *common))
    assert "decoder: 6 train / 1 held-out utterances" in caplog.text
    with pytest.raises(SystemExit, match="no usable"):
        dt.main(_args("--out", str(tmp_path / "run2"), "--corpus", str(tmp_path / "speech") + ",", *common,
                      "--voice", "nobody"))


def test_vocoder_crops_can_take_the_flow_mel_of_their_utterance(utts, corpus, tmp_path, caplog):
    """--flow-mels: the vocoder learns from the mels a flow makes of the reference tokens (what it gets at
    inference), on the same frame grid as the real audio it must reproduce."""
    dec = SpeechDecoder.from_config(_tiny_cfg(), seed=0)
    feats, fm = dd.FeatureCache(utts), dd.FlowMelCache(utts, dec, seed=3)
    for i in (0, 1):
        real, flow = feats.get(i)[0], fm.get(i)
        assert flow.shape == real.shape and not torch.equal(flow, real)
        assert torch.equal(fm._compute(i), flow)  # deterministic per utterance: resumed runs stay exact
    kw = dict(frames=16, flow_mels=fm)
    real_b = dd.VocoderBatches(utts, feats, 4, 0, p_flow=0.0, **kw)(5)
    flow_b = dd.VocoderBatches(utts, feats, 4, 0, p_flow=1.0, **kw)(5)
    assert torch.equal(flow_b.audio, real_b.audio) and torch.equal(flow_b.f0, real_b.f0)  # real targets
    for b in range(4):  # each input is the flow mel's crop at the real crop's place
        matches = [i for i in range(len(utts)) for a in range(feats.get(i)[0].shape[-1] - 15)
                   if torch.equal(feats.get(i)[0][:, a:a + 16], real_b.mel[b])
                   and torch.equal(fm.get(i)[:, a:a + 16], flow_b.mel[b])]
        assert matches, b
    with pytest.raises(ValueError, match="p_flow"):
        dd.VocoderBatches(utts, feats, 4, 0, p_flow=1.5, **kw)

    dec.save_pretrained(tmp_path / "dec")
    common = ["--corpus", str(corpus), "--part", "hift", "--steps", "2", "--batch-size", "2", "--crop-frames", "16",
              "--eval-every", "0", "--warmup", "1", "--flow-mels", "0.5"]
    with caplog.at_level(logging.INFO, logger="glm4voice.train.decoder"):
        dt.main(_args("--out", str(tmp_path / "run"), "--init", str(tmp_path / "dec"), *common))
    assert "50 % of the crops take the flow mel" in caplog.text
    assert torch.load(tmp_path / "run/hift/last.pt", weights_only=True)["step"] == 2
    with pytest.raises(SystemExit, match="--flow-mels needs --init"):
        dt.main(_args("--out", str(tmp_path / "run2"), *common))
