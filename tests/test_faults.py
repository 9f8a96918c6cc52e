"""Faults that must not lose results: preemption and resume, divergence, reusing a run directory."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ablate.config.validate import ConfigError
from ablate.training.loop import train
from tests.conftest import ROOT, TINY, compose

STEPS = ["train.max_steps=60", "train.eval_interval=20", "train.log_interval=1"]


def losses(run_dir) -> list[tuple[int, float, float | None]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"], r.get("val_loss")) for r in rows]


def test_sigterm_checkpoints_and_the_same_command_resumes_bit_identically(tmp_path):
    overrides = [*TINY, *STEPS, "train.threads=1"]
    command = [sys.executable, str(ROOT / "ablate" / "run.py"), *overrides]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, f"hydra.run.dir={killed}"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 25):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode == 130  # stopped on request, and says so to a scheduler
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
    stopped_at = summary["steps"]
    assert 25 <= stopped_at < 60

    resumed = subprocess.run([*command, f"hydra.run.dir={killed}"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and json.loads((killed / "summary.json").read_text())["status"] == "completed"

    straight = tmp_path / "straight"
    subprocess.run([*command, f"hydra.run.dir={straight}"], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=300)
    assert losses(killed) == losses(straight)  # every step's loss, bit for bit, across the interruption


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    import torch

    cfg = compose(*TINY, "train.max_steps=40", "train.eval_interval=5", "optim.lr=30.0", "schedule.warmup_steps=0",
                  "optim.grad_clip=0")
    summary = train(cfg, tmp_path, progress=False)
    assert summary["status"] == "diverged" and summary["error"]
    assert summary["steps"] < 40
    checkpoint = tmp_path / "checkpoints" / "latest.pt"
    if checkpoint.exists():  # saved at an earlier evaluation, before the loss blew up
        state = torch.load(checkpoint, weights_only=True)
        assert state["step"] < summary["steps"]
        assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_resuming_with_another_architecture_is_refused(tmp_path):
    train(compose(*TINY, "train.max_steps=2", "train.eval_interval=2"), tmp_path, progress=False)
    before = (tmp_path / "summary.json").read_text()
    with pytest.raises(ConfigError, match=r"different configuration.*norm.name: checkpoint 'rms', now 'ln'"):
        train(compose(*TINY, "train.max_steps=4", "norm=ln"), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="train.resume=never"):
        train(compose(*TINY, "train.max_steps=4", "train.resume=never"), tmp_path, progress=False)
    assert (tmp_path / "summary.json").read_text() == before  # nothing touched
    longer = train(compose(*TINY, "train.max_steps=4", "train.eval_interval=2"), tmp_path, progress=False)
    assert longer["steps"] == 4  # same architecture: training longer resumes


def test_a_stop_request_ends_the_whole_sweep_and_the_same_command_finishes_it(tmp_path):
    """SIGTERM (SLURM's preemption, a first Ctrl-C) stops the sweep, not just its current job; re-running
    the command resumes the stopped job and trains the rest."""
    command = [sys.executable, str(ROOT / "ablate" / "run.py"), "-m", "norm=rms,ln", *TINY, *STEPS,
               "train.threads=1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    metrics = tmp_path / "sweep" / "0" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 10):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())["status"] == "interrupted"
    assert not (tmp_path / "sweep" / "1").exists()  # the next job never started
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    for job in ("0", "1"):
        assert json.loads((tmp_path / "sweep" / job / "summary.json").read_text())["status"] == "completed"
