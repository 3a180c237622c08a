"""Group-wise int8 storage (glm4voice/int8_weights.py): exact bounds on its error, clear errors on broken files, and
every production loader reading the embedded model packed by ``scripts/build_embedded.py --int8``."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from glm4voice.checkpoints import embedded_dir
from glm4voice.errors import CheckpointError
from glm4voice.int8_weights import GROUP, SCALE_SUFFIX, is_packed, pack, pack_tensor, unpack, unpack_tensor

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = embedded_dir("lm").parent


def test_pack_round_trip_is_within_half_a_step_of_each_group():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 128, generator=g) * torch.logspace(-3, 1, 48)[:, None]  # rows of very different scales
    q, scale = pack_tensor(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (w.numel() // GROUP,)
    assert scale.dtype == torch.float16 and q.abs().max() <= 127
    back = unpack_tensor(q, scale)
    step = scale.float().repeat_interleave(GROUP).reshape(w.shape)
    # half a step of rounding, plus the float16 rounding of the scale times |q| <= 127
    assert ((back - w).abs() <= step * (0.5 + 127 * 2**-11) + 1e-7).all()
    assert (back - w).abs().max() < 0.05 * w.abs().max()
    per_row = (back - w).abs().amax(dim=1) / w.abs().amax(dim=1)
    assert per_row.max() < 0.01  # the small rows keep their own scales: no row is wiped out by a large one


def test_pack_leaves_small_tensors_kept_keys_and_non_floats_alone():
    sd = {"big.weight": torch.randn(64, 64), "bias": torch.randn(4096), "tiny.weight": torch.randn(8, 8),
          "codebook.weight": torch.randn(128, 64), "count": torch.arange(4096).reshape(64, 64)}
    out = pack(sd, keep=("codebook.weight",))
    assert set(out) == set(sd) | {"big.weight" + SCALE_SUFFIX}
    assert out["big.weight"].dtype == torch.int8
    for k in ("bias", "tiny.weight", "codebook.weight", "count"):
        assert out[k] is sd[k]
    back = unpack(out, name="f")
    assert set(back) == set(sd) and torch.allclose(back["big.weight"], sd["big.weight"], atol=0.05)
    assert unpack(sd) is sd and not is_packed(sd)  # an official-style file passes through untouched


def test_broken_packed_files_name_the_key():
    q, scale = pack_tensor(torch.randn(64, 64))
    with pytest.raises(CheckpointError, match=r"w\.int8_scale scales a tensor the file does not hold"):
        unpack({"other": torch.randn(3), "w" + SCALE_SUFFIX: scale}, name="f")
    with pytest.raises(CheckpointError, match="int8 tensor w has no scale"):
        unpack({"w": q, "v": q.float(), "v" + SCALE_SUFFIX: scale}, name="f")
    with pytest.raises(CheckpointError, match="without a scale"):
        unpack({"w": q}, name="f")
    with pytest.raises(CheckpointError, match="not int8"):
        unpack({"w": q.float(), "w" + SCALE_SUFFIX: scale}, name="f")
    with pytest.raises(CheckpointError, match="equal groups"):
        unpack({"w": q, "w" + SCALE_SUFFIX: scale[:-3]}, name="f")


def plain_copy(dst: Path) -> Path:
    """A copy of the embedded model with every int8-stored file written back as float32 tensors."""
    shutil.copytree(EMBEDDED, dst)
    for path in dst.rglob("*.safetensors"):
        sd = load_file(str(path))
        if is_packed(sd):
            save_file({k: v.contiguous() for k, v in unpack(sd).items()}, str(path))
    return dst


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return plain_copy(tmp_path_factory.mktemp("plain") / "embedded")


def build_int8(out: Path) -> None:
    import runpy
    import sys

    old = sys.argv
    sys.argv = ["build_embedded.py", "--out", str(out), "--int8", "tokenizer,lm,flow"]
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(ROOT / "scripts" / "build_embedded.py"), run_name="__main__")
    finally:
        sys.argv = old
    assert done.value.code == 0


@pytest.fixture(scope="module")
def packed(tmp_path_factory, plain):
    """The plain copy built with ``--int8 tokenizer,lm,flow``."""
    out = tmp_path_factory.mktemp("int8") / "embedded"
    shutil.copytree(plain, out)
    build_int8(out)
    return out


def test_build_script_packs_the_parts_asked_for(packed, plain):
    manifest = json.loads((packed / "MANIFEST.json").read_text())
    assert set(manifest["int8"]) == {"tokenizer/model.safetensors", "tokenizer/asr_branch.safetensors",
                                     "lm/model.safetensors", "decoder/flow.safetensors"}
    for rel in manifest["int8"]:
        assert manifest["files"][rel] < 0.3 * (plain / rel).stat().st_size  # float32 -> int8
    assert (packed / "decoder" / "hift.safetensors").read_bytes() == (plain / "decoder" /
                                                                       "hift.safetensors").read_bytes()
    with safe_open(str(packed / "tokenizer" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("codebook.weight").dtype == torch.bfloat16  # the VQ searches exact code vectors
    stamps = {rel: (packed / rel).stat().st_mtime_ns for rel in manifest["int8"]}
    build_int8(packed)  # packing again leaves the packed files alone
    assert {rel: (packed / rel).stat().st_mtime_ns for rel in manifest["int8"]} == stamps
    assert is_packed(load_file(str(packed / "lm" / "model.safetensors")))


def test_every_loader_reads_the_packed_model(packed, plain):
    from glm4voice.decoder import SpeechDecoder
    from glm4voice.lm.load import load_lm
    from glm4voice.tokenizer import SpeechTokenizer
    from glm4voice.train.tokenizer_trainer import load_for_asr

    audio = str(ROOT / "examples" / "question.wav")
    codes = SpeechTokenizer.from_pretrained(plain / "tokenizer").encode([audio])[0]
    codes8 = SpeechTokenizer.from_pretrained(packed / "tokenizer").encode([audio])[0]
    assert len(codes8) == len(codes)
    assert sum(a == b for a, b in zip(codes, codes8, strict=True)) >= 0.9 * len(codes)

    branch = load_for_asr(packed / "tokenizer")
    ref_branch = load_for_asr(plain / "tokenizer")
    for (k, a), (_, b) in zip(branch.state_dict().items(), ref_branch.state_dict().items(), strict=True):
        if k.startswith("vq.ema_"):
            continue  # training-only state the embedded model does not ship: freshly initialised in both
        assert torch.allclose(a.float(), b.float(), atol=0.02 * max(b.abs().max().item(), 1e-3)), k

    lm8, lm = (load_lm(f / "lm", dtype=torch.float32) for f in (packed, plain))
    ids = torch.tensor([[5, 17, 300, 2000, 3100, 42, 7, 900]])
    with torch.inference_mode():
        a, b = lm8(ids)[0], lm(ids)[0]  # (positions, vocabulary) logits
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.75
    assert (a - b).abs().max() < 0.1 * b.abs().max()

    dec8, dec = (SpeechDecoder.from_pretrained(f / "decoder") for f in (packed, plain))
    for (k, x), (_, y) in zip(dec8.flow.state_dict().items(), dec.flow.state_dict().items(), strict=True):
        assert torch.allclose(x.float(), y.float(), atol=0.02 * max(y.abs().max().item(), 1e-3)), k
    speech = dec8.decode(codes8[:25])
    assert torch.isfinite(speech).all() and speech.abs().max() > 1e-3
