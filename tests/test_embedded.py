"""The shipped embedded model (glm4voice/assets/embedded): complete, small, loadable through the defaults, and able
to run a spoken question through the whole pipeline. Answer correctness is the slow guard in test_eval_embedded.py
(v7 does not pass it yet; see docs/model_card.md)."""

import json
from pathlib import Path

import numpy as np
import torch

from glm4voice.checkpoints import embedded_dir

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = embedded_dir("lm").parent
MAX_BYTES = 40 * 2**20  # issue 7: the whole model stays small in git


def test_embedded_model_is_complete_and_small():
    manifest = json.loads((EMBEDDED / "MANIFEST.json").read_text())
    on_disk = {str(f.relative_to(EMBEDDED)): f.stat().st_size for f in EMBEDDED.rglob("*")
               if f.is_file() and f.name != "MANIFEST.json"}
    assert on_disk == manifest["files"]  # the manifest describes exactly what ships
    assert sum(on_disk.values()) <= MAX_BYTES
    assert not any(name.endswith(".pt") for name in on_disk)  # no pickles, no optimizer state


def test_embedded_speech_question_runs_end_to_end():
    from glm4voice.pipeline.events import AudioChunk, TextDelta, Timing, TurnEnd
    from glm4voice.pipeline.session import ChatSettings
    from glm4voice.pipeline.voice_chat import VoiceChat

    chat = VoiceChat.from_pretrained()  # nothing given: the embedded model
    with chat.session(ChatSettings(max_new_tokens=120, seed=0)) as s:
        events = list(s.respond(user_audio=str(ROOT / "examples" / "question.wav")))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    pcm = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
    stages = {e.stage for e in events if isinstance(e, Timing)}
    end = [e for e in events if isinstance(e, TurnEnd)]
    assert text.strip() and len(end) == 1 and end[0].tokens <= 120
    assert {e.sample_rate for e in events if isinstance(e, AudioChunk)} == {22050}
    assert pcm.size > 22050 * 0.5 and np.isfinite(pcm).all() and np.abs(pcm).max() > 1e-3
    assert {"tokenize", "lm_prefill", "lm_first_audio_block", "speech_decode"} <= stages


def _build_script(argv):
    import runpy
    import sys

    old = sys.argv
    sys.argv = ["build_embedded.py", *argv]
    try:
        return runpy.run_path(str(ROOT / "scripts" / "build_embedded.py"), run_name="__main__")
    finally:
        sys.argv = old


def test_build_script_keeps_components_it_is_not_given(tmp_path):
    import shutil

    import pytest

    out = tmp_path / "embedded"
    shutil.copytree(EMBEDDED, out)
    before = json.loads((out / "MANIFEST.json").read_text())
    with pytest.raises(SystemExit) as done:
        _build_script(["--out", str(out)])
    assert done.value.code == 0
    after = json.loads((out / "MANIFEST.json").read_text())
    for part in ("tokenizer", "lm", "decoder"):
        assert after[part] == {**before[part], "kept": True}
    assert after["files"] == before["files"] and after["total_bytes"] == before["total_bytes"]
    shutil.rmtree(out / "lm")
    with pytest.raises(SystemExit, match="lm does not exist"):
        _build_script(["--out", str(out)])


def test_build_script_leaves_an_unchanged_tokenizer_file_alone(tmp_path):
    import shutil

    import pytest
    from safetensors.torch import load_file, save_file

    from tests.test_int8_weights import plain_copy

    out = plain_copy(tmp_path / "embedded")  # bf16/fp32 files, as a trainer's export (the shipped ones are int8)
    src = tmp_path / "tok_export"
    shutil.copytree(out / "tokenizer", src)
    weights = out / "tokenizer" / "model.safetensors"
    with pytest.raises(SystemExit):
        _build_script(["--out", str(out), "--tokenizer", str(src)])  # now bf16 in out
    stamp = weights.stat().st_mtime_ns
    sd = load_file(str(src / "model.safetensors"))
    save_file(dict(reversed(list(sd.items()))), str(src / "model.safetensors"), metadata={"note": "re-saved"})
    with pytest.raises(SystemExit):
        _build_script(["--out", str(out), "--tokenizer", str(src)])
    assert weights.stat().st_mtime_ns == stamp  # same tensors: not rewritten, so git sees no change
    name = next(iter(sd))
    sd[name] = sd[name] + 1
    save_file(sd, str(src / "model.safetensors"))
    with pytest.raises(SystemExit):
        _build_script(["--out", str(out), "--tokenizer", str(src)])
    assert torch.equal(load_file(str(weights))[name], sd[name].to(torch.bfloat16))


def test_int8_rebuild_of_an_unchanged_tokenizer_leaves_its_packed_files_alone(tmp_path):
    """Shipping a new ASR branch (``--tokenizer EXPORT --int8 tokenizer``) must not rewrite the encoder's packed file
    when its tensors are the same: it is compared packed, not as the bf16 it was before packing."""
    import shutil

    import pytest
    from safetensors.torch import load_file, save_file

    from glm4voice.int8_weights import is_packed
    from tests.test_int8_weights import plain_copy

    out = plain_copy(tmp_path / "embedded")
    src = tmp_path / "tok_export"
    shutil.copytree(out / "tokenizer", src)
    with pytest.raises(SystemExit):
        _build_script(["--out", str(out), "--tokenizer", str(src), "--int8", "tokenizer"])
    weights, branch = out / "tokenizer" / "model.safetensors", out / "tokenizer" / "asr_branch.safetensors"
    assert is_packed(load_file(str(weights))) and is_packed(load_file(str(branch)))
    stamps = [f.stat().st_mtime_ns for f in (weights, branch)]
    sd = load_file(str(src / "asr_branch.safetensors"))
    name = next(iter(sd))
    sd[name] = sd[name] + 1  # a new branch, the same encoder
    save_file(sd, str(src / "asr_branch.safetensors"))
    with pytest.raises(SystemExit):
        _build_script(["--out", str(out), "--tokenizer", str(src), "--int8", "tokenizer"])
    assert weights.stat().st_mtime_ns == stamps[0]
    assert branch.stat().st_mtime_ns != stamps[1] and is_packed(load_file(str(branch)))


def test_build_script_ships_the_word_piece_vocabulary_of_the_branch(tmp_path):
    """tokenizer-adapt reads ``asr_pieces.json`` beside the branch: it travels with it, and a stale one goes."""
    import shutil

    import pytest

    out = tmp_path / "embedded"
    shutil.copytree(EMBEDDED, out)
    src = tmp_path / "tok_export"
    shutil.copytree(EMBEDDED / "tokenizer", src)
    (src / "asr_pieces.json").write_text('{"vocab": "of this branch"}')
    with pytest.raises(SystemExit):
        _build_script(["--out", str(out), "--tokenizer", str(src)])
    assert (out / "tokenizer" / "asr_pieces.json").read_text() == '{"vocab": "of this branch"}'
    (src / "asr_pieces.json").unlink()
    with pytest.raises(SystemExit):
        _build_script(["--out", str(out), "--tokenizer", str(src)])
    assert not (out / "tokenizer" / "asr_pieces.json").exists()


def test_build_script_sets_the_flow_steps_of_a_kept_decoder(tmp_path):
    import shutil

    import pytest

    from glm4voice.decoder.config import DecoderConfig

    out = tmp_path / "embedded"
    shutil.copytree(EMBEDDED, out)
    with pytest.raises(SystemExit) as done:
        _build_script(["--out", str(out), "--flow-steps", "3"])
    assert done.value.code == 0
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["decoder"]["flow_steps"] == 3 and manifest["decoder"]["kept"]
    cfg, shipped = DecoderConfig.from_yaml(out / "decoder" / "config.yaml"), DecoderConfig.from_yaml(
        EMBEDDED / "decoder" / "config.yaml")
    assert cfg.flow.cfm.n_timesteps == 3 and cfg.flow.estimator == shipped.flow.estimator and cfg.hift == shipped.hift
    with pytest.raises(SystemExit, match="flow-steps"):
        _build_script(["--out", str(out), "--flow-steps", "0"])
    with pytest.raises(SystemExit) as done:
        _build_script(["--out", str(out), "--flow-temperature", "0.7"])
    assert done.value.code == 0
    manifest = json.loads((out / "MANIFEST.json").read_text())
    cfg = DecoderConfig.from_yaml(out / "decoder" / "config.yaml")
    assert manifest["decoder"]["flow_temperature"] == 0.7 and cfg.flow.cfm.temperature == 0.7
    assert cfg.flow.cfm.n_timesteps == 3  # kept from the call before
    with pytest.raises(SystemExit, match="flow-temperature"):
        _build_script(["--out", str(out), "--flow-temperature", "-1"])
