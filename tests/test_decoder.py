"""Speech decoder: parity with the official outputs through the production loader, safe loading, bad input.

Parity tolerances (measured max |diff| on this machine in brackets; the reference README expects mel ~1e-5
and speech 1e-5..1e-4 because the NSF source integrates f0 with a float32 cumsum):
mel 1e-5 [3.2e-6], speech 1e-4 [2.0e-5], f0 1e-3 Hz [2.7e-4], source 2e-4 [8.2e-5], encoder/mu 1e-5 [7e-7].
Noise draws must be bit-exact. On CUDA ($GLM4VOICE_TEST_DEVICE, cuDNN TF32 off) an H200 measured source 4.0e-4 and
speech 1.2e-4 (the float32 cumsum of the phase runs as a parallel scan there), so those two are doubled on CUDA.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glm4voice.decoder import DecoderConfig, SpeechDecoder
from glm4voice.decoder.config import read_yaml_as_data
from glm4voice.decoder.flow import feat_len
from glm4voice.decoder.load import build_meta, official_keys, read_state_dict
from glm4voice.decoder.stream import StreamingDecoder
from glm4voice.errors import CheckpointError, ConfigError, TokenError
from tests.conftest import load_expected

TOL = {"mel": 1e-5, "speech": 1e-4, "f0": 1e-3, "source": 2e-4, "hidden": 1e-5}
TOL_CUDA = {**TOL, "speech": 2e-4, "source": 5e-4}
pytestmark = pytest.mark.usefixtures("cuda_full_fp32")
# reference array name (after "offline/") -> (trace key, tolerance group, transpose to the reference layout)
OFFLINE_TRACE = {
    "intermediate_encoder_out": ("encoder_out", "hidden", False),
    "intermediate_encoder_proj": ("encoder_proj", "hidden", False),
    "intermediate_length_regulator_mu": ("mu", "hidden", True),
    "intermediate_f0": ("f0", "f0", False),
    "intermediate_hift_source": ("source", "source", False),
    "noise_flow_z": ("z", "exact", False),
    "noise_hift_phase": ("phase", "exact", False),
    "noise_hift_sine_randn": ("sine_noise", "exact", False),
}


@pytest.fixture(scope="module")
def ref(reference_dir):
    d = reference_dir / "decoder"
    exp = load_expected(d)
    (arrays_file,) = exp["arrays"].keys()
    return d, exp, load_file(str(d / arrays_file))


@pytest.fixture(scope="module")
def dec(ref, device):
    return SpeechDecoder.from_pretrained(ref[0], device=device)


@pytest.fixture(scope="module")
def tol(device):
    return TOL_CUDA if device.type == "cuda" else TOL


def maxdiff(a, b):
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


# --- parity ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg_batched", [True, False])
def test_offline_parity(dec, ref, tol, cfg_batched):
    _, exp, arr = ref
    tokens = torch.tensor([exp["offline"]["tokens"]])
    assert torch.equal(tokens, arr["offline/tokens"])
    dec.cfg_batched = cfg_batched
    try:
        trace = {}
        mel, speech = dec.token2wav(dec.codes_tensor(tokens), trace=trace)
    finally:
        dec.cfg_batched = True
    assert list(mel.shape) == exp["offline"]["mel_shape"] and list(speech.shape) == exp["offline"]["speech_shape"]
    assert maxdiff(mel, arr["offline/mel"]) < tol["mel"]
    assert maxdiff(speech, arr["offline/speech"]) < tol["speech"]
    checked = 0
    for name in exp["arrays"]["expected/outputs.safetensors"]:
        group, _, leaf = name.partition("/")
        if group != "offline" or leaf not in OFFLINE_TRACE:
            continue
        key, group_tol, transpose = OFFLINE_TRACE[leaf]
        ours = trace[key].transpose(1, 2) if transpose else trace[key]
        assert ours.shape == arr[name].shape, name
        if group_tol == "exact":
            assert torch.equal(ours.cpu(), arr[name]), f"{name} is not bit-exact"
        else:
            assert maxdiff(ours, arr[name]) < tol[group_tol], name
        checked += 1
    assert checked >= 3  # the noise draws at least (the intermediates are optional debugging arrays)


def test_decode_matches_offline_and_has_no_global_rng_side_effect(dec, ref, tol):
    _, exp, arr = ref
    before = torch.get_rng_state()
    pcm = dec.decode(exp["offline"]["tokens"])
    assert torch.equal(before, torch.get_rng_state())
    assert pcm.dtype == torch.float32 and pcm.dim() == 1
    assert maxdiff(pcm, arr["offline/speech"][0]) < tol["speech"]


def _stream_official(dec, tokens, blocks=None, feed=7):
    sd = StreamingDecoder(dec, "official", blocks=blocks)
    state = sd.init_state(trace=True)
    chunks = []
    for i in range(0, len(tokens), feed):
        pcm, state = sd.step(tokens[i:i + feed], state)
        chunks.append(pcm)
    chunks.append(sd.finish(state))
    return torch.cat(chunks), state.trace


def test_web_demo_schedule_parity(dec, ref, tol):
    _, exp, arr = ref
    spec = exp["web_demo_streaming"]
    tokens = spec["tokens"]
    pcm, trace = _stream_official(dec, tokens)
    assert len(trace) == len(spec["blocks"])
    for blk, tr in zip(spec["blocks"], trace, strict=True):
        i = blk["block"]
        assert list(tr["speech"].shape) == blk["speech_shape"]
        assert list(tr["mel_returned"].shape) == blk["mel_returned_shape"]
        assert maxdiff(tr["mel_returned"], arr[f"web_demo/block{i}/mel_returned"]) < tol["mel"]
        assert maxdiff(tr["speech"], arr[f"web_demo/block{i}/speech"]) < tol["speech"]
    assert list(pcm.shape) == spec["speech_concat_shape"][1:]
    assert maxdiff(pcm, arr["web_demo/speech_concat"][0]) < tol["speech"]


def test_stream_inference_parity(dec, ref, tol):
    _, exp, arr = ref
    spec = exp["stream_inference"]
    block = spec["blocks"][0]["num_tokens"]
    pcm, trace = _stream_official(dec, spec["tokens"], blocks=(block,), feed=3)
    assert [list(t["mel_returned"].shape) for t in trace] == [b["mel_returned_shape"] for b in spec["blocks"]]
    assert [list(t["speech"].shape) for t in trace] == [b["speech_shape"] for b in spec["blocks"]]
    for blk, tr in zip(spec["blocks"], trace, strict=True):
        assert maxdiff(tr["mel_returned"], arr[f"stream_inference/block{blk['block']}/mel_returned"]) < tol["mel"]
    assert list(pcm.shape) == spec["speech_concat_shape"][1:]
    assert maxdiff(pcm, arr["stream_inference/speech_concat"][0]) < tol["speech"]


def test_feat_len_matches_official_formula():
    assert [feat_len(n) for n in (10, 25, 37, 75, 130)] == [68, 172, 254, 516, 895]
    assert all(feat_len(n) == n * 441 // 64 for n in range(0, 2001))


# --- config and loading ------------------------------------------------------------------------------------
def test_config_yaml_read_as_data(ref, tmp_path):
    cfg = DecoderConfig.from_yaml(ref[0] / "config.yaml")
    assert cfg.flow.vocab_size == 256 and cfg.flow.encoder.block_size == 10 and cfg.hift.base_channels == 64
    assert cfg.flow.estimator.channels == (32, 32) and cfg.flow.cfm.inference_cfg_rate == 0.7
    marker = tmp_path / "executed"
    evil = tmp_path / "config.yaml"
    text = (ref[0] / "config.yaml").read_text()
    evil.write_text(f"__x: !apply:os.system ['touch {marker}']\n__y: !new:subprocess.Popen ['touch {marker}']\n"
                    + text)
    assert DecoderConfig.from_yaml(evil) == cfg  # tags are data: nothing imported, nothing run
    assert not marker.exists()
    evil.write_text(f"__x: !!python/object/apply:os.system ['touch {marker}']\n" + text)
    with pytest.raises(ConfigError):
        DecoderConfig.from_yaml(evil)
    assert not marker.exists()


def test_config_unknown_fields_named(ref, tmp_path):
    text = (ref[0] / "config.yaml").read_text()
    bad = tmp_path / "config.yaml"
    bad.write_text(text.replace("    nb_harmonics: 8\n", "    nb_harmonics: 8\n    warp_drive: 3\n"))
    with pytest.raises(ConfigError, match="warp_drive"):
        DecoderConfig.from_yaml(bad)
    bad.write_text(text.replace("t_scheduler: 'cosine'", "t_scheduler: 'linear'"))
    with pytest.raises(ConfigError, match="t_scheduler"):
        DecoderConfig.from_yaml(bad)
    bad.write_text(text + "\nsurprise_section: 1\n")
    with pytest.raises(ConfigError, match="surprise_section"):
        DecoderConfig.from_yaml(bad)


def test_yaml_refs_resolve(ref):
    doc = read_yaml_as_data(ref[0] / "config.yaml")
    assert doc["hift"]["sampling_rate"] == 22050 and doc["flow"].tag.startswith("!new:")


@pytest.mark.parametrize("component", ["flow", "hift"])
def test_full_size_builds_on_meta_and_matches_manifest(reference_dir, component):
    manifest = json.loads((reference_dir / "manifest" / f"{component}.json").read_text())
    flow, hift = build_meta(DecoderConfig())
    module = flow if component == "flow" else hift
    assert all(p.is_meta for p in module.parameters())
    ours = official_keys(module)
    theirs = {t["key"]: tuple(t["shape"]) for t in manifest["tensors"]}
    assert ours == theirs
    assert len(ours) == manifest["num_tensors"]
    assert sum(int(torch.tensor(s).prod()) for s in ours.values()) == manifest["num_parameters"]


def test_pickled_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    torch.save({"w": Evil()}, tmp_path / "flow.pt")
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(tmp_path / "flow.pt")
    assert not marker.exists()


def _copy_ref(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in ("config.yaml", "flow.pt", "hift.pt"):
        shutil.copy(src / f, dst / f)
    return dst


def test_checkpoint_key_and_shape_errors_name_the_key(ref, tmp_path):
    folder = _copy_ref(ref[0], tmp_path / "dec")
    sd = torch.load(folder / "flow.pt", weights_only=True)
    sd["encoder_proj.weight"] = sd["encoder_proj.weight"][:, :-1]
    torch.save(sd, folder / "flow.pt")
    with pytest.raises(CheckpointError, match=r"encoder_proj\.weight.*shape"):
        SpeechDecoder.from_pretrained(folder)
    del sd["encoder_proj.weight"]
    sd["bogus.weight"] = torch.zeros(1)
    torch.save(sd, folder / "flow.pt")
    with pytest.raises(CheckpointError, match=r"missing keys: encoder_proj\.weight.*unexpected keys: bogus\.weight"):
        SpeechDecoder.from_pretrained(folder)


def test_safetensors_conversion_roundtrip(dec, ref, tmp_path, device):
    from glm4voice.cli.convert import convert_decoder
    out = convert_decoder(ref[0], tmp_path / "converted")
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "flow.safetensors", "hift.safetensors"}
    dec2 = SpeechDecoder.from_pretrained(out, device=device)
    for (k, a), (k2, b) in zip(dec.state_dict().items(), dec2.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


# --- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("codes, match", [
    ([], "empty"),
    ([1, 2, 256], "outside the codebook"),
    ([-1, 3], "outside the codebook"),
    (torch.zeros(2, 3, dtype=torch.long), "1-D"),
    (torch.tensor([1.5, 2.0]), "integers"),
])
def test_bad_codes(dec, codes, match):
    with pytest.raises(TokenError, match=match):
        dec.decode(codes)


def test_stream_rejects_bad_codes_and_reuse(dec):
    sd = StreamingDecoder(dec, "low_latency")
    state = sd.init_state()
    with pytest.raises(TokenError):
        sd.step([1, 999], state)
    sd.finish(state)
    with pytest.raises(RuntimeError, match="finished"):
        sd.step([1], state)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, match", [
    (_truncate, "cannot read"),
    (lambda p: p.write_bytes(b"not a checkpoint" * 8), "cannot read"),
    (lambda p: p.write_bytes(b""), "cannot read"),
    (lambda p: torch.save([torch.zeros(1)], p), "state dict"),
    (lambda p: torch.save({"a": {"b": torch.zeros(1)}}, p), "state dict"),
    (lambda p: p.unlink(), "neither hift.safetensors nor hift.pt"),
], ids=["truncated", "garbage", "empty", "list", "nested", "missing"])
def test_broken_checkpoint_files_raise_checkpoint_error(ref, tmp_path, damage, match):
    folder = _copy_ref(ref[0], tmp_path / "dec")
    damage(folder / "hift.pt")
    with pytest.raises(CheckpointError, match=match):
        SpeechDecoder.from_pretrained(folder)


def test_broken_safetensors_and_non_finite_weights(ref, tmp_path):
    from glm4voice.cli.convert import convert_decoder
    out = convert_decoder(ref[0], tmp_path / "st")
    _truncate(out / "flow.safetensors")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        SpeechDecoder.from_pretrained(out)
    folder = _copy_ref(ref[0], tmp_path / "dec")
    sd = torch.load(folder / "flow.pt", weights_only=True)
    sd["encoder_proj.bias"][3] = float("nan")
    torch.save(sd, folder / "flow.pt")
    with pytest.raises(CheckpointError, match=r"encoder_proj\.bias.*NaN"):
        SpeechDecoder.from_pretrained(folder)
