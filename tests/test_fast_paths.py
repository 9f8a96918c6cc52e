"""The fast paths compute what the plain ones do: fused AdamW, bf16 autocast on CPU, the background
W&B start-up, the cached list of reporting modules; and a run reports its start-up time."""
from __future__ import annotations

import json
import sys
import threading
import time
import types

import pytest
import torch

from ablate.machine import hardware
from ablate.model import Transformer
from ablate.training.loggers import WandbLogger
from ablate.training.loop import train
from components.knobs import typed
from components.registry import option
from tests.conftest import TINY, compose


def test_fused_adamw_takes_the_same_steps_as_the_per_tensor_loop():
    cfg = compose(*TINY)
    torch.manual_seed(0)
    fused_model = Transformer(cfg, 300)
    plain_model = Transformer(cfg, 300)
    plain_model.load_state_dict(fused_model.state_dict())
    fused = typed(cfg).optim.build(fused_model, torch.device("cpu"))
    assert fused.defaults["fused"]
    plain = torch.optim.AdamW([{**g, "params": list(p for p in plain_model.parameters() if (p.dim() >= 2) == (i == 0))}
                               for i, g in enumerate(fused.param_groups)], foreach=False)
    assert [g["weight_decay"] for g in plain.param_groups] == [cfg.optim.weight_decay, 0.0]
    x = torch.randint(0, 300, (4, 16))
    for _ in range(5):
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
            optimizer.step()
    for (name, a), b in zip(fused_model.state_dict().items(), plain_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name


BF16_LOSS_RTOL = 2e-3  # bf16 autocast against fp32, every logged train loss of a short run (seen: 2e-5)


def test_bf16_autocast_on_cpu_trains_with_fp32_master_weights(tmp_path, monkeypatch):
    """bf16 autocast follows fp32's loss curve within BF16_LOSS_RTOL while weights and AdamW moments stay fp32;
    `auto` on a CPU whose probe measures bf16 fast trains exactly what `bf16` trains and says why."""
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))  # a fresh probe cache, filled by the stand-in
    monkeypatch.setattr(hardware, "measure_matmuls", lambda: (115.0, 475.0))  # an AVX-512 BF16 core ...
    timed = []  # ... on which this model's step, timed on a copy of it, runs 2x as fast in bf16
    monkeypatch.setattr(hardware, "measure_steps",
                        lambda workload: (timed.append([workload.time_step(None), workload.time_step(torch.bfloat16)]),
                                          (0.2, 0.1))[1])
    curves, summaries = {}, {}
    for dtype in ("fp32", "bf16", "auto"):
        cfg = compose(*TINY, "train.max_steps=16", "train.eval_interval=8", "train.log_interval=1",
                      f"train.dtype={dtype}")
        summaries[dtype] = summary = train(cfg, tmp_path / dtype, progress=False)
        assert summary["status"] == "completed"
        rows = [json.loads(line) for line in (tmp_path / dtype / "metrics.jsonl").open()]
        curves[dtype] = [row["train_loss"] for row in rows if row["train_loss"] is not None]  # step 0: eval only
        state = torch.load(tmp_path / dtype / "checkpoints" / "latest.pt", weights_only=True)
        assert all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())
        moments = [v for s in state["optimizer"]["state"].values() for k, v in s.items() if k.startswith("exp_avg")]
        assert moments and all(t.dtype == torch.float32 for t in moments)
    assert [summaries[d]["dtype"] for d in curves] == ["fp32", "bf16", "bf16"]
    assert summaries["bf16"]["dtype_reason"] == "train.dtype=bf16 (set explicitly)"
    assert summaries["auto"]["dtype_reason"].startswith("auto: bf16 since this model's forward+backward 2x as fast")
    assert "bf16 matmul 4.1x fp32 on this CPU (probe " in summaries["auto"]["dtype_reason"]
    assert len(timed) == 1 and all(t > 0 for t in timed[0])  # the run's own step, really run, once
    assert curves["auto"] == curves["bf16"]  # the same computation, bit for bit (the probe left the run untouched)
    assert curves["bf16"] != curves["fp32"]  # autocast really ran in bf16 ...
    assert curves["bf16"] == pytest.approx(curves["fp32"], rel=BF16_LOSS_RTOL)  # ... and trains the same model
    assert summaries["bf16"]["final_val_loss"] == pytest.approx(summaries["fp32"]["final_val_loss"], rel=BF16_LOSS_RTOL)


def test_process_age_counts_from_launch():
    import subprocess

    code = "import time; time.sleep(0.5); from ablate.machine.hardware import process_age_s; print(process_age_s())"
    started = time.perf_counter()
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0.5 <= age <= time.perf_counter() - started + 0.05


class FakeWandb(types.ModuleType):
    """A stand-in `wandb` module: init takes a while (as the real one does) and may fail."""

    def __init__(self, init_s: float = 0.3, fail: bool = False):
        super().__init__("wandb")
        self.init_s, self.fail, self.logged, self.init_thread, self.finished = init_s, fail, [], None, False
        self.summary: dict = {}
        self.Settings = lambda **kw: kw

    def init(self, **kwargs):
        self.init_thread = threading.current_thread()
        time.sleep(self.init_s)
        if self.fail:
            raise RuntimeError("no network")
        fake = self

        class Run:
            summary = fake.summary

            def log(self, metrics, step):
                fake.logged.append((step, dict(metrics)))

            def finish(self):
                fake.finished = True

        return Run()


def make_logger(tmp_path):
    return WandbLogger(option("logger", "wandb"), run_dir=tmp_path, config={"a": 1}, group="g", run_name="r",
                       tags=["norm=rms"])


def test_wandb_starts_in_the_background_and_receives_every_metric_in_order(monkeypatch, tmp_path):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    logger = make_logger(tmp_path)
    started = time.perf_counter()
    for step in range(1, 6):
        logger.log({"train_loss": 1.0 / step}, step=step)
    assert time.perf_counter() - started < fake.init_s / 2  # logging never waited for W&B to start
    logger.finish({"status": "completed", "final_val_loss": 0.5, "choices": {"norm": "rms"}})
    assert fake.init_thread is not threading.main_thread()
    assert fake.logged == [(step, {"train_loss": 1.0 / step}) for step in range(1, 6)]
    assert fake.summary == {"status": "completed", "final_val_loss": 0.5} and fake.finished


def test_wandb_failing_to_start_does_not_stop_training(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb(init_s=0.0, fail=True))
    logger = make_logger(tmp_path)
    logger.log({"train_loss": 1.0}, step=1)
    logger.finish({"status": "completed"})
    assert capsys.readouterr().err.count("W&B could not start (RuntimeError: no network)") == 1


def test_a_run_through_the_wandb_logger_reports_its_steps_and_start_up_time(monkeypatch, tmp_path):
    fake = FakeWandb(init_s=0.1)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = compose(*TINY, "logger=wandb", "train.max_steps=6", "train.log_interval=2", "train.eval_interval=6")
    summary = train(cfg, tmp_path / "run", progress=False)
    assert [step for step, _ in fake.logged] == [0, 2, 4, 6]  # 0: the evaluation before training
    on_disk = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # W&B gets what is known at each step: the step-0 row's nulls (no training loss yet) are left out.
    assert [metrics for _, metrics in fake.logged] == [{k: v for k, v in row.items() if v is not None}
                                                       for row in on_disk]
    assert fake.summary["final_val_loss"] == summary["final_val_loss"] and fake.finished
    assert 0 < summary["first_step_s"] < summary["wall_time_s"] + 600  # process age at the first step, seconds


def test_auxiliary_losses_come_from_the_cached_reporting_modules():
    cfg = compose(*TINY, "moe=topk", "moe.n_experts=4")
    model = Transformer(cfg, 300)
    routers = [m for m in model.modules() if hasattr(m, "last_aux_losses")]
    assert len(routers) == cfg.model.n_layers and [m for _, m in model.reporting] == routers
    model(torch.randint(0, 300, (2, 16)))
    expected = sum(m.last_aux_losses["moe_aux_loss"] for m in routers)
    assert torch.equal(model.auxiliary_losses()["moe_aux_loss"], expected)


def test_one_pass_z_loss_equals_the_two_pass_formula():
    from ablate.training.loop import loss_terms

    logits = (4 * torch.randn(3, 7, 50)).requires_grad_()
    targets = torch.randint(0, 50, (3, 7))
    model = types.SimpleNamespace(auxiliary_losses=dict)
    terms = loss_terms(model, option("z_loss", "on", coef=1e-2).build(), logits, targets)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    z = 1e-2 * torch.logsumexp(logits, dim=-1).square().mean()
    assert torch.allclose(terms["ce"], ce, rtol=1e-6) and torch.allclose(terms["z_loss"], z, rtol=1e-5)
    fast = torch.autograd.grad(sum(terms.values()), logits)[0]
    plain = torch.autograd.grad(ce + z, logits)[0]
    assert torch.allclose(fast, plain, atol=1e-7)


def test_dropout_is_skipped_only_when_zero():
    x = torch.randint(0, 300, (2, 16))
    for p in (0.0, 0.3):
        model = Transformer(compose(*TINY, f"model.dropout={p}"), 300)
        kinds = {type(m) for m in model.modules()}
        assert (torch.nn.Dropout in kinds) == (p > 0)
        model.train()
        assert torch.equal(model(x), model(x)) == (p == 0)  # dropout draws a new mask each call
        model.eval()
        assert torch.equal(model(x), model(x))
