"""Data parallelism gives the run one process would give: same global batch, same losses."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ablate.training.loop import train
from tests.conftest import ROOT, TINY, compose

COMMON = [*TINY, "train.max_steps=10", "train.eval_interval=5", "train.log_interval=1", "train.threads=1",
          "train.batch_size=8", "model.dropout=0.0"]


def train_losses(run_dir) -> list[float]:
    """Every logged training loss (step 0's row is an evaluation only: no training loss yet; pytest >= 9.2's
    approx refuses a None where it once compared None == None)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["train_loss"] for row in rows if row["train_loss"] is not None]


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    train(compose(*COMMON), tmp_path / "one", progress=False)
    train(compose(*COMMON, "train.grad_accum=2"), tmp_path / "accum", progress=False)
    assert train_losses(tmp_path / "accum") == pytest.approx(train_losses(tmp_path / "one"), rel=1e-5)


def test_two_gloo_processes_equal_one_process(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "ablate" / "run.py")
    single = subprocess.run([sys.executable, script, *COMMON, f"hydra.run.dir={tmp_path / 'single'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          script, *COMMON, f"hydra.run.dir={tmp_path / 'ddp'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert train_losses(tmp_path / "ddp") == pytest.approx(train_losses(tmp_path / "single"), rel=1e-5)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["status"] == "completed"
    assert summary["tokens_seen"] == 10 * 8 * 64  # train.batch_size is the global batch
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == 11  # steps 0-10, written once, by rank 0


def test_slurm_tasks_become_torch_distributed_variables(monkeypatch):
    from ablate.machine.distributed import slurm_environment

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert slurm_environment() == {}  # a single task trains alone
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu-node-17")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    env = slurm_environment()
    assert env["RANK"] == "5" and env["WORLD_SIZE"] == "8" and env["LOCAL_RANK"] == "1"
    assert env["MASTER_ADDR"] == "gpu-node-17" and env["MASTER_PORT"] == str(20000 + 123456 % 20000)
    monkeypatch.setenv("RANK", "0")  # torchrun inside the allocation wins
    assert slurm_environment() == {}


def test_slurm_launcher_config_composes_with_documented_keys():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose as hydra_compose

    from tests.conftest import hydra_compose_once

    hydra_compose_once()
    cfg = hydra_compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                             "hydra.launcher.gpus_per_node=8"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 8, 240)
    assert {"nodes", "tasks_per_node", "cpus_per_task", "mem_gb", "max_num_timeout"} <= set(launcher)
