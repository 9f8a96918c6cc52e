"""One Hydra job: validate, train, report; the glue between `ablate/run.py` and `ablate.training.loop`.

A bad config is refused here with one paragraph and exit code 2, before any data is prepared.
In a multirun, a job that fails is recorded (summary.json says `failed` and why) and the sweep
goes on; the report at the end lists it. A job refused on a directory that holds another run's
results (a finished run of another configuration) is recorded in SWEEP_DIR/refused_jobs.jsonl
instead, never in that run's files; a job landing on a finished run of its own configuration is
skipped, so re-running a sweep command finishes what is missing. The run directory is locked
(ablate.rundir.lock) from the first check to the end of training.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ablate.config import rungs, validate
from ablate.ensemble.train_group import GroupJob
from ablate.errors import ConfigError, DataError
from ablate.rundir.files import atomic_write_bytes, is_disk_full, write_summary_file
from ablate.rundir.lock import RunDirBusy, hold
from ablate.rundir.plan import FINISHED, RunDirPlan, holds_results, plan_run_dir, read_summary
from ablate.training import feedback
from ablate.training.loop import train

EXIT_BAD_CONFIG = 2
EXIT_DISK_FULL = 1
EXIT_INTERRUPTED = 130  # a stop request (SIGTERM, SIGUSR1, Ctrl-C): the process and its sweep end here
REFUSALS = "refused_jobs.jsonl"  # in the sweep directory: jobs a sweep refused, never in another run's files


@dataclass
class Deferral:
    """Jobs accepted for training (validated, run directory planned, locked, .hydra/ written) that a batched
    launcher trains afterwards, together (hydra_plugins/ablate_batched_launcher), which it hands to each job
    (`run_job(cfg, deferral)`). `locks` holds their run directories' locks from the job's first check until
    the launcher has trained them."""

    locks: ExitStack
    jobs: list[GroupJob] = field(default_factory=list)  # each with its Job (job.job), so with its number

    def accept(self, cfg: DictConfig, job: Job, plan: RunDirPlan, choices: dict[str, str], group: str | None) -> None:
        """Take the job, ready to train; its lock stays held until the launcher is done."""
        self.locks.enter_context(hold(job.run_dir))  # (re-entrant) kept until the launcher has trained it
        self.jobs.append(GroupJob(cfg, job.run_dir, plan, choices, job.overrides, group, feedback.take_job_start(),
                                  job=job))

    def holds(self, job_num: int) -> bool:
        """Whether the job numbered `job_num` (hydra.job.num) was handed over for training."""
        return any(taken.job.hydra_cfg.job.num == job_num for taken in self.jobs)


def refuse(message: str, run_dir: Path, ours: bool = False) -> None:
    """Print the reason and exit 2, leaving no run directory behind: remove it if it is empty, or if `ours`
    (this job found it empty and holds its lock, so whatever is in it now, .hydra/ or .lock, it wrote)."""
    print(f"\nablate: refused before training: {message}\nNothing was trained.", file=sys.stderr)
    leftovers = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    if ours or not leftovers:
        shutil.rmtree(run_dir, ignore_errors=True)
    sys.exit(EXIT_BAD_CONFIG)


class Job:
    """One Hydra job: where it writes, and how it reports a refusal without touching another run's files."""

    def __init__(self, hydra_cfg: DictConfig):
        self.hydra_cfg = hydra_cfg
        self.run_dir = Path(hydra_cfg.runtime.output_dir)
        self.multirun = hydra_cfg.mode == RunMode.MULTIRUN
        self.overrides = list(hydra_cfg.overrides.task)
        self.fresh = not self.run_dir.is_dir() or not any(self.run_dir.iterdir())

    def refused(self, cfg: DictConfig, error: Exception) -> float:
        """A single run exits 2; a sweep records the refusal and goes on."""
        try:
            with hold(self.run_dir):  # (re-entrant) nobody else may be writing there while this job cleans up
                if not self.multirun:
                    refuse(str(error), self.run_dir, ours=self.fresh)
                reason = f"{type(error).__name__}: {error}"
                print(f"ablate: job {self.hydra_cfg.job.num} refused: {reason}", file=sys.stderr)
                self.log_refusal(reason)
                if self.fresh or not holds_results(self.run_dir):  # its own directory: the report lists it
                    if self.fresh:  # with its config, so the report can place it in the grid
                        save_hydra_files(self.run_dir, cfg, self.hydra_cfg)
                    record_failure(self.run_dir, cfg, reason)
        except RunDirBusy:  # another process trains there: say why this job stopped, touch nothing
            if not self.multirun:
                refuse(str(error), self.run_dir)
            self.log_refusal(f"{type(error).__name__}: {error}")
        return math.inf

    def log_refusal(self, reason: str) -> None:
        """One JSON line in SWEEP_DIR/refused_jobs.jsonl (appended with a single write)."""
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "job": self.hydra_cfg.job.num,
                           "run_dir": str(self.run_dir), "overrides": self.overrides, "reason": reason}) + "\n"
        sweep_dir = Path(self.hydra_cfg.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with open(sweep_dir / REFUSALS, "a", encoding="utf-8") as handle:
            handle.write(line)


def run_job(cfg: DictConfig, deferral: Deferral | None = None) -> float:
    """Train one job; returns its final validation loss (inf when it has none) for sweepers that optimize.
    With a `deferral` (a batched launcher's), a job accepted for training is handed to it instead of trained,
    and returns inf: its loss is the launcher's to report once the group has trained."""
    job = Job(HydraConfig.get())
    try:
        rungs.apply(cfg, job.overrides)  # +ladder=NAME: the rung sets the model's size and budget, once, here
        validate.check(cfg)
    except ConfigError as error:
        return job.refused(cfg, error)
    try:
        with hold(job.run_dir):  # one process per run directory, from here to the end of training
            return run_locked(cfg, job, deferral)
    except RunDirBusy as error:  # another process trains there: stop this one (and its sweep) at once
        print(f"\nablate: refused before training: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_CONFIG)


def run_locked(cfg: DictConfig, job: Job, deferral: Deferral | None = None) -> float:
    hydra_cfg, run_dir, multirun = job.hydra_cfg, job.run_dir, job.multirun
    try:
        plan = plan_run_dir(run_dir, cfg, multirun=multirun)
    except ConfigError as error:
        return job.refused(cfg, error)
    if plan.action == "skip":
        loss = plan.summary.get("final_val_loss")
        print(f"ablate: {run_dir} already holds this run ({plan.summary.get('status')}, final val loss {loss}); "
              f"skipped")
        return math.inf if loss is None or plan.summary.get("status") != "completed" else loss
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items()
               if v is not None and not k.startswith("hydra") and k != "schema"}
    group = str(Path(hydra_cfg.sweep.dir)) if multirun else None
    try:
        if plan.action in ("fresh", "branch"):  # .hydra/ describes the run that made the directory: written once
            save_hydra_files(run_dir, cfg, hydra_cfg)
        if cfg.train.threads is None:
            cfg.train.threads = threads_per_job(hydra_cfg.launcher)
        if deferral is not None:  # trained by the batched launcher, with the other jobs of its group
            deferral.accept(cfg, job, plan, choices, group)
            return math.inf
        outcome = train(cfg, run_dir, choices=choices, overrides=job.overrides, group=group, plan=plan)
    except Exception as error:  # noqa: BLE001  (conclude() sorts refusals, a full disk and failures)
        outcome = error
    return conclude(cfg, job, outcome)


def conclude(cfg: DictConfig, job: Job, outcome: dict | Exception, stop_if_interrupted: bool = True) -> float:
    """The job's return value from how its training ended: its summary, or the error that stopped it
    (a refusal, a full disk that ends the sweep, or a failure the sweep records and goes past). An
    interrupted run ends the sweep (`stop_sweep`) unless the caller does that itself, after its other jobs
    (`stop_if_interrupted=False`: a batched ensemble's members all report first)."""
    hydra_cfg, run_dir, multirun = job.hydra_cfg, job.run_dir, job.multirun
    if isinstance(outcome, (ConfigError, DataError)):
        return job.refused(cfg, outcome)
    if isinstance(outcome, Exception):
        error = outcome
        if is_disk_full(error):  # every later job would fail the same way: end the sweep too
            checkpoint = run_dir / "checkpoints" / "latest.pt"
            kept = (f"The last complete checkpoint, {checkpoint}, is intact: training resumes from it."
                    if checkpoint.exists() else "No checkpoint had been written yet: the run will start from step 0.")
            print(f"\nablate: stopped: {error}. {kept}", file=sys.stderr)
            sys.exit(EXIT_DISK_FULL)
        if not multirun:
            raise error
        traceback.print_exception(error)
        if not (run_dir / "summary.json").exists():  # failed before training wrote its own summary
            record_failure(run_dir, cfg, f"{type(error).__name__}: {error}")
        print(f"ablate: job {hydra_cfg.job.num} failed; the sweep continues (see {run_dir}/summary.json)",
              file=sys.stderr)
        return math.inf
    summary = outcome
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process reports
        print_result(summary, run_dir)
    if summary["status"] == "interrupted" and stop_if_interrupted:  # a stop request ends the sweep too
        stop_sweep(summary["error"])
    loss = summary["final_val_loss"]
    return math.inf if loss is None or summary["status"] != "completed" else loss


def stop_sweep(reason: str) -> None:
    """End the process (and so its sweep) after a stop request, with exit code 130."""
    print(f"ablate: stopped ({reason}). Re-run the same command to resume: finished runs are "
          f"skipped, stopped ones continue from their checkpoints.", file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


def save_hydra_files(run_dir: Path, cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """.hydra/{config,overrides,hydra}.yaml, as Hydra would write them, but only once the config is
    accepted (conf/config.yaml sets hydra.output_subdir=null), so a refused run touches nothing."""
    folder = run_dir / ".hydra"
    for name, node in (("config", cfg), ("overrides", OmegaConf.create(list(hydra_cfg.overrides.task))),
                       ("hydra", OmegaConf.create({"hydra": hydra_cfg}))):
        atomic_write_bytes(folder / f"{name}.yaml", OmegaConf.to_yaml(node).encode("utf-8"))


def threads_per_job(launcher: DictConfig) -> int | None:
    """Torch CPU threads for one job of a parallel launcher: the cores divided among the jobs.

    joblib runs n_jobs jobs at once on this machine; submitit gives each job cpus_per_task cores.
    On a busy 2-core machine two 1-thread jobs outrun one 2-thread job, so never oversubscribe.
    """
    cores = os.cpu_count() or 1
    if launcher.get("n_jobs") is not None:
        parallel = cores if launcher.n_jobs < 0 else min(cores, launcher.n_jobs)
        return max(1, cores // max(1, parallel))
    if launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    return None


def record_failure(run_dir: Path, cfg: DictConfig, error: str) -> None:
    """summary.json saying `failed` and why, for a job that failed before training wrote its own; never over
    the summary of a run that finished."""
    if (read_summary(run_dir) or {}).get("status") in FINISHED:
        print(f"ablate: {run_dir} holds a finished run; the failure is not recorded there: {error}", file=sys.stderr)
        return
    write_summary_file(run_dir / "summary.json", {"status": "failed", "error": error, "seed": cfg.train.seed})


def print_result(summary: dict, run_dir: Path) -> None:
    def fmt(value) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    print(f"\n== {summary['status']}: {summary['steps']} steps, {summary['tokens_seen']:,} tokens, "
          f"{summary['wall_time_s']:.0f} s ({summary['tokens_per_s'] or 0:,.0f} tokens/s)")
    print(f"   params {summary['params_total']:,} total, {summary['params_non_embedding']:,} non-embedding; "
          f"{summary['flops_per_token']:,} FLOPs/token")
    print(f"   final val loss {fmt(summary['final_val_loss'])} nats/token ({fmt(summary['val_bpb'])} bits/byte); "
          f"unigram baseline {fmt(summary['unigram_val_loss'])}")
    if summary.get("sample"):
        print("   sample:\n" + "\n".join("   | " + line for line in summary["sample"].splitlines()[:12]))
    print(f"   run directory: {run_dir}")
