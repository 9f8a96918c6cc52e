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

from components.layers import dropout as dropout_layer
from components.positional import PositionEncoding
from components.registry import build, lookup, options, register


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


# --- Restricted softmax patterns ------------------------------------------------------------------------------

_PATTERNS: dict[tuple, torch.Tensor] = {}


class PatternAttention(nn.Module):
    """Softmax attention over a fixed set of allowed key offsets i - j >= 0 (a subclass states which
    through `allows(offset)`). The (T, T) boolean mask is built once per (pattern, T, device), shared by
    all layers, and handed to `softmax_attention`, so a position bias (ALiBi) and soft-capping compose.

    The mask is dense: the kernel still forms the T x T scores and discards the masked ones. Its
    `flops_per_token` counts the entries a sparse kernel would compute (the row of a query with a full
    context, as full attention counts all T), i.e. the cost the pattern is meant to have."""

    def __init__(self, dropout: float = 0.0, softcap: float | None = None):
        super().__init__()
        self.dropout, self.softcap = dropout, softcap

    def pattern(self) -> tuple:
        """The knobs that determine the mask (its cache key)."""
        raise NotImplementedError

    def allows(self, offset: torch.Tensor) -> torch.Tensor:
        """Which offsets i - j (all >= 0 here) a query attends to."""
        raise NotImplementedError

    def mask(self, T: int, device: torch.device) -> torch.Tensor:
        key = (type(self), self.pattern(), T, device)
        if key not in _PATTERNS:
            position = torch.arange(T, device=device)
            offset = position[:, None] - position[None, :]
            _PATTERNS[key] = (offset >= 0) & self.allows(offset)
        return _PATTERNS[key]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        return softmax_attention(q, k, v, allowed=self.mask(q.shape[-2], q.device), bias=bias,
                                 softcap=self.softcap, dropout=self.dropout if self.training else 0.0)


def _positive_knob(option: str, key: str, value: int | None, meaning: str) -> str | None:
    if value is None or value < 1:
        shown = "null" if value is None else value
        return (f"attn={option} needs attn.{key} to be a positive integer ({meaning}), but attn.{key}={shown}. "
                f"Set e.g. attn.{key}=64, or use attn=full.")
    return None


@register("attn", "sliding_window")
class SlidingWindowAttention(PatternAttention):
    """Local causal attention (Longformer, Beltagy et al. 2020; Mistral 7B): query i sees keys
    i - window + 1 .. i, itself included. Stacked layers still reach further back (L x window)."""

    def __init__(self, window: int | None, dropout: float = 0.0, softcap: float | None = None):
        message = self.check_config(window)
        if message:
            raise ValueError(message)
        super().__init__(dropout, softcap)
        self.window = window

    @staticmethod
    def check_config(attn_window: int | None) -> str | None:
        return _positive_knob("sliding_window", "window", attn_window,
                              "each query attends to itself and the window - 1 positions before it")

    @staticmethod
    def flops_per_token(d_model: int, context_length: int, window: int) -> int:
        """Full attention's 2 * 2 * T * d_model with the min(window, T) keys a query really scores."""
        return 2 * 2 * min(window, context_length) * d_model

    def pattern(self) -> tuple:
        return (self.window,)

    def allows(self, offset: torch.Tensor) -> torch.Tensor:
        return offset < self.window


@register("attn", "strided")
class StridedAttention(PatternAttention):
    """The strided sparse pattern of the Sparse Transformer (Child et al. 2019, Sec. 4.2), both heads'
    patterns merged into one: query i sees key j <= i if i - j < window (local) or (i - j) % stride == 0
    (every stride-th earlier position). With window = stride ~ sqrt(T) a query scores ~ 2 sqrt(T) keys."""

    def __init__(self, window: int | None, stride: int | None, dropout: float = 0.0,
                 softcap: float | None = None):
        message = self.check_config(window, stride)
        if message:
            raise ValueError(message)
        super().__init__(dropout, softcap)
        self.window, self.stride = window, stride

    @staticmethod
    def check_config(attn_window: int | None, attn_stride: int | None) -> str | None:
        return (_positive_knob("strided", "window", attn_window, "the local band: keys with i - j < window")
                or _positive_knob("strided", "stride", attn_stride, "also keys with (i - j) % stride == 0"))

    @staticmethod
    def keys_per_query(context_length: int, window: int, stride: int) -> int:
        """Offsets 0 <= o < T that the pattern allows: min(window, T) local ones plus the multiples of
        stride in [window, T)."""
        local = min(window, context_length)
        multiples = 0 if local >= context_length else (context_length - 1) // stride - (local - 1) // stride
        return local + multiples

    @classmethod
    def flops_per_token(cls, d_model: int, context_length: int, window: int, stride: int) -> int:
        """Full attention's 2 * 2 * T * d_model with T replaced by the keys a query with a full context
        scores: min(window, T) + #{multiples of stride in [window, T)}."""
        return 2 * 2 * cls.keys_per_query(context_length, window, stride) * d_model

    def pattern(self) -> tuple:
        return (self.window, self.stride)

    def allows(self, offset: torch.Tensor) -> torch.Tensor:
        return (offset < self.window) | (offset % self.stride == 0)


# --- Linear attention -------------------------------------------------------------------------------------------

@register("attn", "linear")
class LinearAttention(nn.Module):
    """Causal linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"):

        y_i = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps),  S_i = sum_{j<=i} phi(k_j) v_j^T,  z_i = sum_{j<=i} phi(k_j)

    with phi(x) = elu(x) + 1 > 0. Computed chunkwise: within a chunk of `chunk_size` positions the masked
    quadratic form phi(Q) phi(K)^T, across chunks the running state (S, z) of all earlier chunks (an
    exclusive cumulative sum over chunks, no Python loop). Memory is O(T * chunk + T / chunk * head_dim^2);
    no T x T matrix is formed. z rides along as an extra all-ones value column, so one pass gives the
    numerator and the denominator. Computed in float32 (autocast off): the running sums are long.

    There is no softmax, hence no attention dropout, no soft-cap and no additive score bias (ALiBi);
    `check_config` refuses the last two.
    """

    DEFAULT_CHUNK = 64

    def __init__(self, softcap: float | None = None, chunk_size: int = DEFAULT_CHUNK, eps: float = 1e-6):
        super().__init__()
        if softcap is not None:
            raise ValueError(self._softcap_message(softcap))
        if chunk_size < 1:
            raise ValueError(f"attn=linear: chunk_size={chunk_size} must be a positive integer.")
        self.chunk_size, self.eps = chunk_size, eps

    @staticmethod
    def _softcap_message(softcap: float) -> str:
        return (f"attn=linear has no softmax scores to cap, but softcap.attn={softcap} (softcap=on) caps "
                f"attention logits: the two options clash. Use softcap=off (or softcap.attn=null), or a "
                f"softmax kernel (attn=full, sliding_window, strided).")

    @staticmethod
    def check_config(pos_name: str, softcap_attn: float | None = None) -> str | None:
        def biases_scores(name: str) -> bool:
            return lookup("pos", name).attention_bias is not PositionEncoding.attention_bias

        if biases_scores(pos_name):
            usable = ", ".join(name for name in options("pos") if not biases_scores(name))
            return (f"attn=linear cannot use pos={pos_name}: pos={pos_name} adds a bias to the attention "
                    f"scores before the softmax, and linear attention never forms scores (phi(q)·phi(k) has "
                    f"no additive position term): the two options clash. Use attn=linear with a pos option "
                    f"that adds no score bias ({usable}), or a softmax kernel (attn=full, sliding_window, "
                    f"strided) with pos={pos_name}.")
        if softcap_attn is not None:
            return LinearAttention._softcap_message(softcap_attn)
        return None

    @classmethod
    def flops_per_token(cls, d_model: int, context_length: int, head_dim: int | None = None,
                        n_heads: int | None = None, chunk_size: int = DEFAULT_CHUNK) -> int:
        """Forward FLOPs per token (2 per multiply-add), per head, with C = min(chunk_size, T) and the
        value width head_dim + 1 (the normalizer column):
          phi(k) [v, 1]^T into the state 2 hd (hd+1), phi(q)^T state 2 hd (hd+1),
          intra-chunk scores 2 C hd, intra-chunk scores @ [v, 1] 2 C (hd+1);
        over d_model / hd heads: 4 d (hd + 1) + 4 C d + 2 C n_heads (full attention: 4 T d).
        Without head_dim or n_heads (ablate.accounting passes neither yet) hd = min(64, d_model)."""
        if head_dim is None:
            head_dim = d_model // n_heads if n_heads else min(64, d_model)
        heads = d_model // head_dim
        chunk = min(chunk_size, context_length)
        return 4 * d_model * (head_dim + 1) + 4 * chunk * d_model + 2 * chunk * heads

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        if bias is not None:
            raise ValueError("attn=linear cannot add a score bias (pos=alibi): it never forms attention scores.")
        T, dtype = q.shape[-2], q.dtype
        chunk = min(self.chunk_size, T)
        pad = -T % chunk
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k, v = (F.pad(x.float(), (0, 0, 0, pad)) for x in (q, k, v))  # padded keys follow every real query
            v1 = torch.cat((v, torch.ones_like(v[..., :1])), dim=-1)  # [v, 1]: the last column accumulates z
            fq = rearrange(F.elu(q) + 1, "b (k g) (n c) d -> b k g n c d", k=k.shape[1], c=chunk)
            fk = rearrange(F.elu(k) + 1, "b k (n c) d -> b k n c d", c=chunk)
            v1 = rearrange(v1, "b k (n c) e -> b k n c e", c=chunk)
            # state of each chunk, then the sum over all *earlier* chunks (exclusive prefix sum)
            per_chunk = torch.einsum("bknci,bknce->bknie", fk, v1)
            before = torch.cat((torch.zeros_like(per_chunk[:, :, :1]), per_chunk[:, :, :-1].cumsum(2)), dim=2)
            out = torch.einsum("bkgnci,bknie->bkgnce", fq, before)
            scores = torch.einsum("bkgnci,bknsi->bkgncs", fq, fk) * causal_mask(chunk, q.device)
            out = out + torch.einsum("bkgncs,bknse->bkgnce", scores, v1)
            y = out[..., :-1] / (out[..., -1:] + self.eps)
            y = rearrange(y, "b k g n c d -> b (k g) (n c) d")[:, :, :T]
        return y.to(dtype)


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
        self.residual_dropout = dropout_layer(dropout)

    @staticmethod
    def n_params(d_model: int, n_heads: int, n_kv_heads: int, bias: bool = False) -> int:
        qkv_width = d_model + 2 * n_kv_heads * (d_model // n_heads)
        return d_model * qkv_width + d_model * d_model + ((qkv_width + d_model) if bias else 0)

    def forward(self, x: torch.Tensor, pos: PositionEncoding) -> torch.Tensor:
        kv_width = self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([self.n_heads * self.head_dim, kv_width, kv_width], dim=-1)
        # b t (h d) -> b h t d. unflatten + transpose rather than einops here: this runs 4x per layer per
        # step, and einops' parsing costs 2.5x the reshape itself (measurable at small shapes).
        q = q.unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)
        k = k.unflatten(-1, (self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = v.unflatten(-1, (self.n_kv_heads, self.head_dim)).transpose(1, 2)
        q, k = pos.rotate(*self.qk_norm(q, k))
        y = self.kernel(q, k, v, bias=pos.attention_bias(x.shape[1], x.device))
        return self.residual_dropout(self.out(y.transpose(1, 2).flatten(2)))  # b h t d -> b t (h d)
