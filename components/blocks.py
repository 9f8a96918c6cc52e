"""Where norms sit (`norm_pos`) and how sublayers join the residual stream (`block`).

A `norm_pos` option is a residual connection around one or more branches (sublayers) that
read the same input, with up to three norms:

    input norm     -> applied to x before the branches     (pre, double)
    output norms   -> one per branch, on its output         (double, output)
    sum norm       -> applied after the residual add        (post)

    residual(x, f, g) = sum_norm(x + out_f(f(in(x))) + out_g(g(in(x))))

A `block` option decides how attention and the feed-forward use those residuals: one after the
other (serial), or both from the same input (parallel).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from components.registry import OptionConfig, axis, register

axis("norm_pos", "where block norms sit: before the sublayer, after the residual add, both, or on the output")
axis("block", "serial (attention, then feed-forward) or parallel (both from the same input) blocks")

Branch = Callable[[torch.Tensor], torch.Tensor]
MakeNorm = Callable[[], nn.Module]


class NormPlacement(nn.Module):
    """x -> sum_norm(x + sum_i out_i(branch_i(in(x))))."""

    norm_input = norm_output = norm_sum = False
    final_norm = True  # whether the model still needs a norm before the output head

    def __init__(self, cfg: OptionConfig, make_norm: MakeNorm, n_branches: int = 1):
        super().__init__()
        self.input_norm = make_norm() if self.norm_input else nn.Identity()
        self.output_norms = nn.ModuleList(
            make_norm() if self.norm_output else nn.Identity() for _ in range(n_branches))
        self.sum_norm = make_norm() if self.norm_sum else nn.Identity()

    def forward(self, x: torch.Tensor, *branches: Branch) -> torch.Tensor:
        h = self.input_norm(x)
        for branch, output_norm in zip(branches, self.output_norms, strict=True):
            x = x + output_norm(branch(h))
        return self.sum_norm(x)


@register("norm_pos", "pre")
class PreNorm(NormPlacement):
    """x + f(norm(x)): the identity path stays clean (Xiong et al. 2020)."""

    norm_input = True


@register("norm_pos", "post")
class PostNorm(NormPlacement):
    """norm(x + f(x)), the original Transformer's placement (Vaswani et al. 2017).

    The last block already ends in a norm, so the model adds no final norm.
    """

    norm_sum = True
    final_norm = False


@register("norm_pos", "double")
class DoubleNorm(NormPlacement):
    """x + norm(f(norm(x))): norms on both sides of each sublayer (Gemma 2; Ding et al. 2021)."""

    norm_input = norm_output = True


@register("norm_pos", "output")
class OutputNorm(NormPlacement):
    """x + norm(f(x)): a norm on each sublayer's output only, none on its input (OLMo 2's reordered
    norm; Swin Transformer v2's res-post-norm). The residual stream itself is never normalized,
    so the model keeps its final norm."""

    norm_output = True


@register("block", "serial")
class SerialBlock(nn.Module):
    """x = x + attn(norm x); x = x + mlp(norm x) (norms placed by norm_pos)."""

    def __init__(self, cfg: OptionConfig, attention: nn.Module, feedforward: nn.Module,
                 placement: Callable[[int], NormPlacement]):
        super().__init__()
        self.attn, self.mlp = attention, feedforward
        self.attn_residual, self.mlp_residual = placement(1), placement(1)

    def forward(self, x: torch.Tensor, pos: nn.Module) -> torch.Tensor:
        x = self.attn_residual(x, lambda h: self.attn(h, pos))
        return self.mlp_residual(x, self.mlp)


@register("block", "parallel")
class ParallelBlock(nn.Module):
    """x + attn(norm x) + mlp(norm x), one shared input norm (GPT-J; Chowdhery et al. 2022)."""

    def __init__(self, cfg: OptionConfig, attention: nn.Module, feedforward: nn.Module,
                 placement: Callable[[int], NormPlacement]):
        super().__init__()
        self.attn, self.mlp = attention, feedforward
        self.residual = placement(2)

    def forward(self, x: torch.Tensor, pos: nn.Module) -> torch.Tensor:
        return self.residual(x, lambda h: self.attn(h, pos), self.mlp)
