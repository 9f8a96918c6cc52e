"""Hydra launchers and sweepers run real jobs: one result per job, and a report at the end."""
from __future__ import annotations

import csv
import json

import pytest

from tests.test_cli import FAST, ablate


def results(sweep) -> list[dict]:
    return list(csv.DictReader(open(sweep / "report" / "results.csv")))


@pytest.mark.parametrize("launcher", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                                      ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]],
                         ids=["joblib", "submitit_local"])
def test_parallel_launchers_produce_one_result_per_job(tmp_path, launcher):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher" if "joblib" in launcher[0]
                        else "hydra_plugins.hydra_submitit_launcher")
    result = ablate("-m", *launcher, "norm=rms,ln", *FAST, "train.max_steps=3", "train.eval_interval=3",
                    "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = results(tmp_path / "sweep")
    assert sorted(row["norm"] for row in rows) == ["ln", "rms"]
    assert all(row["status"] == "completed" for row in rows)
    for job in ("0", "1"):
        summary = json.loads((tmp_path / "sweep" / job / "summary.json").read_text())
        assert summary["steps"] == 3 and summary["final_val_loss"] > 0


def test_optuna_searches_the_learning_rate_in_memory(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = ablate("-m", "+sweep=lr_search", "hydra.sweeper.n_trials=3", *FAST, "train.max_steps=3",
                    "train.eval_interval=3", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = results(tmp_path / "sweep")
    assert len(rows) == 3 and len({row["optim.lr"] for row in rows}) == 3
    best = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    best_loss = min(float(row["final_val_loss"]) for row in rows)
    assert f"best_value: {best_loss}"[:18] in best


def test_threads_per_job_divide_the_cores(monkeypatch):
    from omegaconf import OmegaConf

    from ablate.cli.job import threads_per_job

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert threads_per_job(OmegaConf.create({"n_jobs": 2})) == 4
    assert threads_per_job(OmegaConf.create({"n_jobs": -1})) == 1
    assert threads_per_job(OmegaConf.create({"n_jobs": 16})) == 1
    assert threads_per_job(OmegaConf.create({"cpus_per_task": 3})) == 3
    assert threads_per_job(OmegaConf.create({"_target_": "basic"})) is None
