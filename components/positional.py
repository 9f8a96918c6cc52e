"""Position information (the `pos` axis).

A position option can act at two places, and each class overrides only the hook it needs:
- `embed(x)`: added to the token embeddings at the bottom (sinusoidal, learned);
- `rotate(q, k)`: applied to queries and keys inside every attention layer (RoPE).
- `attention_bias(T)`: added to the attention scores of every layer (ALiBi).
The model holds one instance and hands it to every attention layer, so tables are built once.
Every option is built as `Option(cfg, model)`: its own settings and the model's shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from components.knobs import knob
from components.registry import OptionConfig, axis, register
from components.shape import ModelConfig

axis("pos", "position information: rotary, sinusoidal, learned, none or ALiBi")


@dataclass
class ThetaConfig(OptionConfig):
    theta: float = knob(10000.0, gt=0, doc="base of the geometric sequence of frequencies")


class PositionEncoding(nn.Module):
    """No-op hooks; options override the ones they use."""

    max_length: int | None = None  # longest sequence the option can encode; None = unbounded

    def __init__(self, cfg: OptionConfig, model: ModelConfig):
        super().__init__()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def attention_bias(self, length: int, device: torch.device) -> torch.Tensor | None:
        """Additive bias on attention scores, (n_heads, T, T), or None (ALiBi overrides this)."""
        return None


@register("pos", "nope")
class NoPositionEncoding(PositionEncoding):
    """No position signal: the causal mask alone reveals order (Kazemnejad et al. 2023)."""


def sinusoid_table(length: int, dim: int, theta: float = 10000.0) -> torch.Tensor:
    """PE[p, 2i] = sin(p / theta^(2i/d)), PE[p, 2i+1] = cos(...) (Vaswani et al. 2017)."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)[:, : dim // 2]
    return table.float()


@register("pos", "sinusoidal")
class SinusoidalPositions(PositionEncoding):
    """Fixed sinusoids added to the token embeddings, which are first multiplied by sqrt(d_model), as
    Vaswani et al. 2017 (section 3.4) train them.

    Why the scale: the table's entries have magnitude ~1 while the token embeddings start at
    model.init_std (0.02); unscaled, the position signal outweighs the token identity ~50x and the
    model barely learns (final loss at the unigram baseline in the nano `pos` sweep, 6.08 against
    5.15 with the scale)."""

    @staticmethod
    def check_config(cfg) -> str | None:
        if cfg.model.scale_embeddings:
            return ("pos=sinusoidal already multiplies the token embeddings by sqrt(d_model) (Vaswani et al. "
                    "2017); model.scale_embeddings=true would scale them twice. Use model.scale_embeddings=false "
                    "with pos=sinusoidal, or another pos option (rope, learned, nope, alibi).")
        return None

    Config = ThetaConfig

    def __init__(self, cfg: ThetaConfig, model: ModelConfig):
        super().__init__(cfg, model)
        self.register_buffer("table", sinusoid_table(model.context_length, model.d_model, cfg.theta),
                             persistent=False)
        self.max_length = model.context_length
        self.embed_scale = model.d_model ** 0.5

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.embed_scale + self.table[: x.shape[1]].to(x.dtype)


@register("pos", "learned")
class LearnedPositions(PositionEncoding):
    """One trained vector per absolute position, added to the embeddings (GPT-2)."""

    def __init__(self, cfg: OptionConfig, model: ModelConfig):
        super().__init__(cfg, model)
        self.weight = nn.Parameter(torch.randn(model.context_length, model.d_model) * model.init_std)
        self.max_length = model.context_length

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight[: x.shape[1]].to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@register("pos", "rope")
class RoPE(PositionEncoding):
    """Rotary embedding (Su et al. 2021): rotate each (i, i + d/2) pair of q and k by p * theta^(-2i/d).

    The half-split pairing is the one of LLaMA / Hugging Face, so weights convert without permuting.
    q·k then depends on positions only through their offset. The table grows on demand, so RoPE
    has no hard length limit.
    """

    Config = ThetaConfig

    @staticmethod
    def check_config(cfg) -> str | None:
        m = cfg.model
        if m.head_dim % 2:
            return (f"pos=rope needs an even head dimension, but model.d_model={m.d_model} / "
                    f"model.n_heads={m.n_heads} = {m.head_dim}. Allowed: an n_heads that leaves an even "
                    f"d_model / n_heads, or another pos option (sinusoidal, learned, nope).")
        return None

    def __init__(self, cfg: ThetaConfig, model: ModelConfig):
        super().__init__(cfg, model)
        self.head_dim, self.theta = model.head_dim, cfg.theta
        self._build(model.context_length)

    def _build(self, length: int) -> None:
        inv_freq = self.theta ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim)
        angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)  # (T, head_dim): pair i and i + d/2 share an angle
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = q.shape[-2]
        if length > self.cos.shape[0]:
            device = self.cos.device
            self._build(length)
            self.cos, self.sin = self.cos.to(device), self.sin.to(device)
        cos, sin = self.cos[:length].to(q.dtype), self.sin[:length].to(q.dtype)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi's head slopes (Press et al. 2022, the reference `get_slopes`): for n a power of two the
    geometric sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8); otherwise the slopes of the closest lower power
    of two p, followed by every other slope of 2p (2^(-4/p), 2^(-12/p), ...) up to n slopes in all."""
    def geometric(n: int) -> list[float]:
        return [2 ** (-8 * (h + 1) / n) for h in range(n)]

    p = 2 ** math.floor(math.log2(n_heads))
    return geometric(p) + geometric(2 * p)[0::2][: n_heads - p]


@register("pos", "alibi")
class ALiBi(PositionEncoding):
    """Attention with Linear Biases (Press et al. 2022): no embedding, no rotation; head h adds
    -slope_h * (i - j) to the score of query i on key j, so attention decays linearly with distance at a
    per-head rate. The bias depends only on distances, so ALiBi has no length limit."""

    def __init__(self, cfg: OptionConfig, model: ModelConfig):
        super().__init__(cfg, model)
        self.n_heads = n_heads = model.n_heads
        self.register_buffer("slopes", torch.tensor(alibi_slopes(n_heads), dtype=torch.float32), persistent=False)
        self._bias: dict[tuple[int, torch.device], torch.Tensor] = {}

    def attention_bias(self, length: int, device: torch.device) -> torch.Tensor:
        """(n_heads, T, T): -slope_h * (i - j) on and below the diagonal, 0 above it (masked anyway).
        Built once per (T, device)."""
        key = (length, torch.device(device))
        if key not in self._bias:
            position = torch.arange(length, device=device)
            distance = (position[:, None] - position[None, :]).clamp_min(0).float()
            self._bias[key] = -self.slopes.to(device)[:, None, None] * distance
        return self._bias[key]
