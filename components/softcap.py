"""Logit soft-capping (the `softcap` axis): cap * tanh(x / cap) keeps logits within (-cap, cap)
smoothly (Gemma 2, Team et al. 2024). The built option caps the output logits when called and
tells the attention kernels the cap of their scores (`attn`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from components.knobs import knob
from components.registry import OptionConfig, axis, register

axis("softcap", "tanh soft-capping of attention scores and output logits")


@register("softcap", "off")
class NoSoftcap(nn.Module):
    attn: float | None = None
    logits: float | None = None

    def __init__(self, cfg: OptionConfig):
        super().__init__()

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits


@dataclass
class SoftcapConfig(OptionConfig):
    attn: Optional[float] = knob(50.0, gt=0, doc="cap on attention scores; null = no cap")
    logits: Optional[float] = knob(30.0, gt=0, doc="cap on output logits; null = no cap")


@register("softcap", "on")
class TanhSoftcap(NoSoftcap):
    """Gemma 2's caps: 50 on attention scores, 30 on the output logits."""

    Config = SoftcapConfig

    def __init__(self, cfg: SoftcapConfig):
        super().__init__(cfg)
        self.attn, self.logits = cfg.attn, cfg.logits

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.logits is None:
            return logits
        return self.logits * torch.tanh(logits / self.logits)
