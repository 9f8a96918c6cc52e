"""Seeds and tuned rates trained together as one batched ensemble (ablate.ensemble, hydra/launcher=batched):
every member computes what the same job run alone computes, and leaves the same files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ablate.ensemble.train_group import GroupJob, train_group
from ablate.training.loop import train
from hydra_plugins.ablate_batched_launcher.batched_launcher import group_jobs, task_tree, why_not_batched
from tests.conftest import ROOT, TINY, compose
from tests.test_cli import FAST, ablate

SEEDS = (0, 1, 2)
RATES = ("3e-3", "3.0")  # 3.0 diverges (objective > 3 x initial) between steps 39 and 47 for these seeds, in fp32


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}


def relative_error(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


@pytest.fixture(scope="module")
def alone_and_together(tmp_path_factory):
    """The 6 jobs (3 seeds x 2 rates, 50 steps, fp32) each run alone, and the same 6 as one ensemble."""
    base = tmp_path_factory.mktemp("batched")
    cfgs = {(rate, seed): compose(*TINY, "train.max_steps=50", "train.eval_interval=25", "train.log_interval=1",
                                  f"optim.lr={rate}", f"train.seed={seed}")
            for rate in RATES for seed in SEEDS}
    alone = {key: train(cfg, base / f"alone-{key[0]}-{key[1]}", progress=False) for key, cfg in cfgs.items()}
    jobs = [GroupJob(cfg, base / f"together-{key[0]}-{key[1]}") for key, cfg in cfgs.items()]
    together = dict(zip(cfgs, train_group(jobs, progress=False)))
    return base, alone, together


def test_every_logged_loss_of_a_member_equals_the_job_run_alone(alone_and_together):
    base, alone, together = alone_and_together
    statuses = {key: summary["status"] for key, summary in alone.items()}
    assert set(statuses.values()) == {"completed", "diverged"}  # the rates chosen cover both outcomes
    for key, summary in alone.items():
        assert together[key]["status"] == summary["status"] and together[key]["steps"] == summary["steps"], key
        solo, member = rows(base / f"alone-{key[0]}-{key[1]}"), rows(base / f"together-{key[0]}-{key[1]}")
        assert [r["step"] for r in member] == [r["step"] for r in solo]  # same rows, up to the divergence
        for a, b in zip(solo, member):
            for name in ("train_loss", "val_loss", "grad_norm", "lr"):
                assert (a.get(name) is None) == (b.get(name) is None), (key, a["step"], name)
                if a.get(name) is not None:
                    assert relative_error(a[name], b[name]) < 1e-4, (key, a["step"], name, a[name], b[name])
        for name in ("final_val_loss", "best_val_loss"):
            if summary[name] is not None:
                assert relative_error(summary[name], together[key][name]) < 1e-4, (key, name)
        assert together[key]["ensemble_members"] == len(alone)


def test_a_diverged_member_is_frozen_while_the_others_go_on(alone_and_together):
    base, alone, together = alone_and_together
    diverged = [key for key, s in together.items() if s["status"] == "diverged"]
    assert diverged and all(together[key]["steps"] < 50 for key in diverged)
    assert all(together[(RATES[0], seed)]["steps"] == 50 for seed in SEEDS)  # the others trained to the end
    for key in diverged:  # its last checkpoint is one of its own, finite, from before the divergence
        state = torch.load(base / f"together-{key[0]}-{key[1]}" / "checkpoints" / "latest.pt", weights_only=True)
        assert state["step"] < together[key]["steps"] and state["seed"] == key[1]
        assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_a_member_leaves_exactly_the_files_of_a_run_alone(alone_and_together):
    base, alone, together = alone_and_together
    for key in alone:
        solo, member = base / f"alone-{key[0]}-{key[1]}", base / f"together-{key[0]}-{key[1]}"
        assert files(member) == files(solo), key
        assert (member / "tokenizer.json").read_bytes() == (solo / "tokenizer.json").read_bytes()
        assert set(together[key]) == set(alone[key]) and alone[key]["ensemble_members"] == 1
        a = torch.load(solo / "checkpoints" / "latest.pt", weights_only=True)
        b = torch.load(member / "checkpoints" / "latest.pt", weights_only=True)
        assert a.keys() == b.keys() and a["step"] == b["step"] and a["rng"] == b["rng"]
        assert torch.equal(a["torch_rng"], b["torch_rng"])  # the member's own generator state, not the process's
        for name, tensor in a["model"].items():
            torch.testing.assert_close(b["model"][name], tensor, rtol=1e-4, atol=1e-6)


def trees(*jobs: list[str]) -> list[dict]:
    return [task_tree(compose(*TINY, *job)) for job in jobs]


def test_jobs_are_grouped_by_everything_but_the_seed_and_the_tuned_keys():
    tuned = "compare.tuned=[optim.lr]"
    grid = [[f"norm={norm}", f"optim.lr={lr}", f"train.seed={seed}", tuned]
            for norm in ("rms", "ln") for lr in ("1e-3", "2e-3") for seed in (0, 1)]
    assert group_jobs(trees(*grid)) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # per norm: its rates and seeds
    untuned = [[o for o in job if o != tuned] for job in grid]  # a rate that is compared, not tuned: apart
    assert group_jobs(trees(*untuned)) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert group_jobs(trees(["train.seed=0"], ["train.seed=1", "model.d_model=32"], ["train.seed=2"])) == [[0, 2], [1]]
    assert group_jobs(trees(["train.seed=0"], ["train.seed=0", "train.max_steps=7"])) == [[0], [1]]


def test_what_cannot_be_batched_says_why_in_one_line():
    assert why_not_batched(trees(["train.seed=0"], ["train.seed=1"])) is None
    reason = why_not_batched(trees(["train.seed=0", "model.dropout=0.1"], ["train.seed=1", "model.dropout=0.1"]))
    assert "model.dropout=0.1" in reason and "\n" not in reason
    assert "train.compile" in why_not_batched(trees(["train.compile=true"], ["train.compile=true", "train.seed=1"]))
    tuned_width = ["compare.tuned=[model.d_model]"]  # a tuned key the members cannot differ in
    reason = why_not_batched(trees([*tuned_width, "model.d_model=32"], [*tuned_width, "model.d_model=64"]))
    assert "model.d_model" in reason


SWEEP = ["-m", "train.seed=0,1", *FAST, "train.dtype=fp32", "train.max_steps=6", "train.eval_interval=3",
         "train.log_interval=1", "hydra.sweep.dir=sweep"]


def sweep_losses(sweep: Path, job: str) -> list[tuple]:
    return [(r["step"], r["train_loss"], r.get("val_loss")) for r in rows(sweep / job)]


@pytest.mark.parametrize("processes", [1, 2])
def test_the_launcher_trains_a_group_together_with_the_files_and_losses_of_the_basic_launcher(tmp_path, processes):
    """In the launcher's process, and (n_jobs=2) the two ensembles side by side in processes of their own."""
    (tmp_path / "basic").mkdir(), (tmp_path / "batched").mkdir()
    basic = ablate(*SWEEP, "hydra/launcher=basic", "norm=rms,ln", cwd=tmp_path / "basic")
    assert basic.returncode == 0, basic.stderr[-3000:]
    batched = ablate(*SWEEP, "hydra/launcher=batched", f"hydra.launcher.n_jobs={processes}", "norm=rms,ln",
                     cwd=tmp_path / "batched")
    assert batched.returncode == 0, batched.stderr[-3000:]
    assert batched.stdout.count("together as one batched ensemble") == 2  # one ensemble per norm, 2 seeds each
    assert f"as 2 batched ensemble(s) and 0 job(s) alone, {processes} process(es) at a time" in batched.stdout
    for job in ("0", "1", "2", "3"):
        a, b = tmp_path / "basic" / "sweep" / job, tmp_path / "batched" / "sweep" / job
        assert files(b) == files(a) and ".hydra/overrides.yaml" in files(b), job
        assert (b / ".hydra" / "overrides.yaml").read_text() == (a / ".hydra" / "overrides.yaml").read_text()
        for (step, loss, val), (step_b, loss_b, val_b) in zip(sweep_losses(a.parent, job), sweep_losses(b.parent, job),
                                                              strict=True):
            assert step == step_b and (loss is None or relative_error(loss, loss_b) < 1e-4)
            assert (val is None) == (val_b is None) and (val is None or relative_error(val, val_b) < 1e-4)
    report = (tmp_path / "batched" / "sweep" / "report" / "results.csv").read_text()
    assert report.count("completed") == 4


def test_an_option_that_cannot_be_batched_falls_back_to_separate_runs_with_its_line(tmp_path):
    result = ablate(*SWEEP, "hydra/launcher=batched", "model.dropout=0.1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if "not as a batched ensemble" in line]
    assert len(lines) == 1 and "#0, #1" in lines[0] and "model.dropout=0.1" in lines[0]
    assert "together as one batched ensemble" not in result.stdout
    for job in ("0", "1"):
        summary = json.loads((tmp_path / "sweep" / job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["ensemble_members"] == 1


def test_the_tuning_sweeper_gets_each_members_own_loss(tmp_path):
    """hydra/sweeper=ablate_tuned chooses by the jobs' return values: each member must return its own."""
    result = ablate(*SWEEP, "hydra/launcher=batched", "hydra/sweeper=ablate_tuned", "compare.tuned=[optim.lr]",
                    "+hydra.sweeper.tune={optim.lr: '1e-3,3e-3,1e-2'}", "hydra.sweeper.tune_seeds=[7]",
                    "hydra.sweeper.extend=0", cwd=tmp_path)  # (no grid extension: one tuning stage)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("together as one batched ensemble") == 2  # the 3 rates, then the 2 verdict seeds
    tuning = json.loads((tmp_path / "sweep" / "tuning.json").read_text())
    for job, row in enumerate(tuning["scores"]):
        run_dir = tmp_path / "sweep" / str(job)
        summary = json.loads((run_dir / "summary.json").read_text())
        lr = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["optim"]["lr"]
        assert row[-1] == summary["final_val_loss"] and any(o.startswith("optim.lr=") and float(o[9:]) == lr
                                                            for o in row[:-1]), (job, row)
    best = min(range(3), key=lambda j: tuning["scores"][j][-1])
    assert tuning["choices"][0]["chosen"] == [o for o in tuning["scores"][best] if str(o).startswith("optim.lr=")]


ENV = {**os.environ, "WANDB_MODE": "disabled"}


def stopped_once_logged(command: list[str], sweep: Path, watched: tuple[str, ...]) -> tuple[int, str, str]:
    """Start the sweep, send its launcher SIGTERM (as `kill PID` does) once each watched job has logged 25
    rows, and wait for it to end: (exit code, stdout, stderr)."""
    process = subprocess.Popen([*command, f"hydra.sweep.dir={sweep}"], cwd=sweep.parent, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not all((sweep / job / "metrics.jsonl").exists()
                                             and len((sweep / job / "metrics.jsonl").read_text().splitlines()) >= 25
                                             for job in watched):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def assert_checkpointed(sweep: Path, jobs: tuple[str, ...], max_steps: int) -> None:
    for job in jobs:
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
        state = torch.load(sweep / job / "checkpoints" / "latest.pt", weights_only=True)
        assert state["step"] == summary["steps"] and 24 <= state["step"] < max_steps


def resumed_bit_for_bit(command: list[str], sweep: Path, jobs: tuple[str, ...]) -> subprocess.CompletedProcess:
    """The same command again finishes every job, each with the losses of a sweep never stopped; returns the
    resuming run."""
    resumed = subprocess.run([*command, f"hydra.sweep.dir={sweep}"], cwd=sweep.parent, env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = sweep.parent / "straight"
    subprocess.run([*command, f"hydra.sweep.dir={straight}"], cwd=sweep.parent, env=ENV, check=True,
                   capture_output=True, timeout=300)
    for job in jobs:
        assert json.loads((sweep / job / "summary.json").read_text())["status"] == "completed"
        assert sweep_losses(sweep, job) == sweep_losses(straight, job)  # bit for bit across the interruption
    return resumed


def test_sigterm_checkpoints_every_member_and_the_same_command_resumes_the_group(tmp_path):
    command = [sys.executable, str(ROOT / "ablate" / "run.py"), "-m", "hydra/launcher=batched", "train.seed=0,1",
               *TINY, "train.max_steps=60", "train.eval_interval=20", "train.log_interval=1", "train.threads=1"]
    sweep = tmp_path / "stopped"
    code, _, err = stopped_once_logged(command, sweep, watched=("1",))
    assert code == 130, err[-2000:]
    assert_checkpointed(sweep, ("0", "1"), max_steps=60)
    resumed = resumed_bit_for_bit(command, sweep, ("0", "1"))
    assert resumed.stdout.count("resumed from") == 2 and "together as one batched ensemble" in resumed.stdout


def test_a_stop_request_to_the_launcher_reaches_every_process_and_the_rest_never_start(tmp_path):
    """n_jobs=2 over 4 one-member ensembles: SIGTERM to the launcher alone (as `kill PID` sends it) checkpoints
    both running units, the other two never start, exit 130; the same command finishes all four, each
    bit for bit as a sweep never stopped."""
    command = [sys.executable, str(ROOT / "ablate" / "run.py"), "-m", "hydra/launcher=batched",
               "hydra.launcher.n_jobs=2", "hydra.launcher.max_members=1", "norm=rms,ln", "train.seed=0,1", *TINY,
               "train.max_steps=200", "train.eval_interval=50", "train.log_interval=1", "train.threads=1"]
    sweep = tmp_path / "stopped"
    code, out, err = stopped_once_logged(command, sweep, watched=("0", "1"))
    assert code == 130, err[-2000:]
    assert "2 process(es) at a time" in out
    assert_checkpointed(sweep, ("0", "1"), max_steps=200)
    assert not (sweep / "2").exists() and not (sweep / "3").exists()
    resumed = resumed_bit_for_bit(command, sweep, ("0", "1", "2", "3"))
    assert resumed.stdout.count("resumed from") == 2


def test_processes_never_outnumber_units_or_cores_and_the_largest_units_go_first():
    from hydra_plugins.ablate_batched_launcher.processes import Unit, schedule, worker_count

    assert worker_count(2, units=5, cores=2) == 2 and worker_count(4, units=3, cores=8) == 3
    assert worker_count(1, units=5, cores=8) == 1 and worker_count(-1, units=10, cores=4) == 4
    assert worker_count(None, units=10, cores=6) == 6 and worker_count(0, units=3, cores=2) == 1
    units = [Unit([0], False), Unit([1, 2, 3], True), Unit([4, 5], True), Unit([6], False)]
    assert [u.positions for u in schedule(units)] == [[1, 2, 3], [4, 5], [0], [6]]


def test_automatic_processes_divide_the_cores_by_each_jobs_threads(monkeypatch):
    from omegaconf import OmegaConf

    from hydra_plugins.ablate_batched_launcher.batched_launcher import automatic_processes

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    def train(**settings):
        return OmegaConf.create({"train": {"device": "cpu", "threads": None, **settings}})

    assert automatic_processes(train()) == 8 and automatic_processes(train(threads=2)) == 4
    assert automatic_processes(train(threads=16)) == 1
    assert automatic_processes(train(device="cuda:7")) == 1  # a GPU (or one this machine lacks): one process


@pytest.mark.parametrize("options", [
    ["norm=ln", "pos=learned", "ffn=gelu", "qk_norm=on", "qk_norm.scope=full", "softcap=on", "z_loss=on"],
    ["optim=muon", "attn=local_global", "attn.window=16", "norm_pos=double", "block=parallel", "ffn=geglu"],
], ids=["norms-positions-objective", "muon-local-global"])
def test_members_of_other_options_equal_their_runs_alone(tmp_path, options):
    """Every stacked form and every per-member object (Muon, z-loss, per-layer kernels) against plain runs."""
    cfgs = [compose(*TINY, *options, "train.max_steps=20", "train.eval_interval=10", "train.log_interval=1",
                    f"train.seed={seed}", f"optim.lr={lr}") for seed, lr in ((0, "3e-3"), (1, "1e-2"))]
    assert why_not_batched([task_tree(cfg) for cfg in cfgs]) is None
    for i, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"alone-{i}", progress=False)
    train_group([GroupJob(cfg, tmp_path / f"together-{i}") for i, cfg in enumerate(cfgs)], progress=False)
    for i in range(len(cfgs)):
        solo, member = rows(tmp_path / f"alone-{i}"), rows(tmp_path / f"together-{i}")
        assert [r["step"] for r in member] == [r["step"] for r in solo] and len(solo) == 21
        for a, b in zip(solo, member):
            for name in ("train_loss", "val_loss", "z_loss"):
                if a.get(name) is not None:
                    assert relative_error(a[name], b[name]) < 1e-4, (i, a["step"], name)


def test_a_mixture_of_experts_is_not_batchable():
    reason = why_not_batched(trees(["moe=topk", "train.seed=0"], ["moe=topk", "train.seed=1"]))
    assert reason and "load-balancing" in reason and "\n" not in reason
