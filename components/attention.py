"""Self-attention (the `attn` axis chooses the kernel; `pos` rotates q and k).

`SelfAttention` owns the projections and the head bookkeeping (MHA, GQA, MQA through
n_kv_heads). The registered option is the *kernel*: how causal attention is computed from
q, k, v of shape (batch, heads, time, head_dim). The kernel receives k and v with n_kv_heads
heads; it shares each across n_heads / n_kv_heads query heads (Ainslie et al. 2023).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from components.positional import PositionEncoding
from components.registry import build, register


@register("attn", "full")
class FullCausalAttention(nn.Module):
    """softmax(q k^T / sqrt(d) + causal mask) v through torch's fused scaled_dot_product_attention."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout

    @staticmethod
    def flops_per_token(d_model: int, context_length: int) -> int:
        """Forward FLOPs per token of q k^T and p v, counted over the full T x T score matrix
        (the convention of PaLM's MFU and of torch.utils.flop_counter; causal kernels skip about half)."""
        return 2 * 2 * context_length * d_model

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=k.shape[1] != q.shape[1],
        )


class SelfAttention(nn.Module):
    """Project to q, k, v; place positions; run the kernel; merge heads; project out."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, kernel: str = "full",
                 bias: bool = False, dropout: float = 0.0, **kernel_options):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        kv_width = n_kv_heads * self.head_dim
        self.qkv = nn.Linear(d_model, d_model + 2 * kv_width, bias=bias)  # one matmul for q, k, v
        self.out = nn.Linear(d_model, d_model, bias=bias)
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
        q, k = pos.rotate(q, k)
        y = self.kernel(q, k, v)
        return self.residual_dropout(self.out(rearrange(y, "b h t d -> b t (h d)")))
