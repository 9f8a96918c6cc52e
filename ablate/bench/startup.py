"""Start-up cost, as a user meets it (`python -m ablate.bench --startup`): how long
`python ablate/run.py --cfg job` takes, and how long a real run takes from launch to the end of its
first training step with a warm data cache (the run's own `first_step_s` in summary.json), with W&B
(the default logger, offline) and without a logger. Every figure is a fresh process."""
from __future__ import annotations

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


def _launch(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(RUN + args, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`python ablate/run.py {' '.join(args)}` exited {done.returncode}:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def bench_startup(args, notes: list[str]) -> dict[str, Any]:
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "WANDB_SILENT": "true"}
    cfg_job = [_launch(["--cfg", "job", *args.run_overrides], env) for _ in range(args.repeats)]
    result: dict[str, Any] = {"cfg_job_s": statistics.median(cfg_job), "cfg_job_all_s": cfg_job,
                              "repeats": args.repeats, "overrides": list(args.run_overrides)}
    one_step = ["train.max_steps=1", "train.eval_batches=1", "train.sample_tokens=1", f"train.threads={args.threads}",
                *args.run_overrides]
    with tempfile.TemporaryDirectory(prefix="ablate-startup-") as tmp:
        _launch([*one_step, "logger=none", f"hydra.run.dir={tmp}/warm"], env)  # builds the data cache if missing
        for logger in ("wandb", "none"):
            first, wall = [], []
            for i in range(args.repeats):
                run_dir = Path(tmp) / f"{logger}-{i}"
                wall.append(_launch([*one_step, f"logger={logger}", f"hydra.run.dir={run_dir}"], env))
                first.append(json.loads((run_dir / "summary.json").read_text())["first_step_s"])
            result[f"first_step_s_{logger}"] = statistics.median(first)
            result[f"first_step_all_s_{logger}"] = first
            result[f"one_step_run_wall_s_{logger}"] = statistics.median(wall)
    notes.append(f"startup: median of {args.repeats} fresh processes each; first step = summary.json first_step_s "
                 f"(process launch to the end of the first optimizer step, warm data cache; includes importing "
                 f"torch and torch._dynamo, which torch.optim loads, about 3 s of it on a 2-core CPU); W&B offline")
    return result
