"""Learning-rate schedules (the `schedule` axis): step -> multiplier of optim.lr, warmup first."""
from __future__ import annotations

import math
from dataclasses import dataclass

from components.knobs import knob
from components.registry import OptionConfig, axis, register

axis("schedule", "learning-rate schedule with warmup", kind="training")


@dataclass
class WarmupConfig(OptionConfig):
    warmup_steps: int = knob(50, ge=0, doc="steps of linear warmup from 0")


@dataclass
class DecayConfig(WarmupConfig):
    min_lr_ratio: float = knob(0.1, ge=0, le=1, doc="final lr = min_lr_ratio x optim.lr")


@dataclass
class WSDConfig(DecayConfig):
    decay_fraction: float = knob(0.2, gt=0, le=1, doc="share of the steps spent decaying at the end")


class Schedule:
    """Built as `Option(cfg, max_steps)`."""

    Config = WarmupConfig

    def __init__(self, cfg: WarmupConfig, max_steps: int):
        self.cfg, self.max_steps, self.warmup_steps = cfg, max_steps, min(cfg.warmup_steps, max_steps)

    decay_start: int | None = None  # the step a longer run of this schedule could branch from (wsd only)

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

    Config = DecayConfig

    def after_warmup(self, progress: float) -> float:
        low = self.cfg.min_lr_ratio
        return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))


@register("schedule", "wsd")
class WarmupStableDecay(Schedule):
    """Flat, then a linear decay to min_lr_ratio over the last decay_fraction of steps (Hu et al. 2024)."""

    Config = WSDConfig

    def __init__(self, cfg: WSDConfig, max_steps: int):
        super().__init__(cfg, max_steps)
        self.decay_steps = max(1, round(cfg.decay_fraction * max_steps))
        # Every step before this one runs at the stable rate: the state after it is the same for every
        # longer run of the schedule (same warmup), so one run answers several budgets (Hagele et al. 2024).
        self.decay_start = max_steps - self.decay_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return super().__call__(step)
        if step < self.decay_start:
            return 1.0
        progress = min(1.0, (step - self.decay_start + 1) / self.decay_steps)
        return 1.0 + (self.cfg.min_lr_ratio - 1.0) * progress
