"""The command line as a user meets it: refusals before training, and a multirun that writes its report."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from tests.conftest import POEMS, ROOT

RUN = [sys.executable, str(ROOT / "ablate" / "run.py")]
FAST = ["model=micro", "data=text", f"data.path={POEMS}", "tokenizer.vocab_size=300", "logger=none",
        "train.batch_size=4", "train.eval_batches=1", "train.sample_tokens=5"]


def ablate(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([*RUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


BAD_INPUTS = [
    # (overrides, what the message must name)
    (["norm=batchnorm"], ["norm", "batchnorm", "rms", "ln", "none"]),
    (["model.n_heads=3"], ["model.n_heads=3", "model.d_model=128", "[1, 2, 4, 8, 16, 32, 64, 128]"]),
    (["model.n_kv_heads=3"], ["model.n_kv_heads=3", "model.n_heads=4", "[1, 2, 4]"]),
    (["model.d_model=120", "model.n_heads=8"], ["pos=rope", "model.d_model=120", "model.n_heads=8", "15"]),
    (["data=text"], ["data.path"]),
    (["data=text", "data.path=/nonexistent/corpus.txt"], ["data.path", "/nonexistent/corpus.txt"]),
    (["tokenizer.vocab_size=100"], ["tokenizer.vocab_size=100", "257"]),
    (["model.n_heads=four"], ["model.n_heads", "four"]),
    (["train.typo_key=1"], ["typo_key"]),
]


@pytest.mark.parametrize("overrides,named", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_refused_with_one_clear_message(tmp_path, overrides, named):
    existing = tmp_path / "outputs" / "earlier-run"
    existing.mkdir(parents=True)
    (existing / "summary.json").write_text('{"status": "completed"}')
    result = ablate(*overrides, "hydra.run.dir=outputs/new-run", cwd=tmp_path)
    assert result.returncode != 0
    message = result.stderr + result.stdout
    for word in named:
        assert word in message, f"{word!r} missing from:\n{message}"
    assert "Traceback" not in message
    assert len(message.strip().splitlines()) <= 10, message  # one paragraph, not a wall
    assert not (tmp_path / "outputs" / "new-run").exists()  # nothing left behind
    assert (existing / "summary.json").read_text() == '{"status": "completed"}'  # nothing touched


def test_multirun_trains_every_combination_and_writes_the_report(tmp_path):
    result = ablate("-m", "norm=rms,ln", *FAST, "train.max_steps=4", "train.eval_interval=2",
                    "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = tmp_path / "sweep" / "report"
    for name in ("results.csv", "report.md", "loss_curves.png", "final_loss.png"):
        assert (report / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(report / "results.csv")))
    assert sorted(row["norm"] for row in rows) == ["ln", "rms"]
    assert all(row["status"] == "completed" for row in rows)
    assert "norm" in (report / "report.md").read_text()


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("needs a machine where train.device=mps fails")
    result = ablate("-m", "train.device=mps,cpu", *FAST, "train.max_steps=2", "train.eval_interval=2",
                    "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["train.device"]: row for row in csv.DictReader(open(tmp_path / "sweep" / "report" / "results.csv"))}
    assert rows["cpu"]["status"] == "completed"
    assert rows["mps"]["status"] == "failed" and rows["mps"]["error"]
    report = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert "failed" in report and "mps" in report


def test_a_refused_rerun_leaves_every_file_of_the_existing_run_untouched(tmp_path):
    import hashlib

    run = tmp_path / "run"
    first = ablate(*FAST, "train.max_steps=2", "train.eval_interval=2", f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]

    def snapshot():
        return {p.relative_to(run): hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*") if p.is_file()}

    before = snapshot()
    assert ".hydra/config.yaml" in {str(p) for p in before}
    for bad in (["norm=ln"], ["train.resume=never"], ["model.n_heads=3"]):
        again = ablate(*FAST, "train.max_steps=4", *bad, f"hydra.run.dir={run}", cwd=tmp_path)
        assert again.returncode == 2, again.stderr[-2000:]
        assert "Traceback" not in again.stderr
    assert snapshot() == before
