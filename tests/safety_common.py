"""Shared by the tests/test_safety_*.py files: the command line, tiny runs, and byte-exact snapshots."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import POEMS, ROOT

RUN = [sys.executable, str(ROOT / "ablate" / "run.py")]
FAST = ["model=micro", "data=text", f"data.path={POEMS}", "tokenizer.vocab_size=300", "logger=none",
        "train.batch_size=4", "train.eval_batches=1", "train.sample_tokens=5", "train.threads=1"]
SHORT = ["train.max_steps=4", "train.eval_interval=2", "train.log_interval=1"]


def cli(*args: str, cwd, env: dict | None = None, module: str | None = None, timeout: int = 300):
    """`python ablate/run.py ARGS` (or `python -m MODULE ARGS`) as a user runs it."""
    command = [sys.executable, "-m", module] if module else RUN
    full_env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "PYTHONPATH": str(ROOT),
                **(env or {})}
    return subprocess.run([*command, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file below `root` (hidden ones too), by relative path."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[tuple]:
    """What a run computed, step by step (timings left out: they differ between runs)."""
    return [(r["step"], r["train_loss"], r["grad_norm"], r.get("val_loss")) for r in rows(run_dir)]


def assert_refused(result, *words: str, code: int = 2) -> str:
    """A refusal as the contract says: the exit code, one short paragraph naming `words`, no traceback."""
    message = result.stderr + result.stdout
    assert result.returncode == code, message[-3000:]
    assert "Traceback" not in message, message[-3000:]
    for word in words:
        assert word in message, f"{word!r} missing from:\n{message[-3000:]}"
    return message
