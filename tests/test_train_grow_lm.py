"""grow-lm: a trained LM made deeper and wider without changing its outputs (train/grow_lm.py)."""

import json
import shutil

import pytest
import torch

from glm4voice.checkpoints import embedded_dir
from glm4voice.errors import CheckpointError, ConfigError
from glm4voice.lm.config import GLMConfig
from glm4voice.lm.model import GLM
from glm4voice.train import grow_lm


def _model(seed=0, layers=3, ffn=48):
    torch.manual_seed(seed)
    cfg = GLMConfig(hidden_size=32, num_layers=layers, num_attention_heads=4, kv_channels=8, multi_query_group_num=2,
                    ffn_hidden_size=ffn, padded_vocab_size=64, seq_length=64)
    m = GLM(cfg)
    m.init_weights(std=0.2)  # large enough that every layer matters
    return m.eval()


def test_layer_sources_spread_over_the_depth():
    assert grow_lm.layer_sources(6, 12) == [0, 1, 2, 3, 4, 5]
    assert grow_lm.layer_sources(6, 8) == [1, 4]
    assert grow_lm.layer_sources(3, 4) == [1]
    with pytest.raises(ValueError, match="more layers"):
        grow_lm.layer_sources(6, 5)


@pytest.mark.parametrize("layers,ffn", [(5, None), (None, 80), (7, 64)])
def test_grown_model_computes_the_same_logits(layers, ffn):
    m = _model()
    ids = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(ids)
        g, record = grow_lm.grow(m, layers=layers, ffn=ffn, seed=3)
        out = g(ids)
    assert g.cfg.num_layers == (layers or 3) and len(g.layers) == g.cfg.num_layers
    assert g.cfg.ffn_hidden_size == (ffn or 48) and g.layers[0].mlp.down.weight.shape == (32, ffn or 48)
    assert record["after"]["parameters"] > record["before"]["parameters"]
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    # the new capacity is live: a gradient reaches every zeroed output and every new MLP unit
    g.train()
    g(ids).logsumexp(-1).mean().backward()
    for i, block in enumerate(g.layers):
        assert block.attn.out.weight.grad.abs().sum() > 0, i
        assert block.mlp.down.weight.grad[:, -1].abs().sum() > 0, i


def test_a_new_block_is_a_copy_with_zero_outputs():
    m = _model()
    g, record = grow_lm.grow(m, layers=4, seed=0)
    assert record["layers"] == [0, 1, "copy of 1", 2]
    new, src = g.layers[2], m.layers[1]
    assert torch.equal(new.attn.qkv.weight, src.attn.qkv.weight)
    assert torch.equal(new.mlp.up.weight, src.mlp.up.weight)
    assert not new.attn.out.weight.any() and not new.mlp.down.weight.any()
    assert new.attn.qkv.weight.data_ptr() != src.attn.qkv.weight.data_ptr()  # trained apart from now on


def test_shrinking_is_refused():
    with pytest.raises(ValueError, match="shrink"):
        grow_lm.grow(_model(), ffn=32)


def test_grow_folder_on_the_embedded_lm(tmp_path):
    """The shipped (int8-stored) LM grown into a complete folder: loads, same logits, tokenizer beside it."""
    from glm4voice.lm.load import load_lm

    src = json.loads((embedded_dir("lm") / "config.json").read_text())  # whatever size the shipped LM has
    n, ffn = src["num_layers"], src["ffn_hidden_size"] + 64
    rec = grow_lm.grow_folder(embedded_dir("lm"), tmp_path / "g", layers=n + 1, ffn=ffn, seed=1)
    assert rec["after"]["num_layers"] == n + 1 and rec["after"]["ffn_hidden_size"] == ffn
    mid = n // 2  # one new layer copies the middle one and follows it
    expected = [*range(mid + 1), f"copy of {mid}", *range(mid + 1, n)]
    assert json.loads((tmp_path / "g" / "grow.json").read_text())["layers"] == expected
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    assert (cfg["num_layers"], cfg["ffn_hidden_size"]) == (n + 1, ffn)
    old = load_lm(embedded_dir("lm"), dtype=torch.float32)
    new = load_lm(tmp_path / "g", dtype=torch.float32)
    stored = getattr(torch, cfg["torch_dtype"])  # the grown folder keeps the source's declared dtype (bfloat16)
    with torch.no_grad():
        for p in old.parameters():  # the source's weights as the grown folder stores them
            p.copy_(p.to(stored).float())
    ids = torch.randint(0, old.cfg.padded_vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = old(ids), new(ids)
    # the new blocks add exactly zero and the new MLP units' outputs are zero: the same function up to float sums
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert (a - b).abs().max() < 1e-4 * a.abs().max()
    assert (tmp_path / "g" / "tokenizer.model").is_file()


def test_grow_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="--layers and/or --ffn"):
        grow_lm.grow_folder(embedded_dir("lm"), tmp_path / "g")
    with pytest.raises(ConfigError, match="more layers"):
        grow_lm.grow_folder(embedded_dir("lm"), tmp_path / "g", layers=2)
    src = shutil.copytree(embedded_dir("lm"), tmp_path / "lm")
    (src / "tokenizer.model").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.model"):
        grow_lm.grow_folder(src, tmp_path / "g", layers=8)
