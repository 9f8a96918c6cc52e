"""A whole `python ablate/run.py -m ...` sweep run by a benchmark, its output in a log beside its folder."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_multirun(arguments: list[str], folder: Path) -> float:
    """`python ablate/run.py -m ARGUMENTS hydra.sweep.dir=FOLDER` (W&B off), its output in FOLDER.log;
    its wall seconds. SystemExit naming the log when it fails."""
    command = [sys.executable, str(ROOT / "ablate" / "run.py"), "-m", *arguments, f"hydra.sweep.dir={folder}"]
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder.parent / f"{folder.name}.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:  # a file, not a pipe: the sweep's worker processes write to it
        done = subprocess.run(command, cwd=ROOT, env={**os.environ, "WANDB_MODE": "disabled"}, stdout=log,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: see {log_path}")
    return time.perf_counter() - started
