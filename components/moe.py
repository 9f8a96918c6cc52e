"""Dense or mixture-of-experts feed-forward (the `moe` axis).

A `moe` option is a feed-forward *factory*: `feedforward(make_ffn, d_model, d_ff, ...)` returns
the module that sits in the block's feed-forward slot, where `make_ffn(hidden)` builds one dense
`ffn` of the chosen type. `n_params(...)` gives (total, active) parameters in closed form.

Modules may expose, after each forward, `last_aux_losses` (name -> weighted scalar tensor, added to
the training loss) and `last_diagnostics` (name -> tensor, logged), which the model collects.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from components.registry import register

MakeFFN = Callable[[int], nn.Module]


@register("moe", "off")
class Dense:
    """The dense feed-forward of the chosen `ffn`, in every block."""

    @staticmethod
    def feedforward(make_ffn: MakeFFN, d_ff: int) -> nn.Module:
        return make_ffn(d_ff)

    @staticmethod
    def n_params(ffn_params: Callable[[int], int], d_ff: int) -> tuple[int, int]:
        """(total, active) parameters of one block's feed-forward; `ffn_params(hidden)` counts one dense ffn."""
        params = ffn_params(d_ff)
        return params, params

    @staticmethod
    def matmul_params(ffn_matmul_params: Callable[[int], int], d_ff: int, d_model: int) -> int:
        """Matmul weights one token passes through (for FLOPs)."""
        return ffn_matmul_params(d_ff)
