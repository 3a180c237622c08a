"""Speech tokenizer: parity with the official outputs through the production loader, config and loader checks."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import load_expected
from safetensors.numpy import load_file
from safetensors.torch import save_file

from glm4voice.audio import load_audio, log_mel_whisper
from glm4voice.errors import CheckpointError, ConfigError
from glm4voice.tokenizer import SpeechTokenizer, TokenizerConfig
from glm4voice.tokenizer.load import build_meta, load_encoder, official_shapes

FEATURE_TOL = 1e-4  # log-mel units ((log10 + 4) / 4); measured 0.0 on torch 2.13 CPU
HIDDEN_TOL = 1e-4  # pre-quantisation hidden states (|h| ~ 1..10); measured <= 1.5e-6
DISTANCE_TOL = 1e-3  # squared distances of magnitude ~1e2..1e3


@pytest.fixture(scope="module")
def ref(reference_dir):
    return reference_dir / "tokenizer"


@pytest.fixture(scope="module")
def expected(ref):
    return load_expected(ref)


@pytest.fixture(scope="module")
def tok(ref, device):
    return SpeechTokenizer.from_pretrained(ref, device=device)


def _inputs(ref, expected):
    return [ref / "inputs" / name for name in expected["all_files_one_call"]["file_order"]]


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _array_file(expected, must_contain: str):
    files = [f for f, arrays in expected["arrays"].items() if must_contain in arrays]
    assert files, f"no reference array file holds {must_contain}"
    return files


def test_all_files_one_call_tokens_and_hidden(ref, expected, tok):
    results = tok.encode_detailed(_inputs(ref, expected), batched=True)
    first = _stem(expected["all_files_one_call"]["file_order"][0])
    hidden = load_file(ref / _array_file(expected, f"batched/{first}")[0])
    for name, (ids, h) in zip(expected["all_files_one_call"]["file_order"], results, strict=True):
        assert ids == expected["all_files_one_call"]["tokens"][_stem(name)], name
        ref_h = torch.from_numpy(hidden[f"batched/{_stem(name)}"])
        assert h.shape == ref_h.shape
        assert (h - ref_h).abs().max() <= HIDDEN_TOL, name


def test_single_file_calls_tokens_and_hidden(ref, expected, tok):
    hidden_file = _array_file(expected, "single/" + _stem(expected["all_files_one_call"]["file_order"][0]))[0]
    hidden = load_file(ref / hidden_file)
    for name in expected["all_files_one_call"]["file_order"]:
        want = expected["single_file_calls"][_stem(name)]
        [(ids, h)] = tok.encode_detailed([ref / "inputs" / name], batched=False)
        assert ids == want["tokens"] and len(ids) == want["num_tokens"], name
        assert (h - torch.from_numpy(hidden[f"single/{_stem(name)}"])).abs().max() <= HIDDEN_TOL, name
    # the per-file mode over the list gives the same as separate calls
    per_file = tok.encode(_inputs(ref, expected), batched=False)
    assert per_file == [expected["single_file_calls"][_stem(n)]["tokens"]
                        for n in expected["all_files_one_call"]["file_order"]]


def test_token_count_is_ceil_samples_over_1280(ref, expected, tok):
    for name, meta in expected["inputs"].items():
        n = meta["length_after_resampling_to_16k"]
        chunks = [min(480_000, n - s) for s in range(0, n, 480_000)]
        want = sum(math.ceil(c / 1280) for c in chunks)
        assert want == expected["single_file_calls"][_stem(name.split("/")[-1])]["num_tokens"]
        assert load_audio(ref / name).shape[0] == n


def test_single_call_detail_features_distances(ref, expected, tok, device):
    for fname in _array_file(expected, "input_features"):
        arrays = load_file(ref / fname)
        [stem] = [_stem(n) for n in expected["all_files_one_call"]["file_order"] if _stem(n) in fname]
        wav = load_audio(ref / "inputs" / f"{stem}.wav")
        padded_len = math.ceil(wav.shape[0] / 1280) * 1280
        # features on the model's device, as SpeechTokenizer.encode_chunks computes them
        feats = log_mel_whisper(torch.nn.functional.pad(wav, (0, padded_len - wav.shape[0]))[None].to(device))
        ref_feats = torch.from_numpy(arrays["input_features"])
        assert feats.shape == ref_feats.shape
        assert (feats.cpu() - ref_feats).abs().max() <= FEATURE_TOL
        frame_mask = (torch.arange(feats.shape[-1]) * 160 < wav.shape[0]).int()
        assert torch.equal(frame_mask[None], torch.from_numpy(arrays["attention_mask"]))
        ids, h = tok.model(feats, frame_mask[None].to(device))
        assert torch.equal(ids.cpu(), torch.from_numpy(arrays["quantized_token_ids"]))
        assert (h.cpu() - torch.from_numpy(arrays["prequant_hidden"])).abs().max() <= HIDDEN_TOL
        flat = h[0]
        book = tok.model.codebook.weight
        dist = (book**2).sum(1) + (flat**2).sum(1, keepdim=True) - 2 * flat @ book.t()
        assert (dist.cpu() - torch.from_numpy(arrays["distances"])).abs().max() <= DISTANCE_TOL


def test_edge_length_features_single_vs_batched(ref, expected, device):
    """The last valid frames of a file whose length is a multiple of 1280 depend on the batch padding."""
    for fname in _array_file(expected, "single_call_last8_valid_frames"):
        arrays = load_file(ref / fname)
        [stem] = [_stem(n) for n in expected["all_files_one_call"]["file_order"] if _stem(n) in fname]
        wav = load_audio(ref / "inputs" / f"{stem}.wav")
        n_valid = math.ceil(wav.shape[0] / 160)
        batch_len = max(expected["all_files_one_call"]["chunk_lengths_16k_in_batch_order"])
        for key, padded_len in (("single_call_last8_valid_frames", math.ceil(wav.shape[0] / 1280) * 1280),
                                ("batched_call_last8_valid_frames", math.ceil(batch_len / 1280) * 1280)):
            feats = log_mel_whisper(torch.nn.functional.pad(wav, (0, padded_len - wav.shape[0]))[None].to(device))
            feats = feats[0].cpu()
            assert (feats[:, n_valid - 8: n_valid] - torch.from_numpy(arrays[key])).abs().max() <= FEATURE_TOL, key


def test_channel_negative_controls(ref, expected, tok):
    """Channel 0 is the official choice; channel 1 and the mix give the recorded different codes."""
    for name, ctl in expected["channel_handling_negative_controls"].items():
        if not isinstance(ctl, dict):
            continue
        path = next(ref / k for k in expected["inputs"] if _stem(k.split("/")[-1]) == name)
        ch1 = tok.encode([(load_audio(path, channel=1, sample_rate=16000), 16000)], batched=False)[0]
        mix = tok.encode([(load_audio(path, channel="mix"), 16000)], batched=False)[0]
        assert ch1 == ctl["tokens_if_channel_1_were_used"]
        assert mix == ctl["tokens_if_channels_were_averaged"]
        assert tok.encode([path])[0] == expected["single_file_calls"][name]["tokens"]


def test_full_size_manifest(reference_dir):
    manifest = json.loads((reference_dir / "manifest" / "tokenizer.json").read_text())
    cfg = TokenizerConfig.from_dict(manifest["config_used"], source="manifest")
    assert cfg == TokenizerConfig()  # our defaults are the released config
    want = {t["key"]: tuple(t["shape"]) for t in manifest["tensors"]}
    assert official_shapes(cfg) == want
    model = build_meta(cfg)
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    buffers = {t["key"] for t in manifest["tensors"] if t["kind"] == "buffer"}
    assert set(want) - set(model.state_dict()) == buffers  # inference module drops only the EMA buffers
    # save_pretrained writes the released config's values (torch_dtype is None in the in-memory manifest copy)
    from glm4voice.tokenizer.load import official_config_dict

    written = official_config_dict(cfg)
    assert {k: v for k, v in written.items() if k != "torch_dtype"} == \
        {k: manifest["config_used"][k] for k in written if k != "torch_dtype"}


def test_config_rejects_unknown_and_unsupported(ref, tmp_path):
    raw = json.loads((ref / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "quantise_vocab_size": 3}))
    with pytest.raises(ConfigError, match="quantise_vocab_size"):
        TokenizerConfig.from_json(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({**raw, "pooling_type": "max"}))
    with pytest.raises(ConfigError, match="pooling"):
        TokenizerConfig.from_json(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config"):
        TokenizerConfig.from_json(tmp_path / "config.json")


def _checkpoint_copy(ref, tmp_path, edit):
    sd = load_file(ref / "model.safetensors")
    sd = {k: torch.from_numpy(v) for k, v in sd.items()}
    edit(sd)
    (tmp_path / "config.json").write_text((ref / "config.json").read_text())
    save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    return tmp_path


@pytest.mark.parametrize("edit, match", [
    (lambda sd: sd.pop("layers.1.fc2.bias"), "missing key.*layers.1.fc2.bias"),
    (lambda sd: sd.update({"model.encoder.conv1.weight": sd["conv1.weight"]}), "unexpected.*model.encoder.conv1"),
    (lambda sd: sd.update({"codebook.weight": sd["codebook.weight"][:10]}), "codebook.weight has shape"),
    (lambda sd: sd.update({"ema_weight": sd["ema_weight"][:, :3]}), "ema_weight has shape"),
])
def test_loader_is_strict(ref, tmp_path, edit, match):
    folder = _checkpoint_copy(ref, tmp_path, edit)
    with pytest.raises(CheckpointError, match=match):
        load_encoder(folder)


def test_loader_accepts_missing_ema_and_ignores_it(ref, tmp_path):
    folder = _checkpoint_copy(ref, tmp_path, lambda sd: (sd.pop("ema_count"), sd.pop("ema_weight")))
    model = load_encoder(folder)
    assert "ema_weight" not in model.state_dict()


def test_loader_errors_for_missing_or_corrupt_weights(ref, tmp_path):
    (tmp_path / "config.json").write_text((ref / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02pickle")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        load_encoder(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_encoder(tmp_path)


def test_default_embedded_model_missing_is_a_clear_error(monkeypatch, tmp_path):
    import glm4voice.checkpoints as checkpoints

    monkeypatch.setattr(checkpoints, "ASSETS_DIR", tmp_path)  # an installation without the embedded model
    with pytest.raises(CheckpointError, match="tokenizer"):
        SpeechTokenizer.from_pretrained(None)


def test_dtype_and_device_are_arguments(ref):
    tok = SpeechTokenizer.from_pretrained(ref, dtype=torch.bfloat16)
    assert tok.dtype == torch.bfloat16 and tok.device.type == "cpu"
    [ids] = tok.encode([ref / "inputs" / sorted((ref / "inputs").iterdir())[0].name])
    assert len(ids) > 0 and all(0 <= i < tok.cfg.quantize_vocab_size for i in ids)


def test_save_pretrained_writes_the_official_layout(ref, tmp_path, tok, device):
    """Saving the reference model reproduces its config.json exactly, and the tensors round-trip bit-exactly."""
    from glm4voice.tokenizer.load import save_pretrained

    sd_ref = load_file(ref / "model.safetensors")
    save_pretrained(tok.model, tmp_path, ema_count=torch.from_numpy(sd_ref["ema_count"]),
                    ema_weight=torch.from_numpy(sd_ref["ema_weight"]))
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads((ref / "config.json").read_text())
    saved = load_file(tmp_path / "model.safetensors")
    assert saved.keys() == sd_ref.keys()
    for key, value in sd_ref.items():
        assert saved[key].dtype == value.dtype and (saved[key] == value).all(), key
    wav = _inputs(ref, load_expected(ref))[0]
    assert SpeechTokenizer.from_pretrained(tmp_path, device=device).encode([wav]) == tok.encode([wav])


def test_save_pretrained_of_a_new_model_loads_and_keeps_training_fields(tmp_path):
    """A model made by our own code (as the trainer does) loads through SpeechTokenizer.from_pretrained."""
    from glm4voice.tokenizer.load import official_config_dict, save_pretrained
    from glm4voice.tokenizer.model import WhisperVQEncoder

    cfg = TokenizerConfig(d_model=32, encoder_attention_heads=2, encoder_ffn_dim=64, encoder_layers=3,
                          quantize_position=2, pooling_position=2, quantize_vocab_size=64,
                          quantize_causal_block_size=8)
    torch.manual_seed(0)
    model = WhisperVQEncoder(cfg).to(torch.bfloat16)  # saved as float32 whatever the training dtype
    save_pretrained(model, tmp_path / "out", quantize_ema_decay=0.95)
    raw = json.loads((tmp_path / "out" / "config.json").read_text())
    assert raw["quantize_ema_decay"] == 0.95 and raw["num_hidden_layers"] == raw["decoder_layers"] == 3
    assert raw.keys() == official_config_dict(TokenizerConfig()).keys()
    loaded = SpeechTokenizer.from_pretrained(tmp_path / "out")
    assert loaded.cfg == cfg
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value.float()), key
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert (saved["ema_count"] == 1).all() and (saved["ema_weight"] == saved["codebook.weight"]).all()
    with pytest.raises(ConfigError, match="quantise_decay"):
        save_pretrained(model, tmp_path / "bad", quantise_decay=0.9)
    # a trainer's quantiser may hold the codebook and EMA state outside the encoder
    book, count = torch.randn(64, 32), torch.rand(64) + 0.5
    save_pretrained(model, tmp_path / "vq", codebook=book, ema_count=count, ema_weight=book * count[:, None])
    saved = load_file(tmp_path / "vq" / "model.safetensors")
    assert np.array_equal(saved["codebook.weight"], book.numpy()) and np.array_equal(saved["ema_count"], count.numpy())
    assert torch.equal(SpeechTokenizer.from_pretrained(tmp_path / "vq").model.codebook.weight, book)
    with pytest.raises(CheckpointError, match="codebook.weight has shape"):
        save_pretrained(model, tmp_path / "bad", codebook=torch.zeros(3, 32))


def test_batch_options_keep_the_reference_codes(ref, expected, tok):
    """Smaller forwards, length-sorted pools and lazily loaded inputs change only float rounding here."""
    files = _inputs(ref, expected)
    want = [expected["all_files_one_call"]["tokens"][_stem(f.name)] for f in files]
    assert tok.encode(files, batch_size=2) == want
    assert tok.encode(files * 2, batch_size=3, sort=True) == want * 2
    with pytest.raises(ValueError, match="sort"):
        tok.encode(files, batched=False, sort=True)


def test_encode_channel_mix_and_bad_inputs(ref, expected, tok, tmp_path):
    from glm4voice.errors import AudioError

    stereo = next(ref / k for k in expected["inputs"] if expected["inputs"][k].get("channels", 1) == 2)
    ctl = expected["channel_handling_negative_controls"][_stem(stereo.name)]
    assert tok.encode([stereo], channel="mix") == [ctl["tokens_if_channels_were_averaged"]]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    good = ref / "inputs" / expected["all_files_one_call"]["file_order"][0]
    with pytest.raises(AudioError, match="broken.wav"):
        tok.encode([good, bad])
    assert tok.encode([good, bad, good], errors="skip") == [tok.encode([good])[0], None, tok.encode([good])[0]]


def test_checkpoint_resolution_with_local_folders_only(ref, tmp_path, monkeypatch):
    """Folders load directly; hub ids go through huggingface_hub (replaced here: nothing downloads in tests)."""
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id, **kw):
        calls.append(repo_id)
        return str(ref)  # as if the repo were in the local hub cache

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    wav = min(_inputs(ref, load_expected(ref)), key=lambda p: p.stat().st_size)
    want = SpeechTokenizer.from_pretrained(ref).encode([wav])
    assert SpeechTokenizer.from_pretrained(str(ref)).encode([wav]) == want
    assert SpeechTokenizer.from_pretrained("official").encode([wav]) == want
    assert SpeechTokenizer.from_pretrained("someone/my-tokenizer").encode([wav]) == want
    assert calls == ["THUDM/glm-4-voice-tokenizer", "someone/my-tokenizer"]

    def offline(repo_id, **kw):
        raise OSError("we are offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="offline.*--local-dir"):
        SpeechTokenizer.from_pretrained("official")
    with pytest.raises(CheckpointError, match="no such folder"):
        SpeechTokenizer.from_pretrained(str(tmp_path / "missing" / "deeper" / "x"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="lacks config.json"):
        SpeechTokenizer.from_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text((ref / "config.json").read_text())
    with pytest.raises(CheckpointError, match="model.safetensors not found"):
        SpeechTokenizer.from_pretrained(tmp_path / "empty")
