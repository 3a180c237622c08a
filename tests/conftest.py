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
