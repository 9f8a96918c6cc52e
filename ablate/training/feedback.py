"""What a run tells the person who started it: time to the first step, the progress bar, samples.txt.

`ablate/run.py` marks the start of every Hydra job (`mark_job_start`); `ablate.training.loop` reads it once
(`take_job_start`) and reports `first_step_s` from it, so each job of a multirun gets its own figure
instead of the age of the process that happens to run it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

_marked_start: float | None = None  # time.monotonic() at the start of the job about to train
_jobs_marked = 0


def mark_job_start() -> None:
    """Called at the start of each Hydra job. The first job of a process starts at the process's launch
    (interpreter start-up, imports and config composition are part of what `python ablate/run.py`
    makes its user wait for); each later job of a multirun in the same process starts when Hydra hands
    it its config, so the figure does not grow with the jobs that ran before it."""
    global _marked_start, _jobs_marked
    now = time.monotonic()
    if _jobs_marked == 0:
        from ablate.machine.hardware import process_age_s  # reads /proc: no torch work

        now -= process_age_s()
    _marked_start, _jobs_marked = now, _jobs_marked + 1


def take_job_start() -> float:
    """The monotonic start of the job about to train, read once; a `train()` called directly (no Hydra
    job marked) starts when it is called."""
    global _marked_start
    started, _marked_start = _marked_start, None
    return time.monotonic() if started is None else started


def progress_postfix(loss: float, val_loss: float | None, lr: float, tokens_per_s: float) -> dict[str, str]:
    """The figures after the progress bar: the last train loss, the last validation loss (once there is
    one: the number that decides a comparison), the learning rate and the throughput."""
    postfix = {"loss": f"{loss:.3f}"}
    if val_loss is not None:
        postfix["val"] = f"{val_loss:.3f}"
    postfix.update(lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:.0f}")
    return postfix


SAMPLE_SETTINGS = ("prompt", "temperature", "top_p", "max_new_tokens", "seed", "step")


def write_samples(run_dir: Path, train_cfg: Any, sample: str, step: int) -> None:
    """samples.txt: the settings that produced the sample (enough to draw it again from the checkpoint
    with `model.generate`), a blank line, then the text (the prompt included). The prompt is written
    as a JSON string so whitespace prompts such as the default "\\n" stay visible."""
    settings = {"prompt": json.dumps(train_cfg.sample_prompt), "temperature": train_cfg.sample_temperature,
                "top_p": train_cfg.sample_top_p, "max_new_tokens": train_cfg.sample_tokens,
                "seed": train_cfg.seed, "step": step}
    header = "".join(f"{key}: {settings[key]}\n" for key in SAMPLE_SETTINGS)
    (run_dir / "samples.txt").write_text(f"{header}\n{sample}\n", encoding="utf-8")


def read_samples(path: Path) -> tuple[dict[str, Any], str]:
    """samples.txt back as (settings, sample text): the inverse of `write_samples`."""
    header, _, text = path.read_text(encoding="utf-8").partition("\n\n")
    settings: dict[str, Any] = {}
    for line in header.splitlines():
        key, _, value = line.partition(": ")
        settings[key] = json.loads(value)
    return settings, text[:-1] if text.endswith("\n") else text
