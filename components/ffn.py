"""Feed-forward networks (the `ffn` axis).

Every option maps d_model -> d_ff -> d_model. Plain MLPs have two matrices, gated (GLU) ones
three, so GLU options default to d_ff = 8/3 d_model to keep parameters equal to a 4x MLP
(Shazeer 2020). `cfg.hidden_size(d_model)` turns `ffn.d_ff_ratio` into d_ff; an option is built as
`Option(cfg, d_model, d_ff, bias, dropout)` (a mixture of experts builds its experts smaller).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from components.layers import dropout as dropout_layer
from components.knobs import knob
from components.registry import OptionConfig, axis, register

axis("ffn", "feed-forward network: gated (GLU) or plain MLP, and its activation")


def hidden_size(d_model: int, d_ff_ratio: float, multiple_of: int) -> int:
    """d_ff = d_ff_ratio * d_model rounded to the nearest multiple of `multiple_of` (at least one)."""
    return max(multiple_of, multiple_of * round(d_ff_ratio * d_model / multiple_of))


@dataclass
class FFNConfig(OptionConfig):
    d_ff_ratio: float = knob(4.0, gt=0, doc="hidden size d_ff = d_ff_ratio x d_model")
    multiple_of: int = knob(8, ge=1, doc="d_ff is rounded to a multiple of this")

    def hidden_size(self, d_model: int) -> int:
        return hidden_size(d_model, self.d_ff_ratio, self.multiple_of)


@dataclass
class GatedFFNConfig(FFNConfig):
    d_ff_ratio: float = knob(8 / 3, gt=0, doc="hidden size d_ff = d_ff_ratio x d_model (8/3: the parameters of a 4x MLP)")


def squared_relu(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


class MLP(nn.Module):
    """act(x W1) W2."""

    Config = FFNConfig
    activation = staticmethod(F.gelu)

    def __init__(self, cfg: FFNConfig, d_model: int, d_ff: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = dropout_layer(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.activation(self.up(x))))


class GatedMLP(nn.Module):
    """(act(x W) * x V) W2 (Dauphin et al. 2017; Shazeer 2020). W and V are one fused matrix."""

    Config = GatedFFNConfig
    activation = staticmethod(F.silu)

    def __init__(self, cfg: FFNConfig, d_model: int, d_ff: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = dropout_layer(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One matmul per half of the fused [W; V] rows: contiguous gate and up tensors make the gating
        # and its backward cheaper than splitting one wide output (about 6 % of the FFN on CPU).
        w, b = self.gate_up.weight, self.gate_up.bias
        d_ff = w.shape[0] // 2
        gate = F.linear(x, w[:d_ff], None if b is None else b[:d_ff])
        up = F.linear(x, w[d_ff:], None if b is None else b[d_ff:])
        return self.dropout(self.down(self.activation(gate) * up))


@register("ffn", "gelu")
class GELUMLP(MLP):
    """GPT-2's MLP (tanh-free exact GELU, Hendrycks & Gimpel 2016)."""

    activation = staticmethod(F.gelu)


@register("ffn", "relu")
class ReLUMLP(MLP):
    """The original Transformer's MLP (Vaswani et al. 2017)."""

    activation = staticmethod(F.relu)


@register("ffn", "gelu_tanh")
class GELUTanhMLP(MLP):
    """GPT-2's exact MLP: GELU with the tanh approximation ("gelu_new" in Hugging Face)."""

    activation = staticmethod(partial(F.gelu, approximate="tanh"))


@register("ffn", "relu2")
class SquaredReLUMLP(MLP):
    """relu(x)^2 (So et al. 2021, Primer)."""

    activation = staticmethod(squared_relu)


@register("ffn", "silu")
class SiLUMLP(MLP):
    """SiLU without a gate: isolates what the gate of SwiGLU buys."""

    activation = staticmethod(F.silu)


@register("ffn", "swiglu")
class SwiGLU(GatedMLP):
    """SiLU-gated linear unit (Shazeer 2020), as in LLaMA and PaLM."""

    activation = staticmethod(F.silu)


@register("ffn", "geglu")
class GeGLU(GatedMLP):
    """GELU-gated linear unit (Shazeer 2020), as in Gemma (tanh-approximate GELU)."""

    activation = staticmethod(partial(F.gelu, approximate="tanh"))


@register("ffn", "reglu")
class ReGLU(GatedMLP):
    """ReLU-gated linear unit (Shazeer 2020)."""

    activation = staticmethod(F.relu)
