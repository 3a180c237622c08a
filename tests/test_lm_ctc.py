"""The LM's training-only CTC objective (lm_ctc): spans point at each input utterance's codes and carry its
transcript, survive packing, the head learns, the export is the plain LM, runs resume exactly."""

import random

import pytest
import torch
from test_lm_samples import CODEBOOK, load_tokenizer
from test_train_lm import _args, _run, _tiny_model, env  # noqa: F401  (env: the module fixture)

from glm4voice.errors import ConfigError
from glm4voice.train import lm_ctc
from glm4voice.train import lm_samples as ls
from glm4voice.train import lm_trainer as lt
from glm4voice.train.engine import read_metrics


def _encode(text):  # a stand-in piece vocabulary: one piece per character
    return [ord(c) % 50 for c in text.lower()]


@pytest.fixture(scope="module")
def parts(env):  # noqa: F811
    tok = load_tokenizer(env["tok"])
    sp = ls.Specials.from_tokenizer(tok, CODEBOOK)
    return tok, sp, ls.load_lm_data(env["corpus"])


def _check_span(ids, span, text, sp, codes=None):
    start, n, targets = span
    assert ids[start - 1] == sp.boa and ids[start + n - 1] == sp.eoa  # the codes and the closing eoa
    assert all(sp.is_audio(t) for t in ids[start:start + n - 1])
    if codes is not None:
        assert ids[start:start + n - 1] == sp.audio_ids(codes)
    assert list(targets) == _encode(text)


@pytest.mark.parametrize("loss", ls.SFT_LOSS)
def test_dialogue_spans_are_the_questions_codes_with_their_transcripts(parts, loss):
    tok, sp, data = parts
    mix = ls.Mixture(tok, sp, data, "multi=1", sft_loss=loss, ctc_encode=_encode)
    for seed in range(5):
        x = mix.pools["multi"][seed % len(mix.pools["multi"])]
        rng = random.Random(seed)
        samples = mix.build("multi", x, rng)
        carriers = [s for s in samples if s.ctc]
        assert len(carriers) == 1  # one copy of a split dialogue: both have the same ids
        # the same draw without the objective: the same samples, the same RNG state
        plain = ls.Mixture(tok, sp, data, "multi=1", sft_loss=loss)
        rng2 = random.Random(seed)
        again = plain.build("multi", x, rng2)
        assert [s.ids for s in again] == [s.ids for s in samples] and rng.random() == rng2.random()
        ids = carriers[0].ids
        turns = ids.count(sp.boa)
        assert len(carriers[0].ctc) == turns >= 2
        assert carriers[0].ctc[0][2] == tuple(_encode(x.question.text))  # the first turn is the drawn dialogue
        for span in carriers[0].ctc:
            start, n, _ = span
            assert ids[start - 1] == sp.boa and ids[start + n - 1] == sp.eoa


def test_asr_and_speech_documents_carry_spans_and_text_documents_none(parts):
    tok, sp, data = parts
    mix = ls.Mixture(tok, sp, data, "asr=1", ctc_encode=_encode)
    u = data.utterances[0]
    for kind in ("asr", "speech"):
        (s,) = mix.build(kind, u, random.Random(0))
        assert len(s.ctc) == 1
        _check_span(s.ids, s.ctc[0], u.text, sp, u.codes)
    for kind, x in (("tts", u), ("text", data.texts[0]), ("sft_text", data.dialogues[0])):
        assert all(not s.ctc for s in mix.build(kind, x, random.Random(0)))
    cut = ls.Mixture(tok, sp, data, "asr=1", ctc_encode=_encode, max_audio=3)  # a cut utterance: no transcript
    long = next(v for v in data.utterances if len(v.codes) > 3)
    assert not cut.build("asr", long, random.Random(0))[0].ctc


def test_spans_follow_packing_and_a_cut_drops_the_span_it_reaches(parts):
    tok, sp, data = parts
    mix = ls.Mixture(tok, sp, data, "sft=1,asr=1,text=1", ctc_encode=_encode, code_noise=0.2)
    b = ls.pack_batch(mix.draw, seed=3, step=0, rank=0, batch_size=6, seq_len=300, pad_id=sp.eot, fill_tries=3)
    assert len(b.ctc) >= 6
    for row, start, n, targets in b.ctc:
        ids = b.input_ids[row].tolist()
        assert ids[start - 1] == sp.boa and ids[start + n - 1] == sp.eoa and targets
        assert b.doc_ids[row, start - 1] == b.doc_ids[row, start + n - 1] >= 0
    # rows shorter than a dialogue: every draw is cut and no span may point past the row
    short = ls.pack_batch(mix.draw, seed=3, step=0, rank=0, batch_size=6, seq_len=40, pad_id=sp.eot)
    assert short.stats["cut"] > 0
    assert all(start + n <= 40 for _, start, n, _ in short.ctc)


def test_ctc_spans_must_match_the_audio_runs():
    with pytest.raises(ValueError, match="2 audio runs"):
        lm_ctc.ctc_spans([1, 5, 6, 2, 1, 7, 2], ["a"], 1, 2, _encode)
    assert lm_ctc.ctc_spans([1, 5, 6, 2], [""], 1, 2, _encode) == ()  # nothing to emit: no span


def test_head_leaves_the_logits_alone_and_refuses_the_last_block(parts):
    tok, _, _ = parts
    lm = _tiny_model(tok).eval()
    ids = torch.randint(0, 100, (2, 9))
    model = lm_ctc.AudioCTC(lm, 20, 1)
    logits, ctc_logits = model(ids)
    torch.testing.assert_close(logits, lm(ids))
    assert ctc_logits.shape == (2, 9, 21) and model.blank == 20
    model.train()
    model.head_only = True  # warm-up: the CTC loss reaches the head, not the LM
    _, ctc_logits = model(ids)
    lm_ctc.ctc_loss(ctc_logits, [(0, 1, 6, (1, 2))], model.blank).backward()
    assert model.head.weight.grad is not None and all(p.grad is None for p in lm.parameters())
    model.head_only = False
    _, ctc_logits = model(ids)
    lm_ctc.ctc_loss(ctc_logits, [(0, 1, 6, (1, 2))], model.blank).backward()
    assert lm.layers[0].mlp.up.weight.grad.abs().sum() > 0
    for bad in (0, 2):  # 2 blocks: only the first may be read
        with pytest.raises(ConfigError, match="--ctc-layer"):
            lm_ctc.AudioCTC(lm, 20, bad)


def test_greedy_path_and_ctc_loss():
    blank = 3
    logits = torch.full((1, 6, 4), -5.0)
    for t, c in enumerate([0, 0, 3, 0, 1, 3]):
        logits[0, t, c] = 5.0
    spans = [(0, 0, 6, (0, 0, 1))]
    assert lm_ctc.greedy_ctc(logits, spans, blank) == [[0, 0, 1]]  # a blank separates the repeated piece
    right = lm_ctc.ctc_loss(logits, spans, blank)
    wrong = lm_ctc.ctc_loss(logits, [(0, 0, 6, (2, 2, 1))], blank)
    assert float(right) < 0.1 < float(wrong)
    # more targets than positions: no alignment, counted as zero instead of infinity
    assert float(lm_ctc.ctc_loss(logits, [(0, 0, 2, (0, 1, 2))], blank)) == 0.0


def test_training_with_ctc_learns_the_transcripts_and_exports_the_plain_lm(env, tmp_path):  # noqa: F811
    from glm4voice.lm.load import load_lm

    run = tmp_path / "run"
    rows = _run(env, run, "--mix", "sft=1,asr=1", "--ctc-weight", 1, "--ctc-pieces", 300, "--eval-every", 30,
                "--eval-batches", 1, "--eval-answers", 0, "--export", tmp_path / "model", "--export-dtype", "fp32",
                steps=60)
    assert rows[-1]["ctc_loss"] < 0.5 * rows[0]["ctc_loss"], (rows[0], rows[-1])
    evals = [r for r in read_metrics(str(run)) if r["kind"] == "eval"]
    assert evals and 0 <= evals[-1]["eval_ctc_per"] and evals[-1]["eval_ctc_loss"] > 0
    assert (run / lm_ctc.CTC_PIECES).is_file()
    trained = torch.load(run / "last.pt", weights_only=True)["model"]
    assert any(k.startswith("head.") for k in trained)
    model = load_lm(tmp_path / "model", dtype=torch.float32)  # strict loader: no head keys in the export
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained["lm." + k]), k
    assert lt.export_run(run, tmp_path / "again", dtype="fp32") == (60, 60)
    again = load_lm(tmp_path / "again", dtype=torch.float32)
    for k, v in again.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_ctc_run_resumes_exactly(env, tmp_path):  # noqa: F811
    opts = ("--mix", "sft=1,asr=1", "--ctc-weight", 0.5, "--ctc-layer", 1, "--ctc-pieces", 300, "--ctc-warmup", 6)
    _run(env, tmp_path / "full", *opts, steps=10)
    _run(env, tmp_path / "cut", *opts, "--until", 4, steps=10)
    _run(env, tmp_path / "cut", *opts, steps=10)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    with pytest.raises(ConfigError, match="CTC objective"):  # resumed without the head it started with
        _run(env, tmp_path / "cut", "--mix", "sft=1,asr=1", steps=12)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bad_ctc_options(env, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="--ctc-weight"):
        lt.main(_args("--corpus", env["corpus"], "--tokenizer", env["tok"], "--out", tmp_path / "a",
                      "--ctc-weight", -1))
    with pytest.raises(ConfigError, match="--ctc-layer"):
        _run(env, tmp_path / "b", "--ctc-weight", 1, "--ctc-layer", 2, "--ctc-pieces", 300, steps=2)
