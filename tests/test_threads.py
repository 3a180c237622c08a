"""--threads / auto thread choice (glm4voice/threads.py): the decision rule on scripted probe times, the probe on
this CPU, and the CLI applying a choice for the command only."""

import argparse

import pytest
import torch

from glm4voice import threads as th


@pytest.fixture
def scripted_probe(monkeypatch):
    """Replace the timing probe with given mean times; records the thread counts it was asked about."""
    asked = []

    def install(times: dict[int, float]):
        def fake(counts):
            asked.append(tuple(counts))
            return {c: times[c] for c in counts}

        monkeypatch.setattr(th, "probe", fake)
        return asked

    return install


def test_parse_threads_accepts_auto_and_positive_numbers_only():
    assert th.parse_threads("auto") == "auto"
    assert th.parse_threads("3") == 3
    for bad in ("0", "-2", "two", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="positive integer"):
            th.parse_threads(bad)


def test_auto_takes_one_thread_when_more_are_slower(scripted_probe):
    asked = scripted_probe({1: 1.7, 2: 35.0})  # what a busy 2-core CPU measured
    choice = th.choose_threads("auto", default=2, environ={})
    assert choice.threads == 1 and "busy" in choice.reason and asked == [(1, 2)]


def test_auto_keeps_parallelism_only_when_it_pays(scripted_probe):
    scripted_probe({1: 1.2, 2: 0.9})  # idle 2-core CPU: 1.33x faster
    assert th.choose_threads(None, default=2, environ={}).threads == 2
    scripted_probe({1: 1.0, 2: 0.95})  # within MIN_GAIN: the fewer threads are as good
    assert th.choose_threads("auto", default=2, environ={}).threads == 1


def test_auto_weighs_half_the_cores_on_larger_machines(scripted_probe):
    asked = scripted_probe({1: 8.0, 4: 2.1, 8: 2.0})  # half the cores busy: 8 barely beat 4
    choice = th.choose_threads("auto", default=8, environ={})
    assert asked == [(1, 4, 8)] and choice.threads == 4


def test_explicit_settings_are_not_probed(scripted_probe):
    scripted_probe({})  # any probe call would fail with a KeyError
    assert th.choose_threads(3, default=2, environ={}).threads == 3
    env = th.choose_threads("auto", default=2, environ={"OMP_NUM_THREADS": "2"})
    assert env.threads == 2 and "OMP_NUM_THREADS" in env.reason
    assert th.choose_threads("auto", default=1, environ={}).threads == 1
    with pytest.raises(ValueError):
        th.choose_threads("many", default=2, environ={})


def test_probe_measures_each_count_and_restores_the_thread_count():
    before = torch.get_num_threads()
    ms = th.probe((1, 2), seconds=0.02)
    assert set(ms) == {1, 2} and all(v > 0 for v in ms.values())
    assert torch.get_num_threads() == before


def test_cli_applies_threads_for_the_command_only(tmp_path, capsys):
    from glm4voice.cli import main

    before = torch.get_num_threads()
    seen = {}

    import glm4voice.cli.encode as encode

    def fake_run(args):
        seen["threads"] = torch.get_num_threads()
        seen["reason"] = args.thread_choice.reason
        return 0

    original = encode.run
    encode.run = fake_run
    try:
        assert main(["encode", "--threads", "1", str(tmp_path / "none.wav")]) == 0
    finally:
        encode.run = original
    assert seen == {"threads": 1, "reason": "1 (--threads)"}
    assert torch.get_num_threads() == before
    with pytest.raises(SystemExit):
        main(["encode", "--threads", "0", "x.wav"])
    assert "positive integer" in capsys.readouterr().err
