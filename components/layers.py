"""Small layers shared by several axes."""
from __future__ import annotations

from torch import nn


def dropout(p: float) -> nn.Module:
    """nn.Dropout(p), or the identity when p is 0 (the default): skipping the call is measurable at small
    shapes, where per-module Python overhead is a visible share of a step."""
    return nn.Dropout(p) if p > 0 else nn.Identity()
