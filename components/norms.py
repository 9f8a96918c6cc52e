"""Normalization layers (the `norm` axis). Built with `dim`, `eps` and `bias`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from components.registry import register


@register("norm", "rms")
class RMSNorm(nn.Module):
    """x / rms(x) * g (Zhang & Sennrich 2019): no mean, no bias; cheaper than LayerNorm."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    @staticmethod
    def n_params(dim: int, bias: bool = False) -> int:
        return dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


@register("norm", "ln")
class LayerNorm(nn.LayerNorm):
    """(x - mean) / std * g + b (Ba et al. 2016); the bias only when the model uses biases."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False):
        super().__init__(dim, eps=eps, bias=bias)

    @staticmethod
    def n_params(dim: int, bias: bool = False) -> int:
        return dim * (2 if bias else 1)


@register("norm", "none")
class NoNorm(nn.Identity):
    """No normalization: the ablation baseline that shows what norms buy."""

    def __init__(self, dim: int):
        super().__init__()

    @staticmethod
    def n_params(dim: int, bias: bool = False) -> int:
        return 0
