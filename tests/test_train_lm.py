"""LM trainer: packed batches score like single documents, a tiny LM overfits SFT dialogues, exact resume, export
through the production loader, LoRA (adapters only, merged on export), fine-tuning from an exported folder."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_lm_samples import CODEBOOK, TOY_ITEMS, fake_codes, load_tokenizer, make_corpus, make_tokenizer_dir

from glm4voice.errors import ConfigError
from glm4voice.train import lm_samples as ls
from glm4voice.train import lm_trainer as lt
from glm4voice.train.engine import read_metrics

TINY = ["--hidden", "64", "--layers", "2", "--heads", "2", "--kv-heads", "1", "--head-dim", "16", "--ffn", "128",
        "--seq-length", "512"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    return {"tok": make_tokenizer_dir(root / "tok"), "corpus": make_corpus(root / "corpus"), "root": root}


def _args(*argv):
    p = argparse.ArgumentParser()
    lt.add_args(p)
    return p.parse_args([str(a) for a in argv])


def _run(env, out, *extra, steps=40):
    """main() on the toy corpus; a new tiny model unless ``--init`` is among ``extra``. Returns the train log rows."""
    new = [] if "--init" in extra else ["--tokenizer", env["tok"], *TINY]
    args = _args("--corpus", env["corpus"], "--out", out, "--steps", steps, "--batch-size", 2, "--seq-len", 256,
                 "--lr", 1e-2, "--warmup", 5, "--log-every", 5, "--save-every", 1000, "--eval-every", 0, *new, *extra)
    assert lt.main(args) == 0
    return [r for r in read_metrics(str(out)) if r["kind"] == "train"]


def load_script(name: str):
    """scripts/<name>.py as a module (the scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def export_tiny_lm(corpus, tok_dir, root, *extra, steps=1, batch_size=1, seq_len=128) -> str:
    """Train a TINY LM on ``corpus`` for ``steps`` and export it (fp32) to ``root/lm``; returns that folder."""
    assert lt.main(_args("--corpus", corpus, "--tokenizer", tok_dir, "--out", root / "run", "--steps", steps,
                         "--batch-size", batch_size, "--seq-len", seq_len, "--eval-every", 0, "--export", root / "lm",
                         "--export-dtype", "fp32", *TINY, *extra)) == 0
    return str(root / "lm")


def _tiny_model(tok):
    from glm4voice.lm.model import GLM

    spec = lt.LMSpec(hidden=32, layers=2, heads=2, kv_heads=1, head_dim=16, ffn=64, seq_length=512)
    torch.manual_seed(0)
    m = GLM(spec.glm_config(tok))
    m.init_weights()
    return m


def test_packed_documents_score_like_single_documents(env):
    """Positions restart and attention stays inside each packed document, as at inference."""
    tok = load_tokenizer(env["tok"])
    sp = ls.Specials.from_tokenizer(tok, CODEBOOK)
    model = _tiny_model(tok).eval()
    data = ls.load_lm_data(env["corpus"])
    batch = ls.MixtureBatches(ls.Mixture(tok, sp, data, "sft=1,text=1"), batch_size=1, seq_len=400, seed=0)(0, 0, 1)
    docs = batch.doc_ids[0]
    assert docs.max() >= 2  # several documents in the row
    with torch.no_grad():
        packed = lt.forward_logits(model, batch)[0]
        for d in range(int(docs.max()) + 1):
            where = (docs == d).nonzero().flatten()
            alone = model(batch.input_ids[:, where])[0]
            torch.testing.assert_close(packed[where], alone, atol=1e-5, rtol=1e-4)


def test_tiny_lm_overfits_sft_dialogues(env, tmp_path):
    few = {"corpus": make_corpus(tmp_path / "few", voices=("v1",), broken=False, items=TOY_ITEMS[:2]),
           "tok": env["tok"]}
    rows = _run(few, tmp_path / "run", "--stage", "sft", "--mix", "sft=1", "--seq-len", 200, steps=20)
    first, last = rows[0], rows[-1]
    assert last["loss"] < 0.4 * first["loss"], (first, last)
    assert last["text_loss"] < 0.5 * first["text_loss"] and last["speech_loss"] < 0.5 * first["speech_loss"]
    assert 0 <= last["pad_share"] < 1


@pytest.mark.parametrize("extra", [(), ("--dropout", 0.2, "--attention-dropout", 0.1)], ids=["plain", "dropout"])
def test_resume_is_exact(env, tmp_path, extra):
    _run(env, tmp_path / "full", "--mix", "pretrain", *extra, steps=12)
    _run(env, tmp_path / "cut", "--mix", "pretrain", "--until", 7, *extra, steps=12)  # stops after a checkpoint at 7...
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == 7
    _run(env, tmp_path / "cut", "--mix", "pretrain", *extra, steps=12)  # ...and continues from it
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_export_loads_through_the_production_loader(env, tmp_path):
    from glm4voice.lm.load import load_lm

    _run(env, tmp_path / "run", "--mix", "sft=1", "--export", tmp_path / "model", "--export-dtype", "fp32", steps=5)
    model = load_lm(tmp_path / "model", dtype=torch.float32)
    assert sorted(os.listdir(tmp_path / "model")) == ["config.json", "model.safetensors", "tokenizer.model",
                                                      "tokenizer_config.json"]
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k]), k
    tok = lt.load_text_tokenizer(tmp_path / "model")
    assert tok.encode("Paris.") == load_tokenizer(env["tok"]).encode("Paris.")
    assert model.cfg.padded_vocab_size % lt.VOCAB_MULTIPLE == 0 and model.cfg.padded_vocab_size >= tok.vocab_size
    assert set(model.cfg.eos_token_id) == {tok.token_id(n) for n in ("<|endoftext|>", "<|user|>", "<|observation|>")}


def test_lora_trains_adapters_only_and_merges(env, tmp_path):
    tok = load_tokenizer(env["tok"])
    base = _tiny_model(tok)
    ids = torch.randint(0, 400, (2, 20))
    ref = base(ids).detach()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    wrapped = lt.add_lora(base, rank=2, alpha=4.0)
    assert len(wrapped) == 2 * 4  # qkv, out, up, down per layer
    torch.testing.assert_close(base(ids), ref)  # B = 0: the adapted model starts as the base model
    trainable = [n for n, p in base.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in base.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(base(ids)[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
        opt.step()
    adapted = base(ids).detach()
    assert not torch.allclose(adapted, ref)
    merged = lt.merge_lora(base)
    assert set(merged.state_dict()) == set(before)
    torch.testing.assert_close(merged(ids), adapted, atol=1e-5, rtol=1e-4)
    changed = [k for k in before if not torch.equal(before[k], merged.state_dict()[k])]
    assert changed and all(any(t in k for t in (".qkv.", ".out.", ".up.", ".down.")) for k in changed)


def test_finetune_from_export_full_and_lora(env, tmp_path):
    from glm4voice.lm.load import load_lm

    _run(env, tmp_path / "pt", "--mix", "pretrain", "--export", tmp_path / "pt_model", "--export-dtype", "fp32",
         steps=5)
    init = load_lm(tmp_path / "pt_model", dtype=torch.float32).state_dict()
    rows = _run(env, tmp_path / "lora", "--init", tmp_path / "pt_model", "--stage", "sft", "--lora-rank", 4,
                "--lora-alpha", 8, "--export", tmp_path / "lora_model", "--export-dtype", "fp32", steps=15)
    assert rows[-1]["loss"] < rows[0]["loss"]
    ckpt = torch.load(tmp_path / "lora" / "last.pt", weights_only=True)
    assert any("lora_a" in k for k in ckpt["model"])
    emb = "embed.weight"
    assert torch.equal(ckpt["model"][emb], init[emb])  # frozen
    tuned = load_lm(tmp_path / "lora_model", dtype=torch.float32).state_dict()
    assert torch.equal(tuned[emb], init[emb]) and not torch.equal(tuned["layers.0.attn.qkv.weight"],
                                                                  init["layers.0.attn.qkv.weight"])
    rows = _run(env, tmp_path / "full", "--init", tmp_path / "pt_model", "--stage", "sft", steps=5)
    assert rows[-1]["step"] == 5
    # LoRA under bf16 autocast: the frozen base stays bf16, the adapters train in fp32
    _run(env, tmp_path / "lora16", "--init", tmp_path / "pt_model", "--lora-rank", 2, "--precision", "bf16", steps=2)
    state = torch.load(tmp_path / "lora16" / "last.pt", weights_only=True)["model"]
    assert state["layers.0.attn.qkv.base.weight"].dtype == torch.bfloat16
    assert state["layers.0.attn.qkv.lora_a"].dtype == torch.float32


def test_bad_options(env, tmp_path):
    with pytest.raises(ConfigError, match="--init"):
        lt.main(_args("--corpus", env["corpus"], "--tokenizer", env["tok"], "--out", tmp_path, "--lora-rank", 2))
    with pytest.raises(ConfigError, match="unknown sample kinds"):
        lt.main(_args("--corpus", env["corpus"], "--tokenizer", env["tok"], "--out", tmp_path, "--mix", "x=1"))
    with pytest.raises(ConfigError, match="tokenizer"):
        lt.main(_args("--corpus", env["corpus"], "--out", tmp_path))


def test_dropout_option_trains_differently_and_exports_the_release_config(env, tmp_path):
    """--dropout changes the training trajectory (same seed and data), is recorded in run.json, and the export's
    config keeps the release's hidden_dropout 0 (inference never drops); out-of-range values are refused by name."""
    import json

    plain = _run(env, tmp_path / "plain", steps=10)
    drop = _run(env, tmp_path / "drop", "--dropout", 0.2, "--attention-dropout", 0.1, "--export",
                tmp_path / "drop_export", steps=10)
    assert plain[0]["loss"] != drop[0]["loss"] and plain[-1]["loss"] != drop[-1]["loss"]
    run = json.loads((tmp_path / "drop" / "run.json").read_text())
    assert run["dropout"] == {"hidden": 0.2, "attention": 0.1}
    config = json.loads((tmp_path / "drop_export" / "config.json").read_text())
    assert config["hidden_dropout"] == 0.0 and config["attention_dropout"] == 0.0
    for flag in ("--dropout", "--attention-dropout"):
        with pytest.raises(ConfigError, match=flag):
            _run(env, tmp_path / "bad", flag, 1.5, steps=1)


def test_eval_reports_heldout_metrics(env, tmp_path):
    _run(env, tmp_path / "run", "--stage", "sft", "--eval-every", 5, "--eval-batches", 1, "--seq-len", 512, steps=5)
    evals = [r for r in read_metrics(str(tmp_path / "run")) if r["kind"] == "eval"]
    keys = {"eval_text_loss", "eval_speech_loss", "eval_text_acc", "eval_speech_acc", "eval_answer_acc",
            "eval_layout_acc"}
    assert evals and keys <= set(evals[-1])
    assert 0 <= evals[-1]["eval_text_acc"] <= 1
    assert evals[-1]["eval_answer_acc"] == 0  # 5 steps: no exact answer yet


def test_eval_data_follows_eval_seed_not_seed(env):
    """Runs that differ only in --seed are scored on the same held-out batches and questions; --eval-seed changes
    them."""
    from glm4voice.train.engine import config_from_args

    tok = load_tokenizer(env["tok"])
    sp = ls.Specials.from_tokenizer(tok)
    torch.manual_seed(0)
    model = lt.build_model(_args("--tokenizer", env["tok"], "--out", env["root"] / "unused", *TINY), tok).eval()

    def scores(*extra):
        args = _args("--corpus", env["corpus"], "--tokenizer", env["tok"], "--out", env["root"] / "unused",
                     "--mix", "sft=1", "--eval-batches", 2, "--eval-answers", 4, "--seq-len", 256,
                     "--batch-size", 2, *TINY, *extra)
        evaluate = lt._make_eval(args, tok, sp, "sft=1", config_from_args(args))
        with torch.no_grad():
            return evaluate(model)

    base = scores()
    assert base == scores("--seed", 7)
    assert base["eval_text_loss"] != scores("--eval-seed", 3)["eval_text_loss"]


# ---- process-level: SIGKILL and torchrun (slow: several interpreter starts) ------------------------------------

def _cli(env, out, *extra, steps=12, batch=2):
    return [sys.executable, "-m", "glm4voice.cli.train", "lm", "--corpus", env["corpus"], "--tokenizer", env["tok"],
            "--out", str(out), "--steps", str(steps), "--batch-size", str(batch), "--seq-len", "256", "--lr", "1e-2",
            "--warmup", "3", "--log-every", "1", "--save-every", "1", "--eval-every", "0", "--mix", "pretrain",
            *TINY, *map(str, extra)]


def _final(out):
    return torch.load(os.path.join(out, "last.pt"), weights_only=True)


_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(env, tmp_path):
    subprocess.run(_cli(env, tmp_path / "full"), check=True, env=_ENV, capture_output=True)
    proc = subprocess.Popen(_cli(env, tmp_path / "killed"), env=_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once a few steps are saved, at whatever point the run is in
        if ckpt.exists() and torch.load(ckpt, weights_only=True)["step"] >= 4:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _final(tmp_path / "killed")["step"]
    assert 4 <= killed_at < 12
    subprocess.run(_cli(env, tmp_path / "killed"), check=True, env=_ENV, capture_output=True)
    a, b = _final(tmp_path / "full"), _final(tmp_path / "killed")
    assert a["step"] == b["step"] == 12
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(env, tmp_path):
    subprocess.run(_cli(env, tmp_path / "one", steps=6, batch=2), check=True, env=_ENV, capture_output=True)
    cmd = _cli(env, tmp_path / "two", steps=6, batch=1)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
                "-m", *cmd[2:]]
    subprocess.run(torchrun, check=True, env=_ENV, capture_output=True)
    norms = [[r["grad_norm"] for r in read_metrics(str(tmp_path / n)) if r["kind"] == "train"] for n in ("one", "two")]
    assert len(norms[0]) == len(norms[1]) == 6
    for x, y in zip(*norms, strict=True):  # the same global gradient at every step (token-weighted over processes)
        assert y == pytest.approx(x, rel=1e-5)
    a, b = _final(tmp_path / "one")["model"], _final(tmp_path / "two")["model"]
    for k in a:  # equal up to float summation order, which Adam amplifies for near-zero gradients
        torch.testing.assert_close(a[k], b[k], atol=2e-4, rtol=1e-3, msg=k)


@pytest.mark.slow
def test_trained_answer_comes_back_through_inference_generation(env, tmp_path):
    """Train on one dialogue, export, then the inference prompt builder + KV-cache generator reproduce the answer in
    the streaming-thoughts layout: what SFT teaches is what inference asks for."""
    from glm4voice.lm.generate import generate
    from glm4voice.lm.load import load_lm
    from glm4voice.lm.prompt import build_turn
    from glm4voice.lm.sampling import SamplingParams

    one = {"corpus": make_corpus(tmp_path / "one", voices=("v1",), broken=False, items=TOY_ITEMS[1:2]),
           "tok": env["tok"]}
    _run(one, tmp_path / "run", "--mix", "sft=1", "--sft-loss", "joint", "--seq-len", 200, "--batch-size", 1,
         "--export", tmp_path / "model", "--export-dtype", "fp32", steps=60)
    tok = lt.load_text_tokenizer(tmp_path / "model")
    model = load_lm(tmp_path / "model", dtype=torch.float32)
    _, _, _, question, answer, _, _ = TOY_ITEMS[1]
    prompt = build_turn(tok, audio=fake_codes(question).tolist())
    out = list(generate(model, prompt, params=SamplingParams(temperature=0), max_new_tokens=100,
                        stop_ids=sorted(tok.stop_ids)))
    sp = ls.Specials.from_tokenizer(tok)
    want, _ = ls.interleave_answer(tok.encode(answer), sp.audio_ids(fake_codes(answer)))
    assert out == want + [sp.user]
    (dialogue,) = ls.load_lm_data(one["corpus"]).dialogues
    assert lt.answer_accuracy(model, tok, sp, [dialogue]) == {"eval_answer_acc": 1.0, "eval_layout_acc": 1.0}


def test_greedy_answers_match_the_inference_generator(env):
    from glm4voice.lm.generate import generate
    from glm4voice.lm.sampling import SamplingParams

    tok = load_tokenizer(env["tok"])
    sp = ls.Specials.from_tokenizer(tok, CODEBOOK)
    model = _tiny_model(tok).eval()
    dialogues = ls.load_lm_data(env["corpus"]).dialogues[:3]
    prompts = [ls.dialogue_prompt(tok, sp, d.question.codes) for d in dialogues]
    for limit in (1, 7, 30):
        outs, stopped = lt.greedy_answers(model, prompts, {sp.user, sp.eot}, limit)
        for prompt, out, done in zip(prompts, outs, stopped, strict=True):
            ref = list(generate(model, prompt, params=SamplingParams(temperature=0), max_new_tokens=limit,
                                stop_ids=[sp.user, sp.eot]))
            ended = bool(ref) and ref[-1] in (sp.user, sp.eot)
            assert out == (ref[:-1] if ended else ref) and done == ended


def test_speech_consistency_scores_each_answers_speech_against_its_own_text(env, monkeypatch):
    tok = load_tokenizer(env["tok"])
    sp = ls.Specials.from_tokenizer(tok, CODEBOOK)
    dialogues = [d for d in ls.load_lm_data(env["corpus"]).dialogues if d.answer.language == "en"][:3]
    words = {7: "cat", 8: "is", 9: "the"}
    answers = [  # (text, codes, stopped): said right; said wrong; a runaway without speech
        ("the cat", [9, 7], True), ("the cat", [9, 9, 8], True), ("cat", [], False)]
    outs = [tok.encode(t)[:1] + sp.audio_ids(c) + tok.encode(t)[1:] for t, c, _ in answers]
    monkeypatch.setattr(lt, "greedy_answers", lambda *a, **k: (outs, [s for *_, s in answers]))
    heard = []

    class FakeASR:  # transcribes a code as its word
        def transcribe_codes(self, codes, valid):
            rows = [c[v].tolist() for c, v in zip(codes, valid, strict=True)]
            heard.extend(rows)
            return [" ".join(words[x] for x in r) for r in rows]

    out = lt.speech_consistency(None, tok, sp, dialogues, FakeASR())
    assert heard == [[9, 7], [9, 9, 8]]  # each answer's own codes, in order; the speechless one is not asked
    assert out["eval_speech_wer_en"] == pytest.approx(2 / 4)  # "the the is" vs "the cat": 2 errors / 4 words
    assert out["eval_speech_cer_en"] == pytest.approx(5 / 12)  # "thetheis" vs "thecat": 5 edits / 12 letters
    assert out["eval_runaway"] == pytest.approx(1 / 3) and out["eval_speechless"] == pytest.approx(1 / 3)


def test_train_command_dispatch(env, tmp_path, capsys, monkeypatch):
    from glm4voice.cli import main
    from glm4voice.cli import train as cli_train

    with pytest.raises(SystemExit) as e:
        main(["train", "lm", "--help"])
    assert e.value.code == 0 and "--lora-rank" in capsys.readouterr().out  # the trainer's own options
    assert main(["train", "lm", "--corpus", env["corpus"], "--tokenizer", env["tok"], "--out", str(tmp_path / "r"),
                 "--steps", "1", "--batch-size", "1", "--seq-len", "128", "--eval-every", "0", *TINY]) == 0
    assert (tmp_path / "r" / "last.pt").exists()
    monkeypatch.setitem(cli_train.COMPONENTS, "decoder", ("glm4voice.train.no_such_trainer", "x"))
    with pytest.raises(SystemExit, match="not part of this installation"):
        cli_train.load_component("decoder")


def test_export_only_writes_an_unfinished_run(env, tmp_path):
    from glm4voice.errors import CheckpointError
    from glm4voice.lm.load import load_lm

    _run(env, tmp_path / "run", "--mix", "sft=1", "--until", 3, steps=10)
    args = _args("--out", tmp_path / "run", "--export-only", "--export", tmp_path / "model", "--export-dtype", "fp32")
    assert lt.main(args) == 0
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert trained["step"] == 3
    for k, v in load_lm(tmp_path / "model", dtype=torch.float32).state_dict().items():
        assert torch.equal(v, trained["model"][k]), k
    with pytest.raises(ConfigError, match="--export"):
        lt.main(_args("--out", tmp_path / "run", "--export-only"))
    with pytest.raises(CheckpointError, match="run.json"):
        lt.export_run(tmp_path / "model", tmp_path / "again")
    with pytest.raises(ConfigError, match="--corpus"):
        lt.main(_args("--out", tmp_path / "x", "--tokenizer", env["tok"]))


def test_ema_exports_the_weight_average_and_the_raw_weights_apart(env, tmp_path):
    from glm4voice.lm.load import load_lm
    from glm4voice.train.engine import WeightAverage

    _run(env, tmp_path / "run", "--mix", "sft=1", "--ema", 0.8, "--export", tmp_path / "avg", "--export-raw",
         tmp_path / "raw", "--export-dtype", "fp32", steps=6)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    kept = state["extra"]["ema"]
    assert kept["updates"] == 6 and json.loads((tmp_path / "run" / "run.json").read_text())["ema"] == 0.8
    avg = load_lm(tmp_path / "avg", dtype=torch.float32).state_dict()
    raw = load_lm(tmp_path / "raw", dtype=torch.float32).state_dict()
    for k, v in raw.items():
        assert torch.equal(v, state["model"][k]), k
        assert torch.equal(avg[k], kept["shadow"][k]), k
    assert any(not torch.equal(avg[k], raw[k]) for k in raw)
    # --export-only of the run: the average again (and the raw weights with --export-raw)
    assert lt.main(_args("--out", tmp_path / "run", "--export-only", "--export", tmp_path / "again",
                         "--export-raw", tmp_path / "again_raw", "--export-dtype", "fp32")) == 0
    for k, v in load_lm(tmp_path / "again", dtype=torch.float32).state_dict().items():
        assert torch.equal(v, avg[k]), k
    for k, v in load_lm(tmp_path / "again_raw", dtype=torch.float32).state_dict().items():
        assert torch.equal(v, raw[k]), k
    assert isinstance(WeightAverage(0.5), WeightAverage)
    for bad, msg in ((("--ema", 1.5), "--ema"), (("--export-raw", tmp_path / "x"), "give --ema")):
        with pytest.raises(ConfigError, match=msg):
            _run(env, tmp_path / "bad", "--mix", "sft=1", *bad, steps=1)


def test_export_only_merges_lora(env, tmp_path):
    from glm4voice.lm.load import load_lm

    _run(env, tmp_path / "pt", "--mix", "pretrain", "--export", tmp_path / "pt_model", "--export-dtype", "fp32",
         steps=3)
    _run(env, tmp_path / "lora", "--init", tmp_path / "pt_model", "--lora-rank", 2, "--lora-alpha", 4,
         "--export", tmp_path / "end", "--export-dtype", "fp32", steps=4)
    assert lt.export_run(tmp_path / "lora", tmp_path / "again", dtype="fp32") == (4, 4)
    end = load_lm(tmp_path / "end", dtype=torch.float32).state_dict()
    again = load_lm(tmp_path / "again", dtype=torch.float32).state_dict()
    assert all(torch.equal(end[k], again[k]) for k in end)


def test_grown_export_trains_its_new_layers(env, tmp_path):
    """train grow-lm on an export, then train lm --init on the grown folder: it starts where the source was
    (same first-step loss on the same batch) and its zeroed outputs learn."""
    from glm4voice.train import grow_lm

    _run(env, tmp_path / "pt", "--mix", "pretrain", "--export", tmp_path / "pt_model", "--export-dtype", "fp32",
         steps=5)
    rec = grow_lm.grow_folder(tmp_path / "pt_model", tmp_path / "grown", layers=3, ffn=160)
    assert rec["layers"] == [0, 1, "copy of 1"]
    same = ("--mix", "pretrain", "--seed", 3, "--log-every", 1)
    base = _run(env, tmp_path / "base", "--init", tmp_path / "pt_model", *same, steps=10)
    rows = _run(env, tmp_path / "g", "--init", tmp_path / "grown", *same, steps=10)
    assert rows[0]["loss"] == pytest.approx(base[0]["loss"], rel=1e-4)
    assert rows[-1]["loss"] < rows[0]["loss"]
    state = torch.load(tmp_path / "g" / "last.pt", weights_only=True)["model"]
    assert state["layers.2.attn.out.weight"].abs().sum() > 0 and state["layers.2.mlp.down.weight"].abs().sum() > 0
    assert state["layers.0.mlp.down.weight"].shape[1] == 160
