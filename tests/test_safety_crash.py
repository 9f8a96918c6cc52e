"""Class 2 of issue #11, crashes: a real SIGKILL between the metrics row and the checkpoint, a partial
last line, a full disk. A killed run resumed with the same command must log exactly the rows (step,
losses, gradient norms) of a run that was never interrupted."""
from __future__ import annotations

import json
import math
import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from ablate.rundir.checkpoint import CHECKPOINT
from tests.safety_common import FAST, assert_refused, cli, losses, rows

STEPS = ["train.max_steps=6", "train.eval_interval=2", "train.log_interval=1"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("straight")
    result = cli(*FAST, *STEPS, f"hydra.run.dir={root / 'run'}", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "run"


def killed_at(tmp_path, point: str):
    run = tmp_path / "run"
    result = cli(*FAST, *STEPS, f"hydra.run.dir={run}", cwd=tmp_path, env={"ABLATE_KILL_AT": point})
    assert result.returncode == -9, result.stderr[-2000:]  # SIGKILL: no handler, no summary, no cleanup
    assert not (run / "summary.json").exists()
    return run


@pytest.mark.parametrize("point,checkpoint_step", [("after-metrics-row:4", 2), ("after-checkpoint:4", 4)])
def test_a_kill_between_metrics_row_and_checkpoint_loses_no_row(straight, tmp_path, point, checkpoint_step):
    run = killed_at(tmp_path, point)
    assert [r["step"] for r in rows(run)] == [0, 1, 2, 3, 4]  # the row of step 4 was written before the kill
    assert torch.load(run / CHECKPOINT, weights_only=True)["step"] == checkpoint_step
    resumed = cli(*FAST, *STEPS, f"hydra.run.dir={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {run / CHECKPOINT} at step {checkpoint_step}" in resumed.stdout
    assert losses(run) == losses(straight)  # every row, bit for bit, none lost or doubled


def test_a_partial_last_metrics_line_is_repaired_on_resume_and_said(straight, tmp_path):
    run = killed_at(tmp_path, "after-checkpoint:4")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "tokens": 2560, "train_lo')  # what a kill or a full disk mid-write leaves
    resumed = cli(*FAST, *STEPS, f"hydra.run.dir={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "dropped an incomplete last line" in resumed.stderr and "Traceback" not in resumed.stderr
    assert losses(run) == losses(straight)


# -- a full disk ----------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path, straight):
    """A tmpfs with room for one checkpoint but not for the second (written beside the first before the
    rename): the run fills it at its second evaluation."""
    mount = tmp_path / "disk"
    mount.mkdir()
    checkpoint = (straight / CHECKPOINT).stat().st_size
    size = (int(checkpoint * 1.5) // 4096 + 16) * 4096  # + 64 KiB for metrics, tokenizer.json, .hydra, summary
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", f"ablate-{uuid.uuid4().hex[:8]}",
                           str(mount)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({done.stderr.strip() or done.returncode}): "
                    f"the disk-full case needs root or CAP_SYS_ADMIN")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_ends_the_run_clearly_keeping_the_last_good_checkpoint(small_disk, tmp_path):
    run = small_disk / "run"
    result = cli(*FAST, *STEPS, f"hydra.run.dir={run}", cwd=tmp_path)
    message = assert_refused(result, "is full", str(CHECKPOINT.name), "re-run the same command", code=1)
    assert "No space left" not in message.split("ablate: stopped:")[0][-200:]  # the clear message, not an errno dump
    state = torch.load(run / CHECKPOINT, weights_only=True)  # intact: the failed write never replaced it
    assert state["step"] == 2 and all(torch.isfinite(t).all() for t in state["model"].values())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "full" in summary["error"]
    leftovers = [p.name for p in Path(run).rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".latest")]
    assert leftovers == []
    assert all(math.isfinite(r["train_loss"]) for r in rows(run) if r["step"] > 0)  # every row there is whole
