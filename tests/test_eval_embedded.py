"""Regression guard of the shipped model: a few held-out spoken questions, answered end to end (speech in ->
speech + text out -> independent ASR judge). Skipped while the checkout has no embedded model."""

import pytest

from glm4voice.checkpoints import embedded_dir

COMPONENTS = ("tokenizer", "lm", "decoder")
pytestmark = pytest.mark.skipif(not all(embedded_dir(c).is_dir() for c in COMPONENTS),
                                reason="no embedded model in this checkout (glm4voice/assets/embedded)")
KINDS = ("arithmetic", "capital", "greeting")  # exact-answer English kinds: the judge is reliable there
N_ITEMS = 6
# Floor for the default run: the shipped model's S->T score on the whole built-in held-out set (32 items) may not
# fall below this. v20 answers 16 of 32 (v19: 17; v18: 15; v17: 17; v16: 15; v15: 15; v14: 15; v13: 14; v12: 9;
# v6-v11: 6; docs/model_card.md; v20 answers more than v19 on the larger sets: 625 against 611 of 1,000); greedy
# decoding is deterministic on one machine, and the margin absorbs numeric differences between machines. Raise it
# when a better model ships.
S2T_FLOOR = 15


@pytest.mark.slow  # the issue-7 quality target; the shipped model (v20) does not reach it yet (docs/model_card.md)
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


def test_embedded_model_keeps_its_heldout_speech_to_text_score(tmp_path):
    """Speech in -> text out on the built-in held-out set (held-out phrasings and voices, both languages): a
    regression floor that runs by default (under a minute, building the set included; no speech decoding, no judge)."""
    from glm4voice.eval.context import Context
    from glm4voice.eval.data import builtin_heldout
    from glm4voice.eval.suites import SUITES
    from glm4voice.eval.system import Generation

    heldout = builtin_heldout(tmp_path / "eval-sets", per_kind=2)
    assert len(heldout.items) == 32 and {it.language for it in heldout.items} == {"en", "zh"}
    ctx = Context(dataset=heldout, cache_dir=tmp_path, text_only=True,
                  generation=Generation(max_new_tokens=120))
    res = SUITES["spoken_qa"](ctx)
    right = [(r["question"], r.get("answer")) for r in res.rows if r.get("correct_s2t")]
    assert res.metrics["items"] == 32
    assert len(right) >= S2T_FLOOR, right
