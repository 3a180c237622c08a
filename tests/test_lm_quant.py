"""Int8 weight-only quantisation: loading quantised, error on the reference vectors, cached decode, saving refused."""

import pytest
import torch
from safetensors.numpy import load_file as load_np

from glm4voice.errors import CheckpointError
from glm4voice.lm.generate import Generator
from glm4voice.lm.load import load_lm, save_pretrained
from glm4voice.lm.quant import Int8Linear, quantize_model, quantize_rows, weight_bytes
from tests.conftest import load_expected


@pytest.fixture(scope="module")
def ref(reference_dir):
    lm = reference_dir / "lm"
    return lm, load_expected(lm), load_np(str(lm / "expected" / "outputs.safetensors"))


pytestmark = pytest.mark.usefixtures("one_thread")


def test_quantize_rows_error_is_half_a_step():
    w = torch.randn(300, 70, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 3, 300)[:, None]
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] * 0.5001).all()  # fp32 rounding of q*s


def test_int8_load_equals_quantising_a_loaded_model(ref):
    q_loaded = load_lm(ref[0], dtype=torch.float32, quantize="int8")
    q_after = quantize_model(load_lm(ref[0], dtype=torch.float32))
    assert isinstance(q_loaded.layers[0].attn.qkv, Int8Linear)
    ids = torch.arange(0, 500, 37)[None]
    with torch.no_grad():
        assert torch.equal(q_loaded(ids), q_after(ids))
    full = load_lm(ref[0], dtype=torch.float32)
    assert weight_bytes(q_loaded) < 0.3 * weight_bytes(full)


def test_int8_logit_error_on_reference_vectors(ref):
    """Measured (torch 2.13 CPU): max |int8 - official fp32| 0.21-0.23 on logits of std ~2.1 (the tiny model's
    64-wide rows quantise coarsely), argmax agreement 1.0 / 1.0 / 0.925 on seq0-2. Bounds sit just above."""
    lm, exp, arrays = ref
    model = load_lm(lm, dtype=torch.float32, quantize="int8")
    for seq in exp["full_sequence_logits"]["sequences"]:
        with torch.no_grad():
            logits = model(torch.tensor(seq["input_ids"])[None])[0]
        want = torch.from_numpy(arrays[seq["array"].split(":", 1)[1]])
        err = (logits - want).abs().max().item()
        assert 1e-3 < err < 0.3, seq["name"]  # really quantised, and close
        assert (logits.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9


def test_int8_cached_decode_equals_int8_full_forward(ref):
    model = load_lm(ref[0], dtype=torch.float32, quantize="int8")
    ids = list(range(3, 300, 13))
    gen = Generator(model, 2, 40)
    gen.prefill(ids[:5], slot=1)
    with torch.no_grad():
        want = model(torch.tensor(ids)[None])[0]
    steps = [gen.decode_step([i], [1])[0] for i in ids[5:]]
    assert torch.allclose(torch.stack(steps), want[5:], atol=1e-4)


def test_saving_a_quantised_model_is_refused(ref, tmp_path):
    with pytest.raises(CheckpointError, match="quantised"):
        save_pretrained(load_lm(ref[0], quantize="int8"), tmp_path)


def test_int8_linear_cpu_kernel_equals_dequantised_matmul():
    torch.manual_seed(0)
    for dtype, k, tol in ((torch.float32, 40, 1e-5), (torch.bfloat16, 40, 3e-2), (torch.bfloat16, 48, 3e-2)):
        q = quantize_model(torch.nn.Sequential(torch.nn.Linear(k, 24).to(dtype)))[0]
        assert isinstance(q, Int8Linear) and q.scale.dtype == dtype
        x = torch.randn(2, 3, k, dtype=dtype)  # k=40 in bf16 takes the fallback (the CPU kernel needs k % 16 == 0)
        want = torch.nn.functional.linear(x.float(), q.weight.float()) * q.scale.float() + q.bias.float()
        assert (q(x).float() - want).abs().max() <= tol * want.abs().max()
