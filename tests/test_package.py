import subprocess
import sys

import pytest

from glm4voice import checkpoints
from glm4voice.errors import CheckpointError


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "glm4voice", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage: glm4voice" in out.stdout


def test_resolve_local_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert checkpoints.resolve(tmp_path, "tokenizer") == tmp_path


def test_resolve_incomplete_folder_names_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="config.yaml"):
        checkpoints.resolve(tmp_path, "decoder")


def test_resolve_offline_refuses_download(tmp_path):
    with pytest.raises(CheckpointError, match="downloads are disabled"):
        checkpoints.resolve("THUDM/glm-4-voice-tokenizer", "tokenizer", allow_download=False)


def test_resolve_unreachable_hub_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="offline|could not get"):
        checkpoints.resolve("nobody-xyz/not-a-repo", "lm")


def test_resolve_garbage_spec():
    with pytest.raises(CheckpointError, match="no such folder"):
        checkpoints.resolve("./does/not/exist", "lm")
