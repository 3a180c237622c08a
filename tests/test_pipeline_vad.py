"""Voice-activity detection and streaming input: silero network parity, end-of-turn events, the listener."""

import numpy as np
import pytest
import torch

from glm4voice.audio import load_audio
from glm4voice.errors import AudioError
from glm4voice.pipeline.vad import VAD_WINDOW, SileroVAD, SpeechEnd, SpeechStart, TurnDetector, TurnSettings
from tests.conftest import reference_root

SR = 16000


@pytest.fixture(scope="module")
def vad():
    pytest.importorskip("silero_vad")
    return SileroVAD.from_package()


@pytest.fixture(scope="module")
def speech():
    """About 3 s of real speech (Festival voice) from the reference inputs, 16 kHz."""
    return load_audio(reference_root() / "tokenizer" / "inputs" / "a01_16k_mono_3s.wav")


def _jit_weights_into(model: SileroVAD):
    from silero_vad import load_silero_vad

    jit = load_silero_vad()
    sd = jit._model.state_dict()
    names = {"stft.forward_basis_buffer": "stft_conv.weight", "decoder.decoder.2.weight": "final_conv.weight",
             "decoder.decoder.2.bias": "final_conv.bias"}
    for i in range(4):
        for s in ("weight", "bias"):
            names[f"encoder.{i}.reparam_conv.{s}"] = f"conv{i + 1}.{s}"
    for s in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        names[f"decoder.rnn.{s}"] = f"lstm_cell.{s}"
    model.load_state_dict({names[k]: v for k, v in sd.items()}, strict=True)
    return jit


def test_network_equals_silero_torchscript_given_its_weights(speech):
    """Our module is silero's network: with the TorchScript model's weights the probabilities are identical."""
    pytest.importorskip("silero_vad")
    ours = SileroVAD().eval()
    jit = _jit_weights_into(ours)
    x = torch.cat([torch.zeros(4000), speech, 0.01 * torch.randn(8000, generator=torch.Generator().manual_seed(0))])
    n = x.numel() // VAD_WINDOW
    want = torch.tensor([jit(x[i * VAD_WINDOW:(i + 1) * VAD_WINDOW], SR).item() for i in range(n)])
    got, _ = ours.step(x[None], ours.init_state())
    torch.testing.assert_close(got[0], want, atol=1e-5, rtol=0)


def test_bundled_weights_detect_speech_and_silence(vad, speech):
    x = torch.cat([torch.zeros(SR), speech, torch.zeros(SR)])
    p, _ = vad.step(x[None], vad.init_state())
    p = p[0]
    lead, body, tail = p[: SR // VAD_WINDOW - 2], p[SR // VAD_WINDOW + 10: (SR + speech.numel()) // VAD_WINDOW - 10], \
        p[-(SR // VAD_WINDOW) + 8:]
    assert lead.max() < 0.2 and tail.max() < 0.2
    assert (body > 0.5).float().mean() > 0.6


def test_chunked_equals_whole(vad, speech):
    """Streaming state: feeding odd-sized chunks gives the same probabilities as one call."""
    whole, _ = vad.step(speech[None], vad.init_state())
    st, parts = vad.init_state(), []
    for i in range(0, speech.numel(), 777):
        p, st = vad.step(speech[None, i:i + 777], st)
        parts.append(p)
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-6, rtol=0)


def test_batched_streams_are_independent(vad, speech):
    noise = 0.02 * torch.randn(speech.numel(), generator=torch.Generator().manual_seed(1))
    both, _ = vad.step(torch.stack([speech, noise]), vad.init_state(2))
    alone, _ = vad.step(noise[None], vad.init_state(1))
    torch.testing.assert_close(both[1:], alone, atol=1e-6, rtol=0)


@pytest.mark.parametrize("silence_ms", [300, 1000])
def test_turn_detector_events_and_configurable_silence(vad, speech, silence_ms):
    det = TurnDetector(vad, TurnSettings(silence_ms=silence_ms))
    x = torch.cat([torch.zeros(8000), speech, torch.zeros(2 * SR)])
    events, st = [], det.init_state()
    ends_at = []
    for i in range(0, x.numel(), 640):  # 40 ms chunks, as the browser sends
        evs, st = det.step(x[i:i + 640], st)
        events += evs
        ends_at += [(i + 640) / SR for e in evs if isinstance(e, SpeechEnd)]
    kinds = [type(e) for e in events]
    assert kinds[0] is SpeechStart and kinds[-1] is SpeechEnd
    start = events[0].seconds
    assert 0.3 <= start <= 0.9  # speech begins after 0.5 s of silence (plus the voice's own lead-in)
    speech_end = events[-1].seconds
    assert speech_end <= (8000 + speech.numel()) / SR + 0.1
    # the end is reported silence_ms after the last speech window (within two windows)
    assert ends_at[-1] - speech_end == pytest.approx(silence_ms / 1000, abs=0.1)


def test_short_click_does_not_start_a_turn(vad, speech):
    det = TurnDetector(vad, TurnSettings(min_speech_ms=400))
    click = speech[4000:4000 + 3 * VAD_WINDOW]  # ~100 ms of speech
    events, _ = det.step(torch.cat([torch.zeros(8000), click, torch.zeros(SR)]), det.init_state())
    assert events == []


def test_bad_input(vad):
    det = TurnDetector(vad)
    with pytest.raises(AudioError, match="mono"):
        det.step(torch.zeros(2, 100), det.init_state())
    with pytest.raises(AudioError, match="NaN"):
        det.step(torch.tensor([0.0, float("nan")]), det.init_state())
    with pytest.raises(ValueError, match="silence"):
        TurnSettings(silence_ms=0)


def test_listener_streams_tokens_equal_offline_and_ends_turn(vad, speech, tmp_path):
    """Streaming input with end-of-turn detection gives the offline codes of the detected speech segment."""
    from glm4voice.pipeline.events import SpeechStarted, UserTurn
    from glm4voice.pipeline.listen import Listener
    from glm4voice.tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.from_pretrained(reference_root() / "tokenizer")
    det = TurnDetector(vad, TurnSettings(silence_ms=500, preroll_ms=300))
    lis = Listener(tok, det)
    x = torch.cat([torch.zeros(SR), speech, torch.zeros(SR)]).numpy()
    events = []
    for i in range(0, x.size, 1000):
        events += lis.feed(x[i:i + 1000])
    assert [type(e) for e in events] == [SpeechStarted, UserTurn]
    start, turn = events[0].seconds, events[1]
    seg_start = round(start * SR) - 4800  # pre-roll 300 ms
    seg = x[seg_start: seg_start + round(turn.audio_seconds * SR)]
    assert turn.audio_seconds == pytest.approx(seg.size / SR)
    (offline,) = tok.encode([torch.from_numpy(np.ascontiguousarray(seg))], batched=False)
    assert list(turn.codes) == offline
    assert not lis.hearing


def test_listener_hold_to_talk_commit(speech):
    from glm4voice.pipeline.listen import Listener
    from glm4voice.tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.from_pretrained(reference_root() / "tokenizer")
    lis = Listener(tok, None)
    with pytest.raises(AudioError, match="no speech"):
        lis.commit()
    for i in range(0, speech.numel(), 640):
        assert lis.feed(speech[i:i + 640]) == []
    turn = lis.commit()
    assert list(turn.codes) == tok.encode([speech], batched=False)[0]
    lis.max_samples = 1000
    with pytest.raises(AudioError, match="longer"):
        lis.feed(speech[:2000])
    assert not lis.hearing  # dropped, ready for the next turn
