"""Assemble the embedded default model (glm4voice/assets/embedded/) from training runs.

    python3 scripts/build_embedded.py --tokenizer runs/tokenizer_v1/export --lm-run runs/lm_v1 \
        --decoder-run runs/decoder_v1 [--out glm4voice/assets/embedded]

- tokenizer: the trainer's export (official layout), weights stored in bf16 without the training-only EMA buffers
  (the loader upcasts to the requested dtype), plus its ASR branch in bf16 (only the evaluation reads it);
- lm: the run's last.pt (finished or not) exported in bf16 with its text tokenizer (``lm_trainer.export``), or
  (``--lm-export``) a folder already exported that way, loaded once as a check;
- decoder: flow + HiFT runs exported in fp16 (``decoder_trainer --export-only``); a part the run did not train
  (e.g. a ``--part flow`` run) comes from ``--decoder-init`` (the decoder folder the run was started from).
A component whose source is not given is kept as it is (e.g. only ``--lm-run`` to ship a new LM).
``--flow-steps N`` sets the decoder flow's Euler steps in its config.yaml (the official 10; v8 ships 4),
``--flow-temperature T`` the scale of its initial noise (the official 1).
``--int8 tokenizer,lm,flow`` stores those weight files as int8 with a float16 scale per 64 values
(``glm4voice/int8_weights.py``; every loader unpacks them): about half their bfloat16 size, so a larger tokenizer
fits the size aim. The VQ codebook and HiFT stay as they are. Packing is idempotent: a packed file is left alone.
Writes ``MANIFEST.json`` with the provenance (run folders, steps reached) and the file sizes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch


def _save_unless_same(sd: dict[str, torch.Tensor], path: Path, int8_keep: tuple[str, ...] | None = None) -> None:
    """Write ``sd`` as safetensors unless ``path`` already holds exactly these tensors (names, dtypes, values):
    an unchanged component then keeps its bytes in git. With ``int8_keep`` (the keys kept as they are) ``sd`` is
    stored packed as int8, and compared in that form."""
    from safetensors.torch import load_file, save_file

    if int8_keep is not None:
        from glm4voice.int8_weights import pack

        sd = pack(sd, keep=int8_keep)
    if path.is_file():
        old = load_file(str(path))
        if old.keys() == sd.keys() and all(old[k].dtype == v.dtype and torch.equal(old[k], v) for k, v in sd.items()):
            return
    save_file(sd, str(path), metadata={"format": "pt", "producer": "glm4voice"})


def _load_bf16(path: Path, drop: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A weight file's tensors in bfloat16, less ``drop``; a file already stored as int8 (e.g. a shipped model's) is
    unpacked first."""
    from safetensors.torch import load_file

    from glm4voice.int8_weights import unpack

    return {k: v.to(torch.bfloat16).contiguous() for k, v in unpack(load_file(str(path))).items() if k not in drop}


def build_tokenizer(src: Path, out: Path, int8: bool = False) -> dict:
    """``int8``: store the weight files packed (``INT8_PARTS["tokenizer"]``), so that a file whose packed tensors
    are unchanged is left alone."""
    from glm4voice.tokenizer.load import CONFIG_FILE, TRAINING_ONLY_KEYS, WEIGHTS_FILE

    keep = {Path(rel).name: k for rel, k in INT8_PARTS["tokenizer"]} if int8 else {}
    out.mkdir(parents=True, exist_ok=True)
    _save_unless_same(_load_bf16(src / WEIGHTS_FILE, TRAINING_ONLY_KEYS), out / WEIGHTS_FILE, keep.get(WEIGHTS_FILE))
    cfg = json.loads((src / CONFIG_FILE).read_text())
    cfg["torch_dtype"] = "bfloat16"
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    # The ASR branch (post-VQ layers + CTC head, ~4 MB in bf16) ships too, so `glm4voice eval tokenizer` can
    # measure ASR error through the shipped codes; inference ignores it.
    from glm4voice.train.tokenizer_trainer import ASR_BRANCH_CONFIG, ASR_BRANCH_WEIGHTS

    has_branch = (src / ASR_BRANCH_WEIGHTS).is_file()
    if has_branch:
        _save_unless_same(_load_bf16(src / ASR_BRANCH_WEIGHTS), out / ASR_BRANCH_WEIGHTS,
                          keep.get(ASR_BRANCH_WEIGHTS))
        if src.resolve() != out.resolve():
            shutil.copyfile(src / ASR_BRANCH_CONFIG, out / ASR_BRANCH_CONFIG)
    # a word-piece branch's vocabulary (22 KB), which `train tokenizer-adapt` reads to make its targets; a stale one
    # from an earlier branch goes
    from glm4voice.train.tokenizer_asr import ASR_PIECES

    if src.resolve() != out.resolve():
        if has_branch and (src / ASR_PIECES).is_file():
            shutil.copyfile(src / ASR_PIECES, out / ASR_PIECES)
        elif (out / ASR_PIECES).is_file():
            (out / ASR_PIECES).unlink()
    return {"source": str(src), "asr_branch": has_branch}


def _fresh_beside(out: Path) -> Path:
    """An empty-to-be path next to ``out`` to build the new folder in first: the source may read from ``out``
    (e.g. runs started with ``--init glm4voice/assets/embedded/lm`` read their tokenizer there)."""
    tmp = out.with_name(out.name + ".new")
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def _swap_in(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def build_lm(run: Path, out: Path) -> dict:
    from glm4voice.train.lm_trainer import export_run

    tmp = _fresh_beside(out)
    step, steps = export_run(run, tmp, dtype="bf16")
    _swap_in(tmp, out)
    return {"source": str(run), "step": step, "steps": steps}


def copy_lm_export(src: Path, out: Path, note: str) -> dict:
    """An LM already exported (bf16, official layout with its text tokenizer), e.g. the only thing a GPU machine
    sent back; checked by loading it before it replaces ``out``."""
    from glm4voice.lm.load import load_lm
    from glm4voice.lm.text_tokenizer import TextTokenizer

    load_lm(src, device="cpu", dtype=torch.float32)  # strict loader: a broken export fails here, not in users' hands
    TextTokenizer.from_dir(src)
    tmp = _fresh_beside(out)
    shutil.copytree(src, tmp)
    for f in tmp.iterdir():
        f.chmod(0o644)  # an export unpacked from a transfer may be private to its owner
    _swap_in(tmp, out)
    return {"source": str(src), "note": note}


def build_decoder(run: Path, out: Path, init: Path | None = None) -> dict:
    tmp = _fresh_beside(out)  # `init` may be the folder being replaced
    cmd = [sys.executable, "-m", "glm4voice", "train", "decoder", "--out", str(run), "--export-only",
           "--export", str(tmp), "--export-dtype", "fp16"]
    if init is not None:
        cmd += ["--init", str(init)]
    subprocess.run(cmd, check=True)
    steps: dict = {}
    for part in ("flow", "hift"):
        if (run / part / "last.pt").is_file():
            ck = torch.load(run / part / "last.pt", map_location="cpu", weights_only=True)
            steps[part] = [int(ck["step"]), int(ck["config"]["steps"])]
        else:
            steps[part] = f"from {init}"
    _swap_in(tmp, out)
    return {"source": str(run), "init": None if init is None else str(init), "steps": steps}


def set_flow_sampler(folder: Path, steps: int | None = None, temperature: float | None = None) -> dict:
    """Rewrite ``folder``'s config.yaml with ``steps`` Euler steps of the flow (``cfm_params.n_timesteps``) and/or
    ``temperature``, the scale of its initial noise (``cfm_params.temperature``); returns what was set."""
    from glm4voice.decoder.config import DecoderConfig
    from glm4voice.errors import ConfigError

    path = folder / "config.yaml"
    cfg, done = DecoderConfig.from_yaml(path), {}
    for flag, key, field, value in (("--flow-steps", "flow_steps", "n_timesteps", steps),
                                    ("--flow-temperature", "flow_temperature", "temperature", temperature)):
        if value is None:
            continue
        try:
            cfg = cfg.with_cfm(**{field: value})
        except ConfigError as e:
            raise SystemExit(f"{flag} {value}: {e}") from e
        done[key] = value
    path.write_text(cfg.to_yaml())
    return done


# --int8 part -> (files under the embedded folder, keys kept as they are)
INT8_PARTS = {
    "tokenizer": (("tokenizer/model.safetensors", ("codebook.weight",)), ("tokenizer/asr_branch.safetensors", ())),
    "lm": (("lm/model.safetensors", ()),),
    "flow": (("decoder/flow.safetensors", ()),),
}


def pack_int8(out: Path, parts: list[str]) -> None:
    """Store the weight files of ``parts`` as group-wise int8 in place (files already packed are left alone)."""
    from safetensors.torch import load_file

    from glm4voice.int8_weights import is_packed, pack

    for part in parts:
        for rel, keep_keys in INT8_PARTS[part]:
            path = out / rel
            if not path.is_file():
                continue  # e.g. a tokenizer without an ASR branch
            sd = load_file(str(path))
            if not is_packed(sd):
                _save_unless_same(pack(sd, keep=keep_keys), path)


def packed_files(out: Path) -> list[str]:
    from safetensors import safe_open

    from glm4voice.int8_weights import is_packed

    found = []
    for path in sorted(out.rglob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            if is_packed(f.keys()):
                found.append(str(path.relative_to(out)))
    return found


def keep(out: Path, name: str) -> dict:
    """A component that is not rebuilt: it must be in ``out`` already; its provenance is carried over."""
    if not (out / name).is_dir():
        raise SystemExit(f"{out / name} does not exist: give the {name} source to build it")
    old = out / "MANIFEST.json"
    entry = json.loads(old.read_text()).get(name, {}) if old.is_file() else {}
    return {**entry, "kept": True}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer export (omit: keep the current one)")
    p.add_argument("--lm-run", type=Path, default=None, help="LM run folder (omit: keep the current LM)")
    p.add_argument("--lm-export", type=Path, default=None,
                   help="an exported LM folder instead of --lm-run (e.g. what a GPU machine sent back)")
    p.add_argument("--lm-note", default="", help="provenance of --lm-export for MANIFEST.json (run, steps, machine)")
    p.add_argument("--decoder-run", type=Path, default=None, help="decoder run folder (omit: keep the current one)")
    p.add_argument("--decoder-init", type=Path, default=None,
                   help="decoder folder for the part(s) the decoder run did not train")
    p.add_argument("--decoder-note", default="",
                   help="provenance of --decoder-run for MANIFEST.json (what it was trained from and on)")
    p.add_argument("--flow-steps", type=int, default=None,
                   help="Euler steps of the decoder's flow (official: 10; omit: keep the decoder's setting)")
    p.add_argument("--flow-temperature", type=float, default=None,
                   help="scale of the flow's initial noise (official: 1; omit: keep the decoder's setting)")
    p.add_argument("--int8", default="",
                   help=f"comma-separated parts stored as group-wise int8: {', '.join(INT8_PARTS)} (omit: none)")
    p.add_argument("--out", type=Path, default=Path("glm4voice/assets/embedded"))
    a = p.parse_args()
    if a.lm_run and a.lm_export:
        raise SystemExit("give --lm-run or --lm-export, not both")
    int8 = [x for x in a.int8.split(",") if x]
    if set(int8) - set(INT8_PARTS):
        raise SystemExit(f"--int8 {a.int8}: parts are {', '.join(INT8_PARTS)}")
    manifest = {
        "tokenizer": (build_tokenizer(a.tokenizer, a.out / "tokenizer", int8="tokenizer" in int8) if a.tokenizer
                      else keep(a.out, "tokenizer")),
        "lm": (build_lm(a.lm_run, a.out / "lm") if a.lm_run else
               copy_lm_export(a.lm_export, a.out / "lm", a.lm_note) if a.lm_export else keep(a.out, "lm")),
        "decoder": (build_decoder(a.decoder_run, a.out / "decoder", a.decoder_init) if a.decoder_run
                    else keep(a.out, "decoder"))}
    if a.decoder_run and a.decoder_note:
        manifest["decoder"]["note"] = a.decoder_note
    if a.flow_steps is not None or a.flow_temperature is not None:
        manifest["decoder"].update(set_flow_sampler(a.out / "decoder", a.flow_steps, a.flow_temperature))
    pack_int8(a.out, int8)
    manifest["int8"] = packed_files(a.out)  # also those a kept component already had
    manifest["files"] = {str(f.relative_to(a.out)): f.stat().st_size for f in sorted(a.out.rglob("*")) if f.is_file()
                         and f.name != "MANIFEST.json"}
    manifest["total_bytes"] = sum(manifest["files"].values())
    (a.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
