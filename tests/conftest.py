import json
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference_root() -> Path:
    """The official-output reference vectors: $GLM4VOICE_REFERENCE or ../shared/reference."""
    return Path(os.environ.get("GLM4VOICE_REFERENCE", REPO_ROOT.parent / "shared" / "reference")).resolve()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    root = reference_root()
    if not (root / "README.md").is_file():
        pytest.fail(f"reference vectors not found at {root}; set GLM4VOICE_REFERENCE")
    return root


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device the reference-parity tests build their models on: $GLM4VOICE_TEST_DEVICE, default "cpu".

    Set e.g. ``GLM4VOICE_TEST_DEVICE=cuda`` (or ``cuda:1``) to check that a GPU reproduces the official outputs
    with the same tolerances as the CPU. Only the numeric parity tests use it; loader, config and CLI tests stay
    on the CPU. A CUDA device on a machine without CUDA fails the tests instead of silently testing the CPU.
    """
    dev = torch.device(os.environ.get("GLM4VOICE_TEST_DEVICE", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"GLM4VOICE_TEST_DEVICE={os.environ['GLM4VOICE_TEST_DEVICE']} but torch.cuda.is_available() is "
                    f"False (torch {torch.__version__}, built for CUDA {torch.version.cuda}); unset it to test on CPU")
    return dev


@pytest.fixture(scope="module")
def cuda_full_fp32(device):
    """cuDNN runs fp32 convolutions in TF32 by default; the official outputs are CPU fp32. On an H200 (session 13)
    TF32 moved the decoder's mels by ~1e-3 (inaudible, and the library keeps PyTorch's default for speed), so the
    decoder's parity tests turn it off on CUDA to check the computation at the CPU's tolerances. No effect on CPU.
    (The tokenizer needs no such help: it runs its convolutions without TF32 itself.)"""
    before = torch.backends.cudnn.allow_tf32
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


def load_expected(component_dir: Path) -> dict:
    return json.loads((component_dir / "expected.json").read_text())


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one thread: they gain nothing from intra-op threads, and on a shared 2-core
    machine two threads wait for each other (measured ~100x slower). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
