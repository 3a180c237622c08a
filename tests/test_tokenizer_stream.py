"""Streaming tokenizer: chunked streaming equals offline, caching, 30 s restarts, explicit state."""

import itertools
import math

import pytest
import torch
from conftest import load_expected

from glm4voice.audio import load_audio
from glm4voice.constants import CHUNK_SAMPLES
from glm4voice.errors import AudioError
from glm4voice.tokenizer import SpeechTokenizer

CHUNK_SIZES = (320, 3200, 10**8)  # 20 ms, 200 ms, everything at once


@pytest.fixture(scope="module")
def ref(reference_dir):
    return reference_dir / "tokenizer"


def speech_files(ref, min_seconds=0.0, max_seconds=30.0):
    """Reference inputs (from expected.json, not by name) whose length lies in the range, shortest first."""
    inputs = load_expected(ref)["inputs"]
    fits = [k for k, v in inputs.items() if min_seconds <= v["length_after_resampling_to_16k"] / 16000 <= max_seconds]
    return [ref / k for k in sorted(fits, key=lambda k: inputs[k]["length_after_resampling_to_16k"])]


@pytest.fixture(scope="module")
def tok(ref, device):
    return SpeechTokenizer.from_pretrained(ref, device=device)


def stream(tok, wav, chunk, **kw):
    """Feed ``wav`` in pieces of ``chunk`` samples (an int, or a list of sizes used in turn)."""
    state = tok.init_state(**kw)
    sizes = itertools.cycle(chunk if isinstance(chunk, list) else [chunk])
    early, i = [], 0
    while i < wav.shape[0]:
        n = next(sizes)
        codes, state = tok.step(wav[i: i + n], state)
        early += codes
        i += n
    return early, tok.finish(state), state


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
def test_stream_equals_offline_reference(ref, tok, chunk):
    expected = load_expected(ref)
    for name in expected["all_files_one_call"]["file_order"]:
        wav = load_audio(ref / "inputs" / name)
        early, rest, state = stream(tok, wav, chunk)
        assert early + rest == expected["single_file_calls"][name.rsplit(".", 1)[0]]["tokens"], (name, chunk)
        assert state.revised == 0
        # only 30 s chunk closes make codes final before the end of speech
        assert len(early) == 375 * (wav.shape[0] // CHUNK_SAMPLES)


def test_random_chunk_sizes_between_20_and_200ms(ref, tok):
    """Arbitrary piece sizes (20..200 ms, not multiples of any hop), across the 30 s boundary of the long file."""
    expected = load_expected(ref)
    sizes = torch.randint(320, 3201, (64,), generator=torch.Generator().manual_seed(7)).tolist()
    for name in expected["all_files_one_call"]["file_order"]:
        wav = load_audio(ref / "inputs" / name)
        early, rest, _ = stream(tok, wav, sizes)
        assert early + rest == expected["single_file_calls"][name.rsplit(".", 1)[0]]["tokens"], name


def test_stream_restarts_every_30s_like_offline(ref, tok):
    """A 61 s stream (3 chunks, the last 1 s) and one that ends exactly on a chunk boundary."""
    wavs = [load_audio(p) for p in speech_files(ref, 0.0, math.inf)]
    long = torch.cat(wavs * 2)[: 61 * 16000]
    assert long.shape[0] == 61 * 16000
    exact = long[:CHUNK_SAMPLES]
    offline = tok.encode([long, exact], batched=False)
    early, rest, _ = stream(tok, long, 16000)
    assert early + rest == offline[0] and len(early) == 2 * 375
    early, rest, _ = stream(tok, exact, 48000)
    assert early == offline[1] and rest == []


def test_stream_in_bfloat16(ref, device):
    """The stream runs in the model's dtype (features stay float32); same number of codes as offline."""
    tok16 = SpeechTokenizer.from_pretrained(ref, dtype=torch.bfloat16, device=device)
    wav = load_audio(speech_files(ref, 2.0)[0])
    early, rest, _ = stream(tok16, wav, 1600)
    offline = tok16.encode([wav], batched=False)[0]
    assert len(early + rest) == len(offline)
    agree = sum(a == b for a, b in zip(early + rest, offline, strict=True)) / len(offline)
    assert agree > 0.8, agree  # bf16 rounding differs between block-wise and whole-chunk attention


def test_block_mode_emits_during_speech_and_counts_revisions(ref, tok):
    expected = load_expected(ref)
    for name in expected["all_files_one_call"]["file_order"]:
        want = expected["single_file_calls"][name.rsplit(".", 1)[0]]["tokens"]
        wav = load_audio(ref / "inputs" / name)
        early, rest, state = stream(tok, wav, 3200, emit="block")
        codes = early + rest
        assert len(codes) == len(want)
        # each complete 20-position block (5 codes) is returned before the end of speech
        assert len(early) >= 5 * ((wav.shape[0] % CHUNK_SAMPLES) // (20 * 320) - 1)
        assert sum(a != b for a, b in zip(codes, want, strict=True)) == state.revised


def test_finish_runs_only_the_unfinished_block(ref, tok, monkeypatch):
    """With the floor fixed early (loud start), end of speech computes at most one block of positions."""
    wav = load_audio(speech_files(ref, 2.0)[0])
    wav = torch.cat([wav.abs().max() * 1.5 * torch.sin(torch.arange(3200) * 0.3), wav])  # loudest frames first
    block = tok.cfg.quantize_causal_block_size
    state = tok.init_state()
    for i in range(0, wav.shape[0], 1600):
        _, state = tok.step(wav[i: i + 1600], state)
    assert state.blocks >= 4
    lengths = []
    original = tok.model.run_layers
    monkeypatch.setattr(tok.model, "run_layers", lambda x, *a, **k: lengths.append(x.shape[1]) or original(x, *a, **k))
    codes = tok.finish(state)
    assert state.recomputes == 0 and lengths and max(lengths) <= block
    assert tok.encode([wav], batched=False)[0] == codes  # emit="final": every code comes at the end


@pytest.mark.parametrize("refresh_s", [0.1, None])
def test_eager_refresh_absorbs_a_late_floor_rise_before_the_end(ref, tok, monkeypatch, refresh_s):
    """The loudest moment falls inside the unfinished block, then 0.19 s of silence: with eager refresh the
    stale cache is recomputed during that silence and finish runs only the unfinished block; without it,
    finish has to recompute the whole chunk. Both give the offline codes."""
    block = tok.cfg.quantize_causal_block_size
    quiet = load_audio(speech_files(ref, 2.0)[0])[: 5 * block * 320] * 0.05  # 5 blocks complete
    burst = 0.5 * torch.sin(torch.arange(1600) * 0.2)  # louder than anything before: the floor rises
    wav = torch.cat([quiet, torch.zeros(500), burst, torch.zeros(3000)])
    assert wav.shape[0] < 6 * block * 320 - 120  # ... inside block 6, which completes only at finish
    state = tok.init_state(refresh_s=refresh_s)
    for i in range(0, wav.shape[0], 320):
        _, state = tok.step(wav[i: i + 320], state)
    recomputes_before = state.recomputes
    lengths = []
    original = tok.model.run_layers
    monkeypatch.setattr(tok.model, "run_layers", lambda x, *a, **k: lengths.append(x.shape[1]) or original(x, *a, **k))
    codes = tok.finish(state)
    monkeypatch.undo()
    assert codes == tok.encode([wav], batched=False)[0]
    if refresh_s is None:
        assert state.recomputes == recomputes_before + 1 and max(lengths) > block
    else:
        assert recomputes_before >= 1 and state.recomputes == recomputes_before and max(lengths) <= block


def test_floor_rise_triggers_recompute_and_stays_exact(ref, tok):
    wav = load_audio(speech_files(ref, 2.0)[0])
    loud_end = torch.cat([wav * 0.05, wav])  # the maximum arrives late: the floor rises after blocks ran
    early, rest, state = stream(tok, loud_end, 800)
    assert state.recomputes >= 1 and state.revised == 0
    assert early + rest == tok.encode([loud_end], batched=False)[0]


def test_streams_are_independent(ref, tok):
    a, b = (load_audio(f) for f in speech_files(ref, 1.0)[:2])
    sa, sb = tok.init_state(), tok.init_state()
    for i in range(0, max(a.shape[0], b.shape[0]), 1000):
        if i < a.shape[0]:
            _, sa = tok.step(a[i: i + 1000], sa)
        if i < b.shape[0]:
            _, sb = tok.step(b[i: i + 1000], sb)
    assert tok.finish(sa) == tok.encode([a])[0]
    assert tok.finish(sb) == tok.encode([b])[0]


def test_stream_bad_input(tok):
    state = tok.init_state()
    with pytest.raises(AudioError, match="NaN"):
        tok.step(torch.tensor([0.0, float("nan")]), state)
    with pytest.raises(AudioError, match="shape"):
        tok.step(torch.zeros(2, 100), state)
    assert tok.finish(state) == []
    with pytest.raises(AudioError, match="finished"):
        tok.step(torch.zeros(100), state)
    with pytest.raises(ValueError, match="emit"):
        tok.init_state(emit="sometimes")
    with pytest.raises(ValueError, match="refresh_s"):
        tok.init_state(refresh_s=-1.0)
