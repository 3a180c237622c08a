"""scripts/lm_asr_probe.py: each of its four ways sends the LM the prompt it says, and scores what comes back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_lm_samples import load_tokenizer, make_corpus, make_tokenizer_dir
from test_train_lm import export_tiny_lm, load_script

from glm4voice.train import lm_samples as ls
from glm4voice.train import lm_trainer as lt


def _probe_module():
    return load_script("lm_asr_probe")


def test_probe_routes_each_way_and_scores_it(tmp_path, monkeypatch, capsys):
    tok_dir = make_tokenizer_dir(tmp_path / "tok")
    corpus = make_corpus(tmp_path / "corpus")  # with a torn manifest line, which the probe must skip
    # the toy codes depend on the text only: give the second voice's question other codes, so the two differ
    q1 = Path(corpus) / "tokens" / "arith-1h.q1.npy"
    np.save(q1, np.load(q1)[::-1].copy())
    export_tiny_lm(corpus, tok_dir, tmp_path)
    tok = load_tokenizer(tok_dir)
    sp = ls.Specials.from_tokenizer(tok)
    held = ls.load_lm_data(corpus, split="heldout").dialogues
    assert len(held) == 2  # one held-out item, two voices
    asr_head = [sp.gmask, sp.sop, *tok.encode(ls.ASR_PROMPT), sp.boa]
    # the fake LM: hears the first question right and the second wrong, answers typed questions right and spoken
    # ones wrong
    replies = {}
    for i, d in enumerate(held):
        heard = d.question.text if i == 0 else "Say hello."
        replies[tuple(asr_head + sp.audio_ids(d.question.codes) + [sp.eoa])] = tok.encode(heard)
        replies[tuple(ls.dialogue_prompt(tok, sp, d.question.text))] = tok.encode(d.answer.text)
        replies[tuple(ls.dialogue_prompt(tok, sp, d.question.codes))] = tok.encode("Seven.")
    asked = []

    def fake_greedy(model, prompts, stops, limits, keep=None):
        asked.extend(tuple(p) for p in prompts)
        outs = [list(replies.get(tuple(p), tok.encode("Nine."))) for p in prompts]
        return outs, [True] * len(prompts)

    monkeypatch.setattr(lt, "greedy_answers", fake_greedy)
    out = tmp_path / "rows.jsonl"
    assert _probe_module().main(["--corpus", corpus, "--lm", str(tmp_path / "lm"), "--n", "5", "--threads", "1",
                                 "--out", str(out)]) == 0
    assert set(asked) <= set(replies) | {tuple(ls.dialogue_prompt(tok, sp, "Say hello."))}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and {r["group"] for r in rows} == {"training voices"}
    by_text = {r["heard"] == r["question"]: r for r in rows}
    right, wrong = by_text[True], by_text[False]
    assert right["asr_error"] == 0 and wrong["asr_error"] > 0
    assert (right["spoken"], right["cascade"], right["typed"]) == (False, True, True)
    assert (wrong["spoken"], wrong["cascade"], wrong["typed"]) == (False, False, True)
    table = capsys.readouterr().out
    assert "| all | 2 |" in table and "| 0 | 1 | 2 |" in table


def test_probe_refuses_a_corpus_without_held_out_dialogues(tmp_path):
    from test_lm_samples import TOY_ITEMS

    tok_dir = make_tokenizer_dir(tmp_path / "tok")
    corpus = make_corpus(tmp_path / "corpus", items=[it for it in TOY_ITEMS if it[5] != "heldout"])
    export_tiny_lm(corpus, tok_dir, tmp_path)
    with pytest.raises(SystemExit, match="no held-out dialogues"):
        _probe_module().main(["--corpus", corpus, "--lm", str(tmp_path / "lm"), "--threads", "1"])
