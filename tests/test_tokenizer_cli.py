"""``glm4voice encode``: output formats, batching modes, many files, bad input."""

import json

import pytest
from conftest import load_expected

from glm4voice.cli import main
from glm4voice.cli.synthesize import read_codes


@pytest.fixture(scope="module")
def ref(reference_dir):
    return reference_dir / "tokenizer"


@pytest.fixture(scope="module")
def expected(ref):
    return load_expected(ref)


def _files(ref, expected):
    return [str(ref / "inputs" / n) for n in expected["all_files_one_call"]["file_order"]]


def _stem(path: str) -> str:
    return path.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def test_one_file_prints_its_codes(ref, expected, capsys):
    path = _files(ref, expected)[0]
    assert main(["encode", path, "--tokenizer", str(ref)]) == 0
    out = capsys.readouterr()
    assert [int(c) for c in out.out.split()] == expected["single_file_calls"][_stem(path)]["tokens"]
    assert "encoded 1/1" in out.err


def test_many_files_json_to_file_is_the_official_list_call(ref, expected, tmp_path):
    files = _files(ref, expected)
    out = tmp_path / "codes.json"
    assert main(["encode", *files, "--tokenizer", str(ref), "--json", "-o", str(out), "--batch-size", "4"]) == 0
    data = json.loads(out.read_text())
    assert list(data) == files
    assert {_stem(k): v for k, v in data.items()} == expected["all_files_one_call"]["tokens"]
    assert read_codes(out, key=files[1]) == data[files[1]]  # what `glm4voice synthesize` reads


def test_per_file_list_file_and_tab_format(ref, expected, tmp_path, capsys):
    files = _files(ref, expected)
    (tmp_path / "list.txt").write_text("# inputs\n" + "\n".join(files[1:]) + "\n\n")
    assert main(["encode", files[0], "--list", str(tmp_path / "list.txt"), "--tokenizer", str(ref),
                 "--per-file"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == files
    for line in lines:
        path, codes = line.split("\t")
        assert [int(c) for c in codes.split()] == expected["single_file_calls"][_stem(path)]["tokens"]


def test_channel_mix_and_dtype(ref, expected, capsys):
    stereo = next(str(ref / k) for k, v in expected["inputs"].items() if v["channels"] == 2)
    assert main(["encode", stereo, "--tokenizer", str(ref), "--channel", "mix"]) == 0
    ctl = expected["channel_handling_negative_controls"][_stem(stereo)]["tokens_if_channels_were_averaged"]
    assert [int(c) for c in capsys.readouterr().out.split()] == ctl
    assert main(["encode", stereo, "--tokenizer", str(ref), "--dtype", "bfloat16", "--json"]) == 0
    codes = json.loads(capsys.readouterr().out)[stereo]
    assert len(codes) == expected["single_file_calls"][_stem(stereo)]["num_tokens"]


def test_bad_input_stops_or_is_skipped(ref, expected, tmp_path, capsys):
    good = _files(ref, expected)[0]
    bad = tmp_path / "broken.flac"
    bad.write_bytes(b"fLaC" + bytes(40))
    assert main(["encode", good, str(bad), "--tokenizer", str(ref)]) == 2
    assert "broken.flac" in capsys.readouterr().err
    assert main(["encode", good, str(bad), "--tokenizer", str(ref), "--json", "--skip-bad"]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out) == {good: expected["all_files_one_call"]["tokens"][_stem(good)], str(bad): None}
    assert "broken.flac" in out.err and "encoded 1/2" in out.err
    assert main(["encode", "--tokenizer", str(ref)]) == 2
    assert "no audio given" in capsys.readouterr().err
    assert main(["encode", good, "--tokenizer", str(ref), "--channel", "left"]) == 2
    assert main(["encode", good, "--tokenizer", str(tmp_path / "nowhere")]) == 2
    assert "tokenizer" in capsys.readouterr().err
