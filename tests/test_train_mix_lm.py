"""mix-lm: two LMs of one architecture mixed weight by weight (train/mix_lm.py)."""

import json
import shutil

import pytest
import torch

from glm4voice.checkpoints import embedded_dir
from glm4voice.errors import CheckpointError, ConfigError
from glm4voice.lm.config import GLMConfig
from glm4voice.lm.load import load_lm, save_pretrained
from glm4voice.lm.model import GLM
from glm4voice.train import mix_lm


def _model(seed, ffn=48):
    torch.manual_seed(seed)
    cfg = GLMConfig(hidden_size=32, num_layers=2, num_attention_heads=4, kv_channels=8, multi_query_group_num=2,
                    ffn_hidden_size=ffn, padded_vocab_size=64, seq_length=64)
    m = GLM(cfg)
    m.init_weights(std=0.2)
    return m.eval()


def test_mix_state_dicts_is_a_straight_line_between_the_two():
    a, b = _model(0).state_dict(), _model(1).state_dict()
    assert all(torch.equal(mix_lm.mix_state_dicts(a, b, 0.0)[k], a[k]) for k in a)
    assert all(torch.allclose(mix_lm.mix_state_dicts(a, b, 1.0)[k], b[k]) for k in a)
    half = mix_lm.mix_state_dicts(a, b, 0.5)
    k = "layers.0.mlp.up.weight"
    assert torch.allclose(half[k], (a[k] + b[k]) / 2, atol=1e-6) and not torch.allclose(half[k], a[k])
    q = mix_lm.mix_state_dicts(a, b, 0.25)
    assert torch.allclose(q[k] - a[k], 0.25 * (b[k] - a[k]), atol=1e-6)


def test_mix_state_dicts_names_what_differs():
    a, b = _model(0).state_dict(), _model(1).state_dict()
    with pytest.raises(ValueError, match="between 0 and 1"):
        mix_lm.mix_state_dicts(a, b, 1.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        mix_lm.mix_state_dicts(a, b, float("nan"))
    extra = dict(b, **{"layers.9.x": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"layers\.9\.x is only in the other"):
        mix_lm.mix_state_dicts(a, extra, 0.5)
    wide = _model(1, ffn=64).state_dict()
    with pytest.raises(ValueError, match=r"mlp\.(up|down)\.weight has shape"):
        mix_lm.mix_state_dicts(a, wide, 0.5)


def test_mix_folders_with_the_embedded_int8_lm(tmp_path):
    """The shipped (int8-stored) LM mixed with a changed plain copy: alpha 0 reproduces the shipped LM's logits,
    alpha 1 the other's, 0.5 lies between; the folder is complete and records its sources."""
    src = embedded_dir("lm")
    base = load_lm(src, dtype=torch.float32)
    other = load_lm(src, dtype=torch.float32)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    shutil.copytree(src, tmp_path / "other", ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    save_pretrained(other, tmp_path / "other", dtype=torch.float32)
    ids = torch.randint(0, base.cfg.padded_vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    logits = {}
    for alpha in (0.0, 0.5, 1.0):
        rec = mix_lm.mix_folders(src, tmp_path / "other", tmp_path / f"m{alpha}", alpha)
        assert rec["alpha"] == alpha
        assert json.loads((tmp_path / f"m{alpha}" / "mix.json").read_text())["other"] == str(tmp_path / "other")
        assert (tmp_path / f"m{alpha}" / "tokenizer.model").is_file()
        with torch.no_grad():
            logits[alpha] = load_lm(tmp_path / f"m{alpha}", dtype=torch.float32)(ids)
    with torch.no_grad():
        want0, want1 = base(ids), other(ids)
    assert torch.allclose(logits[0.0], want0, atol=1e-4) and torch.allclose(logits[1.0], want1, atol=1e-4)
    d = lambda x, y: float((x - y).abs().mean())  # noqa: E731
    assert d(logits[0.5], want0) < d(want1, want0) and d(logits[0.5], want1) < d(want1, want0)


def test_mix_folders_errors(tmp_path):
    src = embedded_dir("lm")
    with pytest.raises(ConfigError, match="--out must not be"):
        mix_lm.mix_folders(src, src, src, 0.5)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        mix_lm.mix_folders(src, src, tmp_path / "m", -0.1)
    shutil.copytree(src, tmp_path / "small", ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    save_pretrained(_model(0), tmp_path / "small")
    with pytest.raises(ConfigError, match="the models differ in"):
        mix_lm.mix_folders(src, tmp_path / "small", tmp_path / "m", 0.5)
    (tmp_path / "small" / "tokenizer.model").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.model"):
        mix_lm.mix_folders(src, tmp_path / "small", tmp_path / "m", 0.5)


def test_several_others_are_averaged_first(tmp_path):
    a, b, c = (_model(i).state_dict() for i in range(3))
    mean = mix_lm.mean_state_dicts([b, c])
    k = "layers.1.mlp.up.weight"
    assert torch.allclose(mean[k], (b[k] + c[k]) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="no models"):
        mix_lm.mean_state_dicts([])
    with pytest.raises(ValueError, match="other model 2"):
        mix_lm.mean_state_dicts([b, _model(1, ffn=64).state_dict()])
    for name, sd in (("b", b), ("c", c)):
        m = _model(0)
        m.load_state_dict(sd)
        shutil.copytree(embedded_dir("lm"), tmp_path / name,
                        ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
        save_pretrained(m, tmp_path / name, dtype=torch.float32)
    shutil.copytree(tmp_path / "b", tmp_path / "a")
    m = _model(0)
    m.load_state_dict(a)
    save_pretrained(m, tmp_path / "a", dtype=torch.float32)
    rec = mix_lm.mix_folders(tmp_path / "a", [tmp_path / "b", tmp_path / "c"], tmp_path / "m", 0.5)
    assert rec["other"] == [str(tmp_path / "b"), str(tmp_path / "c")]
    got = load_lm(tmp_path / "m", dtype=torch.float32).state_dict()
    assert torch.allclose(got[k], a[k] + 0.5 * ((b[k] + c[k]) / 2 - a[k]), atol=1e-5)
