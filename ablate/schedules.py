"""Learning-rate schedules (the `schedule` axis): step -> multiplier of optim.lr, warmup first."""
from __future__ import annotations

import math

from components.registry import register


class Schedule:
    def __init__(self, max_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0,
                 decay_fraction: float = 0.0):
        self.max_steps, self.warmup_steps = max_steps, min(warmup_steps, max_steps)
        self.min_lr_ratio, self.decay_fraction = min_lr_ratio, decay_fraction

    def __call__(self, step: int) -> float:
        """Multiplier for the update taken at `step` (0-based): linear warmup, then `after_warmup`."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        return self.after_warmup(min(1.0, (step - self.warmup_steps) / span))

    def after_warmup(self, progress: float) -> float:
        raise NotImplementedError


@register("schedule", "constant")
class Constant(Schedule):
    def after_warmup(self, progress: float) -> float:
        return 1.0


@register("schedule", "cosine")
class Cosine(Schedule):
    """Half a cosine from 1 down to min_lr_ratio (Loshchilov & Hutter 2017)."""

    def after_warmup(self, progress: float) -> float:
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@register("schedule", "wsd")
class WarmupStableDecay(Schedule):
    """Flat, then a linear decay to min_lr_ratio over the last decay_fraction of steps (Hu et al. 2024)."""

    def __call__(self, step: int) -> float:
        decay_steps = max(1, round(self.decay_fraction * self.max_steps))
        decay_start = self.max_steps - decay_steps
        if step < self.warmup_steps:
            return super().__call__(step)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start + 1) / decay_steps)
        return 1.0 + (self.min_lr_ratio - 1.0) * progress
