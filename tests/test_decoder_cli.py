"""``glm4voice synthesize`` and ``glm4voice convert decoder``."""

import json

import pytest
import soundfile as sf

from glm4voice.cli import main
from glm4voice.cli.synthesize import read_codes
from glm4voice.decoder.flow import feat_len
from glm4voice.errors import TokenError


def test_read_codes_formats(tmp_path):
    (tmp_path / "a.txt").write_text("1 2\n3\t4\n")
    (tmp_path / "b.json").write_text(json.dumps([5, 6]))
    (tmp_path / "c.json").write_text(json.dumps({"x.wav": [7, 8]}))
    (tmp_path / "d.json").write_text(json.dumps({"x.wav": [7], "y.wav": [9]}))
    assert read_codes(tmp_path / "a.txt") == [1, 2, 3, 4]
    assert read_codes(tmp_path / "b.json") == [5, 6]
    assert read_codes(tmp_path / "c.json") == [7, 8]
    assert read_codes(tmp_path / "d.json", key="y.wav") == [9]
    with pytest.raises(TokenError, match="--key"):
        read_codes(tmp_path / "d.json")
    (tmp_path / "e.txt").write_text("1 two 3")
    with pytest.raises(TokenError, match="integer"):
        read_codes(tmp_path / "e.txt")


@pytest.mark.parametrize("extra", [[], ["--stream", "--mode", "official"], ["--stream"]])
def test_synthesize_cli_writes_wav(reference_dir, tmp_path, extra):
    codes = list(range(0, 240, 9))  # 27 codes
    (tmp_path / "codes.json").write_text(json.dumps({"in.wav": codes}))
    out = tmp_path / "out.wav"
    rc = main(["synthesize", str(tmp_path / "codes.json"), "-o", str(out), "--decoder",
               str(reference_dir / "decoder"), *extra])
    assert rc == 0
    wav, sr = sf.read(out)
    assert sr == 22050 and len(wav) == 256 * feat_len(len(codes))


def test_synthesize_cli_bad_codes_exit_code(reference_dir, tmp_path, capsys):
    (tmp_path / "codes.txt").write_text("1 2 99999")
    rc = main(["synthesize", str(tmp_path / "codes.txt"), "-o", str(tmp_path / "o.wav"), "--decoder",
               str(reference_dir / "decoder")])
    assert rc == 2 and "outside the codebook" in capsys.readouterr().err


def test_convert_cli(reference_dir, tmp_path):
    rc = main(["convert", "decoder", str(reference_dir / "decoder"), "-o", str(tmp_path / "st")])
    assert rc == 0 and (tmp_path / "st" / "flow.safetensors").is_file()


def test_synthesize_cli_flow_steps(reference_dir, tmp_path, capsys):
    import numpy as np

    from glm4voice.decoder import SpeechDecoder

    codes = list(range(0, 240, 9))
    (tmp_path / "codes.json").write_text(json.dumps(codes))
    outs = {}
    for steps in ("10", "3"):
        out = tmp_path / f"out{steps}.wav"
        assert main(["synthesize", str(tmp_path / "codes.json"), "-o", str(out), "--decoder",
                     str(reference_dir / "decoder"), "--flow-steps", steps, "--threads", "1"]) == 0
        outs[steps] = sf.read(out)[0]
    default = tmp_path / "default.wav"
    # one thread in every call: `--threads auto` picks fewer threads on a busy CPU, and another thread count
    # sums in another order (outputs differ in the last bits)
    assert main(["synthesize", str(tmp_path / "codes.json"), "-o", str(default), "--decoder",
                 str(reference_dir / "decoder"), "--threads", "1"]) == 0
    assert np.array_equal(sf.read(default)[0], outs["10"])  # the reference config's 10 steps
    assert len(outs["3"]) == len(outs["10"]) and not np.allclose(outs["3"], outs["10"])
    dec = SpeechDecoder.from_pretrained(reference_dir / "decoder", flow_steps=3)
    assert dec.cfg.flow.cfm.n_timesteps == dec.flow.cfg.cfm.n_timesteps == 3  # saved configs say 3 too
    rc = main(["synthesize", str(tmp_path / "codes.json"), "-o", str(tmp_path / "x.wav"), "--decoder",
               str(reference_dir / "decoder"), "--flow-steps", "0"])
    assert rc == 2 and "n_timesteps" in capsys.readouterr().err
