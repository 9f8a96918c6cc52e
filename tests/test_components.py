"""Each component against its formula or an independent implementation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from components.attention import SelfAttention
from components.counting import n_params
from components.ffn import hidden_size
from components.positional import sinusoid_table
from components.registry import UnknownOption, option, options
from components.shape import ModelConfig


def RMSNorm(dim, eps=1e-5):  # noqa: N802  (the options as their registered classes build them)
    return option("norm", "rms", eps=eps).build(dim)


def ffn(name, d_model, d_ff):
    return option("ffn", name).build(d_model, d_ff)


def block(name, attention, feedforward, placement):
    return option("block", name).build(attention, feedforward, placement)


def self_attention(d_model, n_heads, n_kv_heads):
    m = ModelConfig(d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads)
    return SelfAttention(m, kernel=option("attn", "full").build(m), qk_norm=option("qk_norm", "off").build(m, None))


def no_positions():
    return option("pos", "nope").build(ModelConfig())

torch.manual_seed(0)


def test_registry_lists_options_and_refuses_unknown_names():
    assert {"rms", "ln", "none"} <= set(options("norm"))
    with pytest.raises(UnknownOption, match=r"norm='batch'.*valid choices: ln, none, rms"):
        option("norm", "batch")


def test_rmsnorm_matches_formula():
    x, norm = torch.randn(3, 5, 16), RMSNorm(16, eps=1e-5)
    norm.weight.data = torch.randn(16)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_layernorm_matches_formula_with_bias():
    x, norm = torch.randn(3, 5, 16), option("norm", "ln", eps=1e-5).build(16, bias=True)
    norm.weight.data, norm.bias.data = torch.randn(16), torch.randn(16)
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(norm(x), (x - mean) / torch.sqrt(var + 1e-5) * norm.weight + norm.bias)
    assert option("norm", "none").build(16)(x) is x


def test_ffn_formulas():
    x = torch.randn(2, 3, 8)
    swiglu = ffn("swiglu", 8, 12)
    w, v = swiglu.gate_up.weight[:12], swiglu.gate_up.weight[12:]
    torch.testing.assert_close(swiglu(x), (F.silu(x @ w.T) * (x @ v.T)) @ swiglu.down.weight.T)
    relu, gelu = ffn("relu", 8, 32), ffn("gelu", 8, 32)
    torch.testing.assert_close(relu(x), torch.relu(x @ relu.up.weight.T) @ relu.down.weight.T)
    exact_gelu = lambda z: 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))  # noqa: E731
    torch.testing.assert_close(gelu(x), exact_gelu(x @ gelu.up.weight.T) @ gelu.down.weight.T)


def test_glu_hidden_size_keeps_parameters_equal_to_a_4x_mlp():
    d = 384
    glu = n_params(ffn("swiglu", d, hidden_size(d, 8 / 3, 8)))
    mlp = n_params(ffn("relu", d, hidden_size(d, 4.0, 8)))
    assert hidden_size(d, 8 / 3, 8) == 1024 and glu == mlp
    assert hidden_size(128, 8 / 3, 8) == 344  # 341.3 rounds to the nearest multiple of 8


def test_sinusoid_table_formula():
    table = sinusoid_table(10, 6)
    for p in (0, 3, 9):
        for i in range(3):
            angle = p / 10000 ** (2 * i / 6)
            assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_rope_scores_depend_only_on_the_offset():
    """<R_m q, R_n k> = <R_{m+s} q, R_{n+s} k>: rotate the same q, k at shifted positions."""
    rope, head_dim = option("pos", "rope").build(ModelConfig(d_model=32, n_heads=2, context_length=64)), 16
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(m: int, n: int) -> float:
        qs = torch.zeros(1, 1, 64, head_dim)
        ks = torch.zeros(1, 1, 64, head_dim)
        qs[0, 0, m], ks[0, 0, n] = q, k
        rq, rk = rope.rotate(qs, ks)
        return (rq[0, 0, m] @ rk[0, 0, n]).item()

    for m, n, shift in ((5, 2, 7), (10, 10, 30), (3, 0, 50)):
        assert score(m, n) == pytest.approx(score(m + shift, n + shift), rel=1e-5, abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)  # but it does depend on the offset


def test_rope_extends_beyond_its_table():
    rope = option("pos", "rope").build(ModelConfig(d_model=16, n_heads=2, context_length=4))
    q = torch.randn(1, 1, 10, 8)
    rq, _ = rope.rotate(q, q)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))


def reference_attention(x, attention: SelfAttention) -> torch.Tensor:
    """Plain multi-head causal attention written out with explicit softmax, no SDPA, no einops."""
    b, t, d = x.shape
    h, kvh, hd = attention.n_heads, attention.n_kv_heads, attention.head_dim
    qkv = x @ attention.qkv.weight.T
    q, k, v = qkv[..., :d], qkv[..., d:d + kvh * hd], qkv[..., d + kvh * hd:]
    q = q.view(b, t, h, hd).transpose(1, 2)
    k = k.view(b, t, kvh, hd).transpose(1, 2).repeat_interleave(h // kvh, dim=1)
    v = v.view(b, t, kvh, hd).transpose(1, 2).repeat_interleave(h // kvh, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
    return y @ attention.out.weight.T


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_attention_matches_reference_for_mha_gqa_mqa(n_kv_heads):
    attention = self_attention(32, 4, n_kv_heads)
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(attention(x, no_positions()), reference_attention(x, attention),
                               rtol=1e-5, atol=1e-5)


def test_gqa_with_all_kv_heads_equals_torch_multihead_attention():
    """n_kv_heads == n_heads is plain MHA: compare with torch.nn.MultiheadAttention, same weights."""
    ours = self_attention(32, 4, 4)
    mha = torch.nn.MultiheadAttention(32, 4, bias=False, batch_first=True)
    mha.in_proj_weight.data.copy_(ours.qkv.weight)  # both stack q, k, v along the output dimension
    mha.out_proj.weight.data.copy_(ours.out.weight)
    x = torch.randn(2, 7, 32)
    causal = torch.triu(torch.ones(7, 7, dtype=torch.bool), 1)
    expected, _ = mha(x, x, x, attn_mask=causal, need_weights=False)
    torch.testing.assert_close(ours(x, no_positions()), expected, rtol=1e-5, atol=1e-5)


def make_placement(name, d=8):
    return lambda n_branches: option("norm_pos", name).build(lambda: RMSNorm(d), n_branches)


def test_block_formulas():
    d, x = 8, torch.randn(2, 5, 8)
    f = torch.nn.Linear(d, d)
    g = torch.nn.Linear(d, d)
    attn = lambda h, pos: f(h)  # noqa: E731  (a stand-in sublayer with the attention signature)
    rms = lambda z: F.rms_norm(z, (d,), eps=1e-5)  # noqa: E731  (all gains are 1 at init)

    serial_pre = block("serial", attn, g, make_placement("pre"))
    h = x + f(rms(x))
    torch.testing.assert_close(serial_pre(x, None), h + g(rms(h)))

    serial_post = block("serial", attn, g, make_placement("post"))
    h = rms(x + f(x))
    torch.testing.assert_close(serial_post(x, None), rms(h + g(h)))

    serial_double = block("serial", attn, g, make_placement("double"))
    h = x + rms(f(rms(x)))
    torch.testing.assert_close(serial_double(x, None), h + rms(g(rms(h))))

    parallel_pre = block("parallel", attn, g, make_placement("pre"))
    torch.testing.assert_close(parallel_pre(x, None), x + f(rms(x)) + g(rms(x)))
    assert sum(p.numel() for p in parallel_pre.residual.parameters()) == d  # one shared input norm

    parallel_post = block("parallel", attn, g, make_placement("post"))
    torch.testing.assert_close(parallel_post(x, None), rms(x + f(x) + g(x)))


@pytest.mark.parametrize("name,act,gated", [
    ("geglu", lambda z: F.gelu(z, approximate="tanh"), True),
    ("reglu", torch.relu, True),
    ("relu2", lambda z: torch.relu(z) ** 2, False),
    ("silu", lambda z: z * torch.sigmoid(z), False),
    ("gelu_tanh", lambda z: 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3))), False),
])
def test_more_ffn_formulas(name, act, gated):
    x = torch.randn(2, 3, 8)
    layer = ffn(name, 8, 12)
    if gated:
        w, v = layer.gate_up.weight[:12], layer.gate_up.weight[12:]
        expected = (act(x @ w.T) * (x @ v.T)) @ layer.down.weight.T
    else:
        expected = act(x @ layer.up.weight.T) @ layer.down.weight.T
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_qk_norm_makes_queries_and_keys_unit_rms_per_head():
    m = ModelConfig(d_model=32, n_heads=4, n_kv_heads=2)  # head_dim 8
    qk_norm = option("qk_norm", "on").build(m, make_norm=lambda dim: RMSNorm(dim, eps=1e-8))
    q, k = torch.randn(2, 5, 4, 8) * 7, torch.randn(2, 5, 2, 8) * 0.1  # (batch, time, heads, head_dim)
    q[..., 0, :] *= 100  # one loud head: per-head statistics do not let it drown the others
    nq, nk = qk_norm(q, k)
    torch.testing.assert_close(nq.pow(2).mean(-1), torch.ones(2, 5, 4))
    torch.testing.assert_close(nk.pow(2).mean(-1), torch.ones(2, 5, 2))
    assert option("qk_norm", "off").build(m, None)(q, k) == (q, k)


def test_full_scope_qk_norm_normalizes_the_whole_projection_with_a_gain_per_channel():
    """OLMo 2: RMS over all n_heads x head_dim channels of q (n_kv_heads x head_dim of k), not per head."""
    m = ModelConfig(d_model=32, n_heads=4, n_kv_heads=2)
    qk_norm = option("qk_norm", "on", scope="full").build(m, make_norm=lambda dim: RMSNorm(dim, eps=1e-8))
    assert qk_norm.q_norm.weight.shape == (32,) and qk_norm.k_norm.weight.shape == (16,)
    with torch.no_grad():
        qk_norm.q_norm.weight.copy_(torch.linspace(0.5, 2.0, 32))
    q, k = torch.randn(2, 5, 4, 8), torch.randn(2, 5, 2, 8)
    q[..., 0, :] *= 100
    nq, nk = qk_norm(q, k)
    flat = q.flatten(-2)
    expected = flat / flat.pow(2).mean(-1, keepdim=True).sqrt() * torch.linspace(0.5, 2.0, 32)
    torch.testing.assert_close(nq, expected.unflatten(-1, (4, 8)))
    torch.testing.assert_close(nk.flatten(-2).pow(2).mean(-1), torch.ones(2, 5))
    assert nq[..., 1:, :].abs().max() < 0.25  # the loud head dominates the shared statistics


def test_output_softcap_bounds_logits_and_is_identity_far_below_the_cap():
    from ablate.model import Transformer
    from tests.conftest import compose

    torch.manual_seed(0)
    capped = Transformer(compose("model=micro", "softcap=on", "softcap.logits=2.0", "softcap.attn=null"), 50)
    plain = Transformer(compose("model=micro"), 50)
    plain.load_state_dict(capped.state_dict())
    with torch.no_grad():
        for module in (capped, plain):
            module.head.weight.mul_(200)  # large logits, so the cap binds
        idx = torch.randint(0, 50, (2, 12))
        big_capped, big_plain = capped(idx), plain(idx)
    assert big_capped.abs().max() <= 2.0 and big_plain.abs().max() > 4.0
    torch.testing.assert_close(big_capped, 2.0 * torch.tanh(big_plain / 2.0), rtol=1e-5, atol=1e-5)
    far_below = torch.linspace(-0.01, 0.01, 11)
    torch.testing.assert_close(30.0 * torch.tanh(far_below / 30.0), far_below, rtol=1e-6, atol=1e-9)


def test_z_loss_term_equals_its_formula_and_is_logged_separately():
    from ablate.model import Transformer
    from ablate.training.loop import loss_terms
    from tests.conftest import compose

    model = Transformer(compose("model=micro"), 50)
    logits, targets = torch.randn(2, 7, 50) * 3, torch.randint(0, 50, (2, 7))
    terms = loss_terms(model, option("z_loss", "on", coef=1e-4).build(), logits, targets)
    log_z = torch.log(torch.exp(logits.double()).sum(-1))
    assert terms["z_loss"].item() == pytest.approx(1e-4 * (log_z**2).mean().item(), rel=1e-5)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits.flatten(0, 1), targets.flatten()).item())
    assert "z_loss" not in loss_terms(model, option("z_loss", "off").build(), logits, targets)
