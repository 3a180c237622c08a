"""Regression guard of the shipped model: a few held-out spoken questions, answered end to end (speech in ->
speech + text out -> independent ASR judge). Skipped while the checkout has no embedded model."""

import pytest

from glm4voice.checkpoints import embedded_dir

COMPONENTS = ("tokenizer", "lm", "decoder")
pytestmark = pytest.mark.skipif(not all(embedded_dir(c).is_dir() for c in COMPONENTS),
                                reason="no embedded model in this checkout (glm4voice/assets/embedded)")
KINDS = ("arithmetic", "capital", "greeting")  # exact-answer English kinds: the judge is reliable there
N_ITEMS = 6


@pytest.mark.slow  # the issue-7 quality target; the shipped model (v6) does not reach it yet (docs/model_card.md)
def test_embedded_model_answers_heldout_spoken_questions(tmp_path):
    pytest.importorskip("faster_whisper", reason="run scripts/install_eval_deps.sh")
    from glm4voice.eval.context import Context
    from glm4voice.eval.data import EvalSet, builtin_heldout
    from glm4voice.eval.suites import SUITES

    heldout = builtin_heldout(tmp_path / "eval-sets", per_kind=2)  # held-out phrasings x held-out voices
    items = tuple(it for it in heldout.items if it.kind in KINDS and it.language == "en")
    ctx = Context(dataset=EvalSet(heldout.name, items), limit=N_ITEMS, cache_dir=tmp_path, judge_name="whisper")
    res = SUITES["spoken_qa"](ctx)
    wrong = [(r["question"], r.get("answer"), r["transcript"]) for r in res.rows if not r.get("correct_s2s")]
    assert res.metrics["items"] == N_ITEMS
    assert res.metrics["accuracy_s2t"] >= 5 / 6, wrong
    assert res.metrics["accuracy_s2s"] >= 4 / 6, wrong
