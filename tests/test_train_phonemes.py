"""The tokenizer trainer's auxiliary phoneme target (train/phonemes.py, ``--phone-weight``)."""

import json
import shutil

import pytest
import torch

from glm4voice.train import phonemes
from glm4voice.train import tokenizer_trainer as tt
from glm4voice.train.engine import TrainConfig, Trainer
from tests.test_train_tokenizer import SPEC, _utts

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def test_parse_drops_stress_and_pauses_and_marks_words():
    out = "w ,V t  I z  n 'aI n t i: n\naI m  f 'aI n\n"
    assert phonemes.parse(out) == ["w", "V", "t", " ", "I", "z", " ", "n", "aI", "n", "t", "i:", "n", " ",
                                   "aI", "m", " ", "f", "aI", "n"]
    assert phonemes.parse("s. 'i.35 _|  tS;h 'i55 _|\n") == ["s.", "i.35", " ", "tS;h", "i55"]
    assert phonemes.parse("\n  _|  \n") == []


@needs_espeak
def test_phonemize_reads_numbers_and_mandarin_tones():
    en = phonemes.phonemize("two plus 2", "en")
    words = " ".join(en).split("   ")  # the word separator " " joined with spaces
    assert len(words) == 3 and words[0] == words[2]  # "2" is read as "two"
    zh = phonemes.phonemize("你好", "zh")
    assert any(s[-1].isdigit() for s in zh)  # the vowels carry tones
    assert phonemes.phonemize("  ", "en") == []
    with pytest.raises(ValueError, match="no phoneme voice"):
        phonemes.phonemize("bonjour", "fr")


def test_cache_is_read_before_espeak_and_survives_a_torn_line(tmp_path):
    cache = tmp_path / phonemes.CACHE_FILE
    cache.write_text(json.dumps({"language": "en", "text": "one", "phones": ["w", "V", "n"]}) + "\n" + '{"langu')
    got = phonemes.cached_phonemes(tmp_path, [("en", "one")])
    assert got == {("en", "one"): ["w", "V", "n"]}


def test_sequence_error_rate():
    assert tt.sequence_error_rate([[1, 2, 3], [4]], [[1, 3], [4, 5]]) == pytest.approx(2 / 4)
    assert tt.sequence_error_rate([[1]], [[1]]) == 0.0


def _with_phones(utts):
    table = {"one": [0, 1, 2], "two": [3, 4], "three": [5, 6, 7], "four": [8, 9]}
    for u in utts:
        u.phones = table[u.text]
    return utts


def test_phone_head_trains_is_scored_and_is_not_exported(tmp_path):
    torch.manual_seed(0)
    spec = tt.TokenizerTrainSpec(**{**SPEC.__dict__, "phones": 10, "phone_weight": 1.0})
    model = tt.TokenizerTrainModel(spec)
    utts = _with_phones(_utts())
    batches = tt.Batches(utts, 6, seed=0)
    batch = batches(0, 0, 1)
    by_text = {u.text: u.phones for u in utts}
    assert len(batch) == 4 and [by_text[bytes(t).decode()] for t in batch[2]] == batch[3]  # aligned targets
    with torch.no_grad():
        loss, stats = model.eval()(*batch)
    assert loss.item() == pytest.approx(stats["asr_loss"] + stats["phone_loss"] + stats["vq_loss"], rel=1e-4)
    first = stats["phone_loss"]
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path / "run"), steps=40, lr=3e-3, warmup=5, log_every=10,
                                  eval_every=0, save_every=40), model, batch_fn=batches, loss_fn=lambda m, b: m(*b))
    trainer.fit()
    with torch.no_grad():
        _, stats = model.eval()(*batch)
    assert stats["phone_loss"] < 0.5 * first
    res = tt.make_eval(utts[:4])(model)
    assert 0.0 <= res["phone_error"] <= 1.5
    folder = tt.export(model, tmp_path / "tok")
    meta = json.loads((folder / tt.ASR_BRANCH_CONFIG).read_text())
    assert meta["spec"]["phones"] == 0 and meta["spec"]["phone_weight"] == 0.0
    again = tt.load_for_asr(folder)
    assert again.phone is None
    feats = tt.featurize([u.pcm for u in utts[:4]])
    assert again.transcribe(*feats) == model.transcribe(*feats)


def test_without_phone_weight_the_batch_and_loss_are_unchanged():
    utts = _utts(4)
    batch = tt.Batches(utts, 4, seed=0)(0, 0, 1)
    assert len(batch) == 3
    torch.manual_seed(0)
    model = tt.TokenizerTrainModel(SPEC).eval()
    with torch.no_grad():
        _, stats = model(*batch)
    assert "phone_loss" not in stats and model.phone is None


def test_attach_phones_keeps_the_saved_inventory(tmp_path):
    corpus, run = tmp_path / "corpus", tmp_path / "run"
    corpus.mkdir()
    rows = {"one": ["w", "V", "n"], "two": ["t", "u:"], "three": ["T", "r", "i:"], "four": ["f", "o@"]}
    (corpus / phonemes.CACHE_FILE).write_text(
        "".join(json.dumps({"language": "en", "text": t, "phones": p}) + "\n" for t, p in rows.items()))
    train, held = _utts(8), _utts(2)
    symbols = tt.attach_phones(str(corpus), str(run), train, held)
    assert symbols == sorted({s for p in rows.values() for s in p})
    assert [symbols[i] for i in train[0].phones] == rows[train[0].text]
    json.dump(["t", "u:"], (run / "phones.json").open("w"))  # an earlier start of the run saved a smaller one
    again = _utts(8)
    assert tt.attach_phones(str(corpus), str(run), again, []) == ["t", "u:"]
    assert [u.phones for u in again if u.text == "two"][0] == [0, 1]
    assert [u.phones for u in again if u.text == "one"][0] == []  # symbols outside the inventory are dropped
