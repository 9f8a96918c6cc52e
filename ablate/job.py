"""One Hydra job: validate, train, report; the glue between `ablate/run.py` and `ablate.train`.

A bad config is refused here with one paragraph and exit code 2, before any data is prepared.
In a multirun, a job that fails is recorded (summary.json says `failed` and why) and the sweep
goes on; the report at the end lists it.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

EXIT_BAD_CONFIG = 2


def refuse(message: str, run_dir: Path) -> None:
    """Print the reason and exit 2; remove the run directory Hydra just made if it is still empty."""
    print(f"\nablate: refused before training: {message}\nNothing was trained.", file=sys.stderr)
    leftovers = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    if not leftovers:  # Hydra created it for this job and nothing was written: leave no trace
        shutil.rmtree(run_dir, ignore_errors=True)
    sys.exit(EXIT_BAD_CONFIG)


def run_job(cfg: DictConfig) -> float:
    """Train one job; returns its final validation loss (inf when it has none) for sweepers that optimize."""
    from ablate import validate
    from ablate.checkpoint import check_run_dir
    from ablate.data import DataError

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        validate.check(cfg)
        check_run_dir(run_dir, cfg)
    except validate.ConfigError as error:
        if not multirun:
            refuse(str(error), run_dir)
        record_failure(run_dir, cfg, f"ConfigError: {error}")
        return math.inf

    from ablate.train import train

    save_hydra_files(run_dir, cfg, hydra_cfg)
    if cfg.train.threads is None:
        cfg.train.threads = threads_per_job(hydra_cfg.launcher)
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items()
               if v is not None and not k.startswith("hydra") and k != "schema"}
    overrides = list(hydra_cfg.overrides.task)
    group = str(Path(hydra_cfg.sweep.dir)) if multirun else None
    try:
        summary = train(cfg, run_dir, choices=choices, overrides=overrides, group=group)
    except (validate.ConfigError, DataError) as error:
        if not multirun:
            refuse(str(error), run_dir)
        record_failure(run_dir, cfg, f"{type(error).__name__}: {error}")
        return math.inf
    except Exception as error:
        if not multirun:
            raise
        traceback.print_exc()
        if not (run_dir / "summary.json").exists():  # failed before training wrote its own summary
            record_failure(run_dir, cfg, f"{type(error).__name__}: {error}")
        print(f"ablate: job {hydra_cfg.job.num} failed; the sweep continues (see {run_dir}/summary.json)",
              file=sys.stderr)
        return math.inf
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process reports
        print_result(summary, run_dir)
    loss = summary["final_val_loss"]
    return math.inf if loss is None or summary["status"] != "completed" else loss


def save_hydra_files(run_dir: Path, cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """.hydra/{config,overrides,hydra}.yaml, as Hydra would write them, but only once the config is
    accepted (conf/config.yaml sets hydra.output_subdir=null), so a refused run touches nothing."""
    from omegaconf import OmegaConf

    folder = run_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), folder / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), folder / "hydra.yaml")


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
    from ablate.train import write_summary

    print(f"ablate: job refused: {error}", file=sys.stderr)
    write_summary(run_dir, {"status": "failed", "error": error, "seed": cfg.train.seed})


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
