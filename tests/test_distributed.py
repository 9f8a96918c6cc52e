"""Data parallelism gives the run one process would give: same global batch, same losses."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ablate.train import train
from tests.conftest import ROOT, TINY, compose

COMMON = [*TINY, "train.max_steps=10", "train.eval_interval=5", "train.log_interval=1", "train.threads=1",
          "train.batch_size=8", "model.dropout=0.0"]


def train_losses(run_dir) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


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
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == 10  # written once, by rank 0
