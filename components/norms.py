"""Normalization layers (the `norm` axis). Built with the width they normalize and the model's `bias`."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from components.knobs import knob
from components.registry import OptionConfig, axis, register

axis("norm", "normalization layer: RMSNorm, LayerNorm or none")


@dataclass
class NormConfig(OptionConfig):
    eps: float = knob(1e-5, gt=0, doc="added to the variance before the square root")


@register("norm", "rms")
class RMSNorm(nn.Module):
    """x / rms(x) * g (Zhang & Sennrich 2019): no mean, no bias; cheaper than LayerNorm."""

    Config = NormConfig

    def __init__(self, cfg: NormConfig, dim: int, bias: bool = False):
        super().__init__()
        self.eps = cfg.eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


@register("norm", "ln")
class LayerNorm(nn.LayerNorm):
    """(x - mean) / std * g + b (Ba et al. 2016); the bias only when the model uses biases."""

    Config = NormConfig

    def __init__(self, cfg: NormConfig, dim: int, bias: bool = False):
        super().__init__(dim, eps=cfg.eps, bias=bias)


@register("norm", "none")
class NoNorm(nn.Identity):
    """No normalization: the ablation baseline that shows what norms buy."""

    def __init__(self, cfg: OptionConfig, dim: int, bias: bool = False):
        super().__init__()
