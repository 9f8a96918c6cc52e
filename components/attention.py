"""Self-attention: the `attn` axis chooses the kernel, `qk_norm` normalizes q and k per head,
`pos` rotates q and k (RoPE) or biases the scores (ALiBi), `softcap.attn` caps the scores.

`SelfAttention` owns the projections and the head bookkeeping (MHA, GQA, MQA through
n_kv_heads). The registered `attn` option is the *kernel*: how causal attention is computed
from q (batch, n_heads, T, head_dim) and k, v (batch, n_kv_heads, T, head_dim); each k/v head
serves n_heads / n_kv_heads query heads (Ainslie et al. 2023).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from components.positional import PositionEncoding
from components.registry import build, register


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, allowed: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None, softcap: float | None = None,
                      dropout: float = 0.0) -> torch.Tensor:
    """softmax(cap(q k^T / sqrt(d)) + bias, over allowed keys) v.

    `allowed` is a (T, T) boolean mask (True = may attend; None = causal). Without a soft-cap this is
    one call of torch's fused scaled_dot_product_attention; a cap has to act on the raw scores, so
    then the scores are formed explicitly.
    """
    enable_gqa = k.shape[1] != q.shape[1]
    if softcap is None:
        if allowed is None and bias is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, enable_gqa=enable_gqa)
        T = q.shape[-2]
        allowed = causal_mask(T, q.device) if allowed is None else allowed
        mask = allowed if bias is None else bias.to(q.dtype).masked_fill(~allowed, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=enable_gqa)
    if enable_gqa:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = softcap * torch.tanh(scores / softcap)
    if bias is not None:
        scores = scores + bias
    allowed = causal_mask(q.shape[-2], q.device) if allowed is None else allowed
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    return F.dropout(probs, p=dropout) @ v


_CAUSAL: dict[tuple[int, torch.device], torch.Tensor] = {}


def causal_mask(T: int, device: torch.device) -> torch.Tensor:
    """(T, T) lower-triangular boolean mask, built once per size and device."""
    key = (T, device)
    if key not in _CAUSAL:
        _CAUSAL[key] = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    return _CAUSAL[key]


@register("attn", "full")
class FullCausalAttention(nn.Module):
    """Every earlier position: softmax(q k^T / sqrt(d) + causal mask) v."""

    def __init__(self, dropout: float = 0.0, softcap: float | None = None):
        super().__init__()
        self.dropout, self.softcap = dropout, softcap

    @staticmethod
    def flops_per_token(d_model: int, context_length: int) -> int:
        """Forward FLOPs per token of q k^T and p v, counted over the full T x T score matrix
        (the convention of PaLM's MFU and of torch.utils.flop_counter; causal kernels skip about half)."""
        return 2 * 2 * context_length * d_model

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        return softmax_attention(q, k, v, bias=bias, softcap=self.softcap,
                                 dropout=self.dropout if self.training else 0.0)


@register("qk_norm", "off")
class NoQKNorm(nn.Module):
    def __init__(self):
        super().__init__()

    @staticmethod
    def n_params(head_norm_params: int) -> int:
        return 0

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k


@register("qk_norm", "on")
class QKNorm(nn.Module):
    """The model's norm applied to each head's q and k over head_dim (Dehghani et al. 2023; OLMo 2)."""

    def __init__(self, make_head_norm: Callable[[], nn.Module]):
        super().__init__()
        self.q_norm, self.k_norm = make_head_norm(), make_head_norm()

    @staticmethod
    def check_config(norm_name: str) -> str | None:
        if norm_name == "none":
            return ("qk_norm=on normalizes q and k with the model's norm, but norm=none is the identity: "
                    "the two options clash. Choose norm=rms or norm=ln, or qk_norm=off.")
        return None

    @staticmethod
    def n_params(head_norm_params: int) -> int:
        return 2 * head_norm_params

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_norm(q), self.k_norm(k)


class SelfAttention(nn.Module):
    """Project to q, k, v; normalize and position them; run the kernel; merge heads; project out."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, kernel: str = "full",
                 bias: bool = False, dropout: float = 0.0, qk_norm: str = "off",
                 make_head_norm: Callable[[], nn.Module] | None = None, **kernel_options):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        kv_width = n_kv_heads * self.head_dim
        self.qkv = nn.Linear(d_model, d_model + 2 * kv_width, bias=bias)  # one matmul for q, k, v
        self.out = nn.Linear(d_model, d_model, bias=bias)
        self.qk_norm = build("qk_norm", qk_norm, make_head_norm=make_head_norm)
        self.kernel = build("attn", kernel, dropout=dropout, n_heads=n_heads, head_dim=self.head_dim,
                            **kernel_options)
        self.residual_dropout = nn.Dropout(dropout)

    @staticmethod
    def n_params(d_model: int, n_heads: int, n_kv_heads: int, bias: bool = False) -> int:
        qkv_width = d_model + 2 * n_kv_heads * (d_model // n_heads)
        return d_model * qkv_width + d_model * d_model + ((qkv_width + d_model) if bias else 0)

    def forward(self, x: torch.Tensor, pos: PositionEncoding) -> torch.Tensor:
        kv_width = self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([self.n_heads * self.head_dim, kv_width, kv_width], dim=-1)
        q = rearrange(q, "b t (h d) -> b h t d", h=self.n_heads)
        k = rearrange(k, "b t (h d) -> b h t d", h=self.n_kv_heads)
        v = rearrange(v, "b t (h d) -> b h t d", h=self.n_kv_heads)
        q, k = pos.rotate(*self.qk_norm(q, k))
        y = self.kernel(q, k, v, bias=pos.attention_bias(x.shape[1], x.device))
        return self.residual_dropout(self.out(rearrange(y, "b h t d -> b t (h d)")))
