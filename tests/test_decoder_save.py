"""Writing decoder folders (our own trained decoders): config.yaml in the released structure + weights, read back
by ``SpeechDecoder.from_pretrained``; small configs."""

import pytest
import torch
from torch.nn.utils.parametrizations import weight_norm

from glm4voice.decoder import DecoderConfig, SpeechDecoder
from glm4voice.decoder.config import read_yaml_as_data
from glm4voice.decoder.load import is_weight_normed, save_pretrained
from glm4voice.errors import ConfigError

CODES = [3, 17, 250, 9, 0, 101, 42, 42, 7, 200, 13, 64]


@pytest.fixture(scope="module")
def small():
    return SpeechDecoder.from_config(DecoderConfig.small(vocab_size=256), seed=0)


def test_small_config_is_the_reference_architecture(reference_dir):
    assert DecoderConfig.small(vocab_size=256) == DecoderConfig.from_yaml(reference_dir / "decoder" / "config.yaml")
    with pytest.raises(ConfigError, match="multiples of 8"):
        DecoderConfig.small(unet_channels=20)


@pytest.mark.parametrize("cfg", [DecoderConfig(), DecoderConfig.small(vocab_size=1024, d_model=96, heads=3)],
                         ids=["released", "small"])
def test_config_yaml_roundtrip_as_data(cfg, tmp_path):
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    assert DecoderConfig.from_yaml(tmp_path / "config.yaml") == cfg
    doc = read_yaml_as_data(tmp_path / "config.yaml")  # the released structure, tags kept as data
    assert doc["flow"].tag == "!new:cosyvoice.flow.flow.MaskedDiffWithXvec"
    assert doc["flow"]["decoder"]["estimator"]["channels"] == list(cfg.flow.estimator.channels)
    assert doc["hift"]["istft_params"] == {"n_fft": 16, "hop_len": 4}


def test_from_config_seed_is_local_and_reproducible():
    cfg = DecoderConfig.small(vocab_size=64)
    before = torch.get_rng_state()
    a, b = SpeechDecoder.from_config(cfg, seed=1), SpeechDecoder.from_config(cfg, seed=1)
    assert torch.equal(before, torch.get_rng_state())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert all(torch.isfinite(x).all() for x in a.state_dict().values())


@pytest.mark.parametrize("weights", ["safetensors", "pt"])
def test_save_pretrained_roundtrip(small, tmp_path, weights):
    folder = small.save_pretrained(tmp_path / "dec", weights=weights)
    names = {p.name for p in folder.iterdir()}
    assert names == {"config.yaml", f"flow.{weights}", f"hift.{weights}"}
    if weights == "pt":  # plain state dicts in the official layout, readable without executing code
        sd = torch.load(folder / "hift.pt", weights_only=True)
        assert "conv_pre.weight_g" in sd and "conv_pre.weight_v" in sd and "conv_pre.weight" not in sd
    back = SpeechDecoder.from_pretrained(folder)
    assert back.cfg == small.cfg
    for (k, a), (k2, b) in zip(small.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2
        if k.startswith("hift.") and is_weight_normed(k[len("hift."):], a.shape):
            torch.testing.assert_close(b, a, rtol=3e-7, atol=0)  # g = ‖w‖, v = w folds back within 1 rounding
        else:
            assert torch.equal(a, b), k
    pcm, pcm2 = small.decode(CODES), back.decode(CODES)
    assert pcm.shape == pcm2.shape and (pcm - pcm2).abs().max().item() < 1e-5


def test_save_replaces_other_format_and_trained_weight_norm_is_exact(small, tmp_path):
    folder = save_pretrained(small, None, tmp_path / "dec", weights="pt")
    hift = SpeechDecoder.from_config(small.cfg, seed=5).hift.train()
    for name, mod in list(hift.named_modules()):  # what a trainer does: weight norm on the official convs
        if isinstance(mod, torch.nn.Conv1d | torch.nn.ConvTranspose1d) and is_weight_normed(name + ".weight",
                                                                                            mod.weight.shape):
            weight_norm(mod, dim=0)
    with torch.no_grad():  # make g differ from ‖v‖, as after training
        for p_name, p in hift.named_parameters():
            if p_name.endswith("original0"):
                p.mul_(1.5)
    save_pretrained((small.flow, hift), small.cfg, folder)  # safetensors now: the stale .pt files must go
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "flow.safetensors", "hift.safetensors"]
    back = SpeechDecoder.from_pretrained(folder)
    for name, mod in hift.named_modules():
        if hasattr(mod, "parametrizations"):
            assert torch.equal(back.hift.get_submodule(name).weight, mod.weight), name


def test_save_rejects_unknown_format(small, tmp_path):
    with pytest.raises(ValueError, match="weights"):
        small.save_pretrained(tmp_path, weights="bin")


def test_flow_steps_are_a_config_field_written_only_when_not_official(small, tmp_path):
    import dataclasses

    official = DecoderConfig.small(vocab_size=256)
    assert official.flow.cfm.n_timesteps == 10 and "n_timesteps" not in official.to_yaml()
    four = dataclasses.replace(official, flow=dataclasses.replace(
        official.flow, cfm=dataclasses.replace(official.flow.cfm, n_timesteps=4)))
    (tmp_path / "config.yaml").write_text(four.to_yaml())
    assert DecoderConfig.from_yaml(tmp_path / "config.yaml").flow.cfm.n_timesteps == 4
    for bad in ("0", "2.5", "'many'"):
        (tmp_path / "config.yaml").write_text(four.to_yaml().replace("n_timesteps: 4", f"n_timesteps: {bad}"))
        with pytest.raises(ConfigError, match="n_timesteps"):
            DecoderConfig.from_yaml(tmp_path / "config.yaml")
    # the solver takes that many estimator steps, and its output differs from the 10-step one
    calls = []
    est = small.flow.decoder.estimator
    hook = est.register_forward_hook(lambda *a: calls.append(1))
    try:
        ten = small.decode(CODES)
        n10, calls[:] = len(calls), []
        small.flow.cfg = four.flow
        fewer = small.decode(CODES)
    finally:
        hook.remove()
        small.flow.cfg = official.flow
    assert n10 == 10 and len(calls) == 4
    assert ten.shape == fewer.shape and not torch.allclose(ten, fewer)


def test_flow_temperature_is_a_config_field_that_scales_the_initial_noise(small, tmp_path):
    official = DecoderConfig.small(vocab_size=256)
    assert official.flow.cfm.temperature == 1.0 and "temperature" not in official.to_yaml()
    cool = official.with_flow_temperature(0.5)
    (tmp_path / "config.yaml").write_text(cool.to_yaml())
    assert DecoderConfig.from_yaml(tmp_path / "config.yaml") == cool
    for bad in ("0", "-1", "3", "'hot'", ".nan", "true"):
        (tmp_path / "config.yaml").write_text(cool.to_yaml().replace("temperature: 0.5", f"temperature: {bad}"))
        with pytest.raises(ConfigError, match="temperature"):
            DecoderConfig.from_yaml(tmp_path / "config.yaml")
    # temperature T on noise z solves exactly what temperature 1 solves on T·z, and differs from temperature 1 on z
    codes = torch.tensor([CODES])
    z = torch.randn(1, 80, small.frames(len(CODES)), generator=torch.Generator().manual_seed(3))
    gens = [torch.Generator()]
    try:
        small.set_flow_temperature(0.5)
        assert small.cfg.flow.cfm.temperature == small.flow.cfg.cfm.temperature == 0.5
        half = small.flow_mel_batch(codes, None, gens, z=z)
        small.set_flow_temperature(1.0)
        scaled = small.flow_mel_batch(codes, None, gens, z=0.5 * z)
        plain = small.flow_mel_batch(codes, None, gens, z=z)
        with pytest.raises(ConfigError, match="temperature"):
            small.set_flow_temperature(0.0)
    finally:
        small.set_flow_temperature(1.0)
    assert torch.equal(half, scaled) and not torch.allclose(half, plain, atol=1e-3)
