"""One benchmarked model (`Candidate`): its model, optimizer and training step, and what the bench
measured of it. Built by ablate.bench.core, measured by ablate.bench.memory as well."""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ablate.bench.machine import synchronize

DTYPES = {"fp32": None, "bf16": torch.bfloat16}
GRAD_CLIP = 1.0


@dataclass
class Candidate:
    """A model, its optimizer and what the bench measured of it."""

    name: str
    kind: str  # ours | peer | option
    shape: str
    dtype: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    flops_per_token: int
    params: int
    objective: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    device: torch.device
    tokens_per_step: int
    extra: dict[str, Any] = field(default_factory=dict)
    step_s: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    final_loss: float | None = None

    def autocast(self):
        amp = DTYPES[self.dtype]
        return torch.autocast(self.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One training step; returns its wall time in seconds (device synchronized)."""
        synchronize(self.device)
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.objective(self.model, self.model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
        self.optimizer.step()
        synchronize(self.device)
        elapsed = time.perf_counter() - start
        self.losses.append(loss.item())
        return elapsed

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Cross-entropy on a held-out batch, computed in fp32 whatever the training dtype."""
        from ablate.training.loop import lm_loss

        self.model.eval()
        loss = lm_loss(self.model(x), y).item()
        self.model.train()
        return loss

    @property
    def median_step_s(self) -> float | None:
        return statistics.median(self.step_s) if self.step_s else None

    @property
    def tokens_per_s(self) -> float | None:
        median = self.median_step_s
        return self.tokens_per_step / median if median else None
