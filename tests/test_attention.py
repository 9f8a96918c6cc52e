"""Attention kernels (full, sliding_window, strided, linear), soft-capping and ALiBi, each against an
independent reference; their refusals; and every attn x pos combination training in the whole model."""
from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hydra.errors import HydraException

from ablate.accounting import count
from ablate.config.validate import ConfigError, check
from ablate.model import Transformer
from components.registry import config_of, option, options
from components.shape import ModelConfig
from tests.conftest import compose, hydra_compose_once

VOCAB = 97


def qkv(T: int, n_heads: int = 4, n_kv_heads: int = 4, d: int = 8, b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, n_heads, T, d, generator=g), torch.randn(b, n_kv_heads, T, d, generator=g),
            torch.randn(b, n_kv_heads, T, d, generator=g))


def expand(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    return x.repeat_interleave(n_heads // x.shape[1], dim=1)


def reference_softmax(q, k, v, allowed, bias=None, cap=None):
    """softmax over allowed keys of (cap * tanh(q k^T / sqrt d / cap)) + bias, written out."""
    k, v = expand(k, q.shape[1]), expand(v, q.shape[1])
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if cap is not None:
        scores = cap * torch.tanh(scores / cap)
    if bias is not None:
        scores = scores + bias
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def causal(T: int) -> torch.Tensor:
    i = torch.arange(T)
    return i[None, :] <= i[:, None]


def window_mask(T: int, w: int) -> torch.Tensor:
    i = torch.arange(T)
    return causal(T) & (i[:, None] - i[None, :] < w)


def strided_brute_force(T: int, window: int, stride: int) -> torch.Tensor:
    mask = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(T):
            mask[i, j] = j <= i and (i - j < window or (i - j) % stride == 0)
    return mask


def reference_get_slopes(n):
    """The reference implementation of the ALiBi repository (ofirpress/attention_with_linear_biases)."""
    def get_slopes_power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        ratio = start
        return [start * ratio ** i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (get_slopes_power_of_2(closest_power_of_2)
            + reference_get_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2])


def reference_linear(q, k, v, eps=1e-6):
    """Causal linear attention in its quadratic form: (phi(Q) phi(K)^T masked) V / row sums."""
    k, v = expand(k, q.shape[1]), expand(v, q.shape[1])
    phi = lambda x: F.elu(x) + 1  # noqa: E731
    a = (phi(q) @ phi(k).transpose(-1, -2)).masked_fill(~causal(q.shape[-2]), 0.0)
    return (a @ v) / (a.sum(-1, keepdim=True) + eps)


def kernel(name: str, softcap: float | None = None, d_model: int = 32, n_heads: int = 4, context_length: int = 64,
           **settings):
    """A kernel built as the model builds it, from its own config with those of `settings` it has."""
    own = {f.name for f in dataclasses.fields(config_of("attn", name))}
    model = ModelConfig(d_model=d_model, n_heads=n_heads, context_length=context_length)
    return option("attn", name, **{k: v for k, v in settings.items() if k in own}).build(model, softcap=softcap)


def alibi(n_heads: int):
    return option("pos", "alibi").build(ModelConfig(d_model=8 * n_heads, n_heads=n_heads))


# --- sliding window and strided ------------------------------------------------------------------

@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_sliding_window_at_least_T_equals_full_attention(n_kv_heads):
    q, k, v = qkv(13, n_kv_heads=n_kv_heads)
    full = kernel("full")(q, k, v)
    for window in (13, 50):
        torch.testing.assert_close(kernel("sliding_window", window=window)(q, k, v), full)


@pytest.mark.parametrize("T,window,n_kv_heads", [(13, 1, 4), (13, 4, 2), (20, 7, 1)])
def test_sliding_window_equals_reference(T, window, n_kv_heads):
    q, k, v = qkv(T, n_kv_heads=n_kv_heads)
    out = kernel("sliding_window", window=window)(q, k, v)
    torch.testing.assert_close(out, reference_softmax(q, k, v, window_mask(T, window)))
    assert not torch.allclose(out, kernel("full")(q, k, v))  # the window does cut something
    if window == 1:  # only itself: the output is the own value
        torch.testing.assert_close(out, expand(v, 4))


@pytest.mark.parametrize("T,window,stride", [(10, 3, 4), (17, 2, 5), (16, 4, 4), (9, 1, 2), (7, 9, 3)])
def test_strided_mask_equals_its_definition(T, window, stride):
    attention = kernel("strided", window=window, stride=stride, context_length=T)
    expected = strided_brute_force(T, window, stride)
    assert torch.equal(attention.mask(T, torch.device("cpu")), expected)
    # its FLOP count scores exactly the keys of the last (full-context) row
    assert attention.keys_per_query() == int(expected[-1].sum())


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_strided_output_equals_reference(n_kv_heads):
    q, k, v = qkv(19, n_kv_heads=n_kv_heads)
    out = kernel("strided", window=3, stride=4)(q, k, v)
    torch.testing.assert_close(out, reference_softmax(q, k, v, strided_brute_force(19, 3, 4)))


def test_pattern_masks_are_cached_and_flops_follow_the_pattern():
    attention = kernel("sliding_window", window=4)
    assert attention.mask(12, torch.device("cpu")) is kernel("sliding_window", window=4).mask(12, torch.device("cpu"))

    def flops(name, **settings):
        return kernel(name, d_model=64, context_length=128, **settings).score_flops_per_token()

    full = flops("full")
    assert full == 2 * 2 * 128 * 64
    assert flops("sliding_window", window=32) == full // 4
    assert flops("sliding_window", window=500) == full
    assert flops("strided", window=16, stride=16) == 4 * 64 * (16 + 7)


# --- linear attention ------------------------------------------------------------------------------

@pytest.mark.parametrize("T,chunk", [(1, 8), (5, 8), (8, 8), (13, 4), (29, 8), (64, 16)])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_linear_attention_equals_its_quadratic_form(T, chunk, n_kv_heads):
    q, k, v = qkv(T, n_kv_heads=n_kv_heads, d=6)
    out = kernel("linear", chunk_size=chunk)(q, k, v)
    assert out.shape == q.shape
    torch.testing.assert_close(out, reference_linear(q, k, v), rtol=1e-5, atol=1e-5)


def test_linear_attention_chunking_does_not_change_the_result_and_gradients_flow():
    q, k, v = (x.requires_grad_() for x in qkv(23, n_kv_heads=2))
    outs = [kernel("linear", chunk_size=c)(q, k, v) for c in (1, 5, 23, 64)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-5, atol=1e-5)
    (outs[1] ** 2).sum().backward()
    for x in (q, k, v):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # gradients equal those of the quadratic form
    grads = torch.autograd.grad((reference_linear(q, k, v) ** 2).sum(), (q, k, v))
    for x, g in zip((q, k, v), grads):
        torch.testing.assert_close(x.grad, g, rtol=1e-4, atol=1e-5)


def test_linear_attention_refuses_bias_and_softcap_when_built_directly():
    q, k, v = qkv(6)
    with pytest.raises(ValueError, match="alibi"):
        kernel("linear")(q, k, v, bias=alibi(4).attention_bias(6, q.device))
    with pytest.raises(ValueError, match="softcap"):
        kernel("linear", softcap=50.0)


def test_linear_attention_flops_are_linear_in_context():
    d, hd = 128, 32

    def f(t, name="linear"):
        return kernel(name, d_model=d, n_heads=d // hd, context_length=t, chunk_size=64).score_flops_per_token()

    assert f(4096) == f(64) == 4 * d * (hd + 1) + 4 * 64 * d + 2 * 64 * (d // hd)
    assert f(32) < f(64) and f(4096) < f(4096, "full") / 10


# --- ALiBi and soft-capping --------------------------------------------------------------------------

@pytest.mark.parametrize("n_heads", [1, 2, 4, 8, 6, 12])
def test_alibi_bias_matches_the_reference_slopes(n_heads):
    pos, T = alibi(n_heads), 9
    bias = pos.attention_bias(T, torch.device("cpu"))
    assert bias.shape == (n_heads, T, T) and pos.max_length is None
    slopes = reference_get_slopes(n_heads)
    for h in range(n_heads):
        for i in range(T):
            for j in range(i + 1):
                assert bias[h, i, j].item() == pytest.approx(-slopes[h] * (i - j), rel=1e-6, abs=1e-7)
    assert pos.attention_bias(T, torch.device("cpu")) is bias  # cached


def test_full_attention_with_alibi_equals_reference():
    q, k, v = qkv(11, n_kv_heads=2)
    bias = alibi(4).attention_bias(11, q.device)
    out = kernel("full")(q, k, v, bias=bias)
    torch.testing.assert_close(out, reference_softmax(q, k, v, causal(11), bias=bias))
    assert not torch.allclose(out, kernel("full")(q, k, v))


@pytest.mark.parametrize("name", ["full", "sliding_window", "strided"])
def test_softcap_caps_the_scores(name):
    q, k, v = qkv(12, n_kv_heads=2)
    q = q * 4  # large scores, so the cap matters
    capped = kernel(name, window=5, stride=3, softcap=2.0)
    allowed = kernel(name, window=5, stride=3).mask(12, q.device) if name != "full" else causal(12)
    bias = alibi(4).attention_bias(12, q.device)
    for b in (None, bias):
        out = capped(q, k, v, bias=b)
        torch.testing.assert_close(out, reference_softmax(q, k, v, allowed, bias=b, cap=2.0))
        assert not torch.allclose(out, reference_softmax(q, k, v, allowed, bias=b))
        huge = kernel(name, window=5, stride=3, softcap=1e7)(q, k, v, bias=b)
        torch.testing.assert_close(huge, kernel(name, window=5, stride=3)(q, k, v, bias=b), rtol=1e-5, atol=1e-5)


# --- causality of every kernel -------------------------------------------------------------------------

@pytest.mark.parametrize("name,with_alibi,n_kv_heads", [
    (name, with_alibi, n_kv) for name in options("attn") for with_alibi in (False, True) for n_kv in (4, 2)
    if not (with_alibi and name == "linear")])
def test_every_kernel_is_causal(name, with_alibi, n_kv_heads):
    T, t = 21, 9
    attention = kernel(name, window=4, stride=3, chunk_size=4)
    bias = alibi(4).attention_bias(T, torch.device("cpu")) if with_alibi else None
    q, k, v = qkv(T, n_kv_heads=n_kv_heads)
    before = attention(q, k, v, bias=bias)
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, :, t + 1:] = torch.randn_like(x[:, :, t + 1:])
    after = attention(q2, k2, v2, bias=bias)
    torch.testing.assert_close(before[:, :, : t + 1], after[:, :, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, :, t + 1:], after[:, :, t + 1:])


# --- refusals through ablate.config.validate ------------------------------------------------------------------

@pytest.mark.parametrize("overrides,names", [
    (("attn=linear", "pos=alibi"), ("attn=linear", "pos=alibi")),
    (("attn=linear", "softcap=on"), ("attn=linear", "softcap")),
    (("attn=linear", "pos=rope", "softcap=on", "softcap.attn=20.0", "softcap.logits=null"),
     ("attn=linear", "softcap.attn=20.0")),
    (("attn=sliding_window", "attn.window=0"), ("attn.window=0", ">= 1")),
    (("attn=strided", "attn.stride=-2"), ("attn.stride=-2", ">= 1")),
])
def test_clashing_options_and_bad_knobs_are_refused_naming_them(overrides, names):
    with pytest.raises(ConfigError) as error:
        check(compose("model=micro", *overrides))
    for name in names:
        assert name in str(error.value)


@pytest.mark.parametrize("overrides", [("attn=sliding_window", "attn.window=null"), ("attn=strided", "attn.stride=null"),
                                       ("attn=full", "attn.window=8")])
def test_a_missing_or_foreign_window_fails_at_composition(overrides):
    """A window is an int of the options that have one: null, or a window on attn=full, is refused by
    the option's own schema before anything runs."""
    with pytest.raises(HydraException, match="attn"):
        hydra_compose_once("model=micro", *overrides)


# --- the whole model ------------------------------------------------------------------------------------

TRAINABLE = [(a, p) for a, p in itertools.product(options("attn"), options("pos"))
             if not (a == "linear" and p == "alibi")]


@pytest.mark.parametrize("attn,pos", TRAINABLE)
def test_every_attn_and_pos_combination_trains(attn, pos):
    narrower = {"sliding_window": ("attn.window=16",), "strided": ("attn.window=8", "attn.stride=16")}
    cfg = compose("model=micro", f"attn={attn}", f"pos={pos}", "model.n_kv_heads=2", *narrower.get(attn, ()))
    check(cfg)
    torch.manual_seed(0)
    model = Transformer(cfg, VOCAB)
    assert count(cfg, VOCAB)["params_total"] == sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    idx = torch.randint(0, VOCAB, (4, cfg.model.context_length + 1))
    losses = []
    for _ in range(3):
        logits = model(idx[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), idx[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # the same batch three times: it learns
