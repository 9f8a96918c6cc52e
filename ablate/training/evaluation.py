"""When a run evaluates and on which windows: at step 0 (the untrained model, so every curve starts from
the same point and a short sweep still has a curve) and every `train.eval_interval` steps, about a tenth of
the run when it is not set, on `train.eval_batches` fixed random windows; and once more at the end, for
`final_val_loss`, on up to `train.final_eval_tokens` tokens of the held-out split in non-overlapping
windows (the whole split when it is smaller). The verdict compares final losses, and a few random windows
add their own sampling noise to every run's loss (measured: docs/benchmarks.md, "Noise per run"); the
curve keeps its cheap windows. Called from ablate/training/loop.py and ablate/training/state.py."""
from __future__ import annotations

from typing import Any

import numpy as np

EVALUATIONS_PER_RUN = 10  # with train.eval_interval=null: ten points per curve, whatever the length


def eval_interval(train_cfg: Any) -> int:
    """train.eval_interval, or max_steps / 10 (at least 1) when it is null."""
    if train_cfg.eval_interval is not None:
        return int(train_cfg.eval_interval)
    return max(1, round(train_cfg.max_steps / EVALUATIONS_PER_RUN))


def step_zero_record(run: Any, bits_per_byte: Any, val_loss: float | None = None) -> dict[str, Any]:
    """The metrics.jsonl row of the evaluation before the first step: no training loss, gradient
    norm or throughput yet (null), the learning rate the first step will use. `val_loss`: the run's
    evaluation when the caller already has it (a batched ensemble evaluates its members at once)."""
    val_loss = run.evaluate() if val_loss is None else val_loss
    return {"step": 0, "tokens": 0, "train_loss": None, "lr": run.cfg.optim.lr * run.schedule(0),
            "grad_norm": None, "tokens_per_s": None, "elapsed_s": 0.0, "val_loss": val_loss,
            "val_bpb": bits_per_byte(val_loss)}


def final_eval_starts(val_tokens: int, context: int, max_tokens: int | None, batch_size: int) -> list[np.ndarray] | None:
    """The starts of the final evaluation's windows in batches of `batch_size`: every non-overlapping
    window of the split (each scores `context` targets), or, past `max_tokens`, that many windows spread
    evenly over it; None for train.final_eval_tokens=null (the final loss uses the eval_batches windows)."""
    if max_tokens is None:
        return None
    every = np.arange(0, val_tokens - context, context)  # a window's last target is at start + context
    count = max(1, min(len(every), max_tokens // context))
    chosen = every[np.linspace(0, len(every) - 1, count).round().astype(np.int64)] if count < len(every) else every
    return np.array_split(chosen, max(1, -(-len(chosen) // batch_size)))
