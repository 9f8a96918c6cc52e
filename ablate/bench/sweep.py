"""Sweep throughput (`python -m ablate.bench --sweep`): one small grid run as a real multirun under each
launcher and dtype, side by side, with the wall time a user waits for and whether the results agree.

    basic   fp32   today's default before issue #17: one job after another, in fp32
    basic   auto   the same, with train.dtype=auto (bf16 autocast where the machine measures it faster)
    batched fp32   hydra/launcher=batched: each group of seeds (and tuned values) as one batched ensemble
    batched auto   both
    batched n_jobs=T              fp32   (with --threads T >= 2) the ensembles side by side, T processes of 1 thread
    batched n_jobs=T max_members=1 fp32  every job alone, T at a time in processes of 1 thread

Every variant is `python ablate/run.py -m GRID` in a fresh process (start-up, data, the sweep's report
included); the variants take turns, `--repeats` rounds with the order rotated each round, and the median
wall time counts. Agreement: every logged loss of each job against the same job of the basic launcher in
the same dtype (the batched ensemble must reproduce it: max relative difference), each job's final
validation loss against basic fp32 (bf16 moves it a little), and the report's verdicts
(comparisons.csv) against basic fp32's.
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ablate.bench.configs import ROOT

RUN = [sys.executable, str(ROOT / "ablate" / "run.py")]
VARIANTS = [("basic", "fp32"), ("basic", "auto"), ("batched", "fp32"), ("batched", "auto")]
DEFAULT_GRID = ["norm=rms,ln", "train.seed=0,1,2"]


def variants(threads: int) -> list[tuple[str, str]]:
    """The launchers and dtypes compared; with 2 or more threads also the batched launcher's processes: its
    ensembles side by side, and every job alone (max_members=1), `threads` processes of 1 thread each."""
    parallel = [f"batched n_jobs={threads}", f"batched n_jobs={threads} max_members=1"]
    return VARIANTS + ([(launcher, "fp32") for launcher in parallel] if threads > 1 else [])


def launcher_overrides(launcher: str, threads: int) -> list[str]:
    """A variant's command-line settings: `NAME [KEY=VALUE ...]` is hydra/launcher=NAME with hydra.launcher.KEY
    set, and the threads of each job (processes share the threads that one job of the others has)."""
    name, *settings = launcher.split()
    processes = max([int(value) for key, value in (s.split("=") for s in settings) if key == "n_jobs"] or [1])
    return [f"hydra/launcher={name}", *(f"hydra.launcher.{s}" for s in settings),
            f"train.threads={max(1, threads // processes)}"]


def run_sweep(overrides: list[str], sweep_dir: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([*RUN, "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`python ablate/run.py -m {' '.join(overrides)}` exited {done.returncode}:\n"
                           f"{done.stderr[-2000:]}")
    return time.perf_counter() - start


def jobs_of(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Job number -> its summary and logged losses."""
    jobs = {}
    for summary_path in sorted(sweep_dir.glob("*/summary.json")):
        rows = [json.loads(line) for line in (summary_path.parent / "metrics.jsonl").read_text().splitlines()]
        losses = [(r["step"], name, r[name]) for r in rows for name in ("train_loss", "val_loss")
                  if r.get(name) is not None]
        jobs[summary_path.parent.name] = {"summary": json.loads(summary_path.read_text()), "losses": losses}
    return jobs


def verdicts_of(sweep_dir: Path) -> dict[tuple[str, str], str]:
    path = sweep_dir / "report" / "comparisons.csv"
    return {(row["axis"], row["option"]): row["verdict"] for row in csv.DictReader(open(path))} if path.exists() else {}


def max_relative_difference(a: list[tuple], b: list[tuple]) -> float:
    """The largest relative difference between two jobs' logged losses (inf if they logged different rows)."""
    if [(step, name) for step, name, _ in a] != [(step, name) for step, name, _ in b]:
        return float("inf")
    return max((abs(x - y) / max(abs(x), 1e-12) for (_, _, x), (_, _, y) in zip(a, b)), default=0.0)


def bench_sweep(args, notes: list[str]) -> dict[str, Any]:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    grid = args.sweep_grid or DEFAULT_GRID
    common = [*grid, f"train.max_steps={args.sweep_steps}",
              f"train.eval_interval={max(1, args.sweep_steps // 2)}", "logger=none", *args.run_overrides]
    compared = variants(args.threads)
    with_workers = len(compared) > len(VARIANTS)  # the batched launcher's worker rows are compared too
    walls: dict[tuple[str, str], list[float]] = {v: [] for v in compared}

    def sweep_dir(tmp: str, variant: tuple[str, str], round_: int) -> Path:
        return Path(tmp) / f"{compared.index(variant)}-{round_}"

    with tempfile.TemporaryDirectory(prefix="ablate-sweep-bench-") as tmp:
        # data and tokenizer caches, and the bf16 probe's cached answer (at each thread count), before timing
        for threads in sorted({1, args.threads} if with_workers else {args.threads}):
            run_sweep([*grid[:1], *common[len(grid):], "train.max_steps=1", "train.dtype=auto",
                       f"train.threads={threads}"], Path(tmp) / f"warm-{threads}", env)
        for round_ in range(args.repeats):
            order = compared[round_ % len(compared):] + compared[:round_ % len(compared)]
            for launcher, dtype in order:
                walls[(launcher, dtype)].append(run_sweep(
                    [*common, *launcher_overrides(launcher, args.threads), f"train.dtype={dtype}"],
                    sweep_dir(tmp, (launcher, dtype), round_), env))
        results = {v: jobs_of(sweep_dir(tmp, v, 0)) for v in compared}
        verdicts = {v: verdicts_of(sweep_dir(tmp, v, 0)) for v in compared}
    reference = walls[("basic", "fp32")]
    rows = []
    for launcher, dtype in compared:
        jobs, same_dtype = results[(launcher, dtype)], results[("basic", dtype)]
        fp32 = results[("basic", "fp32")]
        rows.append({
            "launcher": launcher, "dtype": dtype,
            "computed_in": ",".join(sorted({j["summary"]["dtype"] for j in jobs.values()})),
            "jobs": len(jobs), "completed": sum(j["summary"]["status"] == "completed" for j in jobs.values()),
            "wall_s": statistics.median(walls[(launcher, dtype)]), "wall_all_s": walls[(launcher, dtype)],
            "speedup": statistics.median(reference) / statistics.median(walls[(launcher, dtype)]),
            "loss_rel_diff_same_dtype": max((max_relative_difference(same_dtype[k]["losses"], jobs[k]["losses"])
                                             for k in same_dtype), default=None),
            "final_loss_diff_vs_fp32": max((abs(jobs[k]["summary"]["final_val_loss"]
                                                - fp32[k]["summary"]["final_val_loss"]) for k in fp32), default=None),
            "verdicts_match": verdicts[(launcher, dtype)] == verdicts[("basic", "fp32")],
            "verdicts": sorted(f"{axis}={option}: {v}" for (axis, option), v in verdicts[(launcher, dtype)].items()),
        })
    notes.append(f"sweep: `python ablate/run.py -m {' '.join(common)} train.threads={args.threads}` with "
                 f"hydra/launcher=basic|batched and train.dtype=fp32|auto"
                 + (f", and the batched launcher in {args.threads} processes of 1 thread (hydra.launcher.n_jobs="
                    f"{args.threads} train.threads=1; max_members=1: each job alone)"
                    if with_workers else "")
                 + f", each a fresh process (start-up, data and report included), median of "
                 f"{args.repeats} rounds taken in turns; speed-up = basic fp32's wall time / the variant's; loss rel "
                 f"diff = the largest relative difference of any logged loss from the same job under the basic "
                 f"launcher in the same dtype")
    return {"grid": common, "repeats": args.repeats, "rows": rows}
