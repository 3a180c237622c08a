import os

import pytest
import torch
from torch import nn

from glm4voice.train.engine import (
    TrainConfig,
    Trainer,
    WeightAverage,
    add_train_args,
    config_from_args,
    cpu_lacks_native_bf16,
    lr_at,
    read_metrics,
)


def _task():
    w_true = torch.randn(8, 1, generator=torch.Generator().manual_seed(1))

    def batch_fn(step, rank, world):
        g = torch.Generator().manual_seed(1000 * step + rank)
        x = torch.randn(16, 8, generator=g)
        return x, x @ w_true + 0.01 * torch.randn(16, 1, generator=g)

    def loss_fn(model, batch):
        x, y = batch
        loss = ((model(x) - y) ** 2).mean()
        return loss, {"mse": loss.item()}

    return batch_fn, loss_fn


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def _fit(out, steps, until=None, **kw):
    batch_fn, loss_fn = _task()
    cfg = TrainConfig(out_dir=str(out), steps=steps, lr=1e-2, warmup=5, log_every=5, save_every=5, eval_every=0, **kw)
    t = Trainer(cfg, _model(), batch_fn=batch_fn, loss_fn=loss_fn)
    t.fit(until)
    return t


def test_loss_decreases_and_logs(tmp_path):
    t = _fit(tmp_path, 60)
    rows = [r for r in read_metrics(str(tmp_path)) if r["kind"] == "train"]
    assert rows[-1]["loss"] < 0.3 * rows[0]["loss"]
    assert rows[-1]["step"] == 60 and "grad_norm" in rows[-1]
    state = torch.load(os.path.join(tmp_path, "last.pt"), weights_only=True)
    assert state["step"] == 60 and set(state["model"]) == set(t.model.state_dict())


def test_resume_is_exact(tmp_path):
    full = _fit(tmp_path / "a", 20)
    _fit(tmp_path / "b", 20, until=7)  # "killed" after 7 steps (a checkpoint at 7)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 7
    cfg_rows_before = len(read_metrics(str(tmp_path / "b")))
    resumed = _fit(tmp_path / "b", 20)
    assert len(read_metrics(str(tmp_path / "b"))) > cfg_rows_before
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def _fit_averaged(out, steps, until=None, decay=0.9):
    batch_fn, loss_fn = _task()
    cfg = TrainConfig(out_dir=str(out), steps=steps, lr=1e-2, warmup=5, log_every=5, save_every=5, eval_every=0)
    avg = WeightAverage(decay)
    seen = []  # the weights after every step, to average by hand
    model = _model()

    def after(m, step):
        avg.update(m, step)
        seen.append([p.detach().clone() for p in m.parameters()])

    t = Trainer(cfg, model, batch_fn=batch_fn, loss_fn=loss_fn, extra_state={"ema": avg}, after_step=after)
    t.fit(until)
    return t, avg, seen


def test_weight_average_is_the_warmed_up_ema_and_resumes_exactly(tmp_path):
    t, avg, seen = _fit_averaged(tmp_path / "a", 12)
    expect = [w.clone() for w in seen[0]]
    for n, ws in enumerate(seen[1:]):
        d = min(0.9, (1 + n + 1) / (10 + n + 1))
        expect = [d * e + (1 - d) * w for e, w in zip(expect, ws, strict=True)]
    names = [n for n, _ in t.model.named_parameters()]
    for name, e in zip(names, expect, strict=True):
        torch.testing.assert_close(avg.shadow[name], e)
    own = [p.detach().clone() for p in t.model.parameters()]
    with avg.swapped_in(t.model):
        for p, name in zip(t.model.parameters(), names, strict=True):
            assert torch.equal(p, avg.shadow[name])
        assert not all(torch.equal(p, o) for p, o in zip(t.model.parameters(), own, strict=True))
    for p, o in zip(t.model.parameters(), own, strict=True):  # its own weights are back
        assert torch.equal(p, o)
    # killed after step 7 and resumed: the same average as the uninterrupted run
    _fit_averaged(tmp_path / "b", 12, until=7)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["extra"]["ema"]["updates"] == 7
    _, resumed, _ = _fit_averaged(tmp_path / "b", 12)
    assert resumed.updates == 12
    for name in names:
        assert torch.equal(resumed.shadow[name], avg.shadow[name]), name
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(1.0)
    with pytest.raises(KeyError, match="different model"), avg.swapped_in(nn.Linear(2, 2)):
        pass


def test_bf16_autocast_runs(tmp_path):
    t = _fit(tmp_path, 10, precision="bf16")
    assert all(p.dtype == torch.float32 for p in t.model.parameters())


def test_cpu_bf16_support_is_read_from_the_cpu_flags(tmp_path):
    def info(flags):
        p = tmp_path / "cpuinfo"
        p.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        return str(p)

    assert cpu_lacks_native_bf16(info("fpu sse avx2 fma"))            # AVX2 only (the session-13 AMD EPYC)
    assert not cpu_lacks_native_bf16(info("avx2 avx512f avx512_bf16"))  # Cooper Lake / Zen 4
    assert not cpu_lacks_native_bf16(info("avx2 amx_bf16 amx_tile"))    # Sapphire Rapids
    assert not cpu_lacks_native_bf16(str(tmp_path / "missing"))          # unreadable: claim nothing
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert not cpu_lacks_native_bf16(str(tmp_path / "noflags"))


def test_schedule_and_args():
    cfg = TrainConfig(out_dir="x", steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 100) == pytest.approx(0.1) and lr_at(cfg, 55) < lr_at(cfg, 20)
    import argparse

    p = argparse.ArgumentParser()
    add_train_args(p, lr=3e-4)
    c = config_from_args(p.parse_args(["--out", "r", "--steps", "7", "--precision", "bf16"]))
    assert (c.out_dir, c.steps, c.lr, c.precision, c.betas) == ("r", 7, 3e-4, "bf16", (0.9, 0.98))
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(out_dir="x", precision="fp8")


def test_corrupt_checkpoint_is_reported(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    batch_fn, loss_fn = _task()
    t = Trainer(TrainConfig(out_dir=str(tmp_path), steps=1), _model(), batch_fn=batch_fn, loss_fn=loss_fn)
    with pytest.raises(RuntimeError, match="last.pt"):
        t.fit()


def test_nan_loss_stops(tmp_path):
    def loss_fn(model, batch):
        return model(batch[0]).sum() * float("nan"), {}

    t = Trainer(TrainConfig(out_dir=str(tmp_path), steps=3), _model(), batch_fn=_task()[0], loss_fn=loss_fn)
    with pytest.raises(FloatingPointError, match="step 0"):
        t.fit()


def test_plot_groups_keep_rates_apart_from_counts():
    from glm4voice.train.engine import plot_groups

    train = [{"kind": "train", "step": 10, "loss": 2.0, "asr_loss": 1.5, "codes_used": 300.0, "lr": 1e-3}]
    evals = [{"kind": "eval", "step": 10, "wer_en": 0.9, "cer_zh": 1.2, "codes_used": 700, "code_perplexity": 500.0,
              "eval_text_loss": 2.5, "quantized": 1},
             {"kind": "eval", "step": 20, "wer_en": 0.8, "cer_zh": 0.7, "codes_used": 710, "code_perplexity": 510.0,
              "eval_text_loss": 2.1, "quantized": 1}]
    groups = plot_groups(train, evals)
    assert groups["losses"] == [("train", "loss"), ("train", "asr_loss"), ("eval", "eval_text_loss")]
    assert groups["rates"] == [("eval", "cer_zh"), ("eval", "wer_en")]
    assert set(groups["other"]) == {("train", "codes_used"), ("eval", "codes_used"), ("eval", "code_perplexity")}
    assert "rates" not in plot_groups(train, [])  # empty panels are left out
