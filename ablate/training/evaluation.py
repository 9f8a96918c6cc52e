"""When a run evaluates: at step 0 (the untrained model, so every curve starts from the same point
and a short sweep still has a curve) and every `train.eval_interval` steps, about a tenth of the
run when it is not set. Called from ablate/training/loop.py."""
from __future__ import annotations

from typing import Any

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
