"""Where weights are: the one place that resolves a local folder, an embedded model, or a hub id.

This is the only module allowed to download. Tests never reach the hub: they pass local folders.
"""

from __future__ import annotations

import os
from pathlib import Path

from glm4voice.errors import CheckpointError

# Official Hugging Face repositories of the three components.
OFFICIAL_REPOS = {
    "tokenizer": "THUDM/glm-4-voice-tokenizer",
    "lm": "THUDM/glm-4-voice-9b",
    "decoder": "THUDM/glm-4-voice-decoder",
}
# Files each component needs, to give a clear error when a folder is incomplete.
REQUIRED_FILES = {
    "tokenizer": ("config.json",),
    "lm": ("config.json",),
    "decoder": ("config.yaml",),
}
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
EMBEDDED_NAME = "embedded"


def embedded_dir(component: str) -> Path:
    """Folder of the embedded default model's component (shipped inside the package)."""
    return ASSETS_DIR / EMBEDDED_NAME / component


def _looks_like_repo_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def resolve(spec: str | os.PathLike | None, component: str, *, allow_download: bool = True) -> Path:
    """Return a local folder holding ``component``'s files.

    ``spec`` is a local folder, ``"official"`` (the THUDM repo of the component), a hub id
    ``owner/name``, or ``None``/``"embedded"`` for the embedded default model.
    """
    if component not in REQUIRED_FILES:
        raise ValueError(f"unknown component {component!r}; expected one of {sorted(REQUIRED_FILES)}")
    if spec is None or str(spec) == EMBEDDED_NAME:
        path = embedded_dir(component)
        if not path.is_dir():
            raise CheckpointError(
                f"the embedded {component} model is not in this installation ({path}); "
                f"pass a checkpoint folder or hub id with --{component}")
        return _check_folder(path, component)
    spec = str(spec)
    if spec == "official":
        spec = OFFICIAL_REPOS[component]
    path = Path(spec).expanduser()
    if path.exists():
        return _check_folder(path, component)
    if not _looks_like_repo_id(spec):
        raise CheckpointError(f"{component} checkpoint {spec!r}: no such folder, and not a hub id 'owner/name'")
    if not allow_download:
        raise CheckpointError(f"{component} checkpoint {spec!r} is not a local folder and downloads are disabled")
    return _check_folder(_download(spec, component), component)


def _check_folder(path: Path, component: str) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"{component} checkpoint {path} is not a folder")
    missing = [f for f in REQUIRED_FILES[component] if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{component} checkpoint folder {path} lacks {', '.join(missing)}")
    return path


def _download(repo_id: str, component: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a core dependency
        raise CheckpointError("downloading needs huggingface_hub: pip install huggingface_hub") from e
    # Never fetch pickled .bin weights or code: only what our loaders read.
    patterns = ["*.json", "*.safetensors", "*.yaml", "*.pt", "tokenizer.model", "*.txt"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # network errors come in many types; the message says what to do
        raise CheckpointError(
            f"could not get {component} checkpoint {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            f"If this machine is offline, download it elsewhere (huggingface-cli download {repo_id} --local-dir DIR) "
            f"and pass the folder") from e
