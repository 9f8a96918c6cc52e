"""The assembled model: causality for every option; its counts (read off a meta-device build) against the
real model, exact formulas and torch's FLOP counter."""
from __future__ import annotations

import itertools

import pytest
import torch

from ablate.accounting import count
from ablate.config.validate import ConfigError, check
from ablate.model import Transformer
from components.registry import axes, options
from tests.conftest import compose

VOCAB = 97


def build(*overrides: str) -> Transformer:
    """The micro model with these choices; combinations the validator refuses are skipped."""
    cfg = compose("model=micro", *overrides)
    try:
        check(cfg)
    except ConfigError as error:
        pytest.skip(f"refused combination: {error}")
    torch.manual_seed(0)
    return Transformer(cfg, VOCAB).eval()


@pytest.mark.parametrize("norm_pos,block,pos,attn", list(itertools.product(
    options("norm_pos"), options("block"), options("pos"), options("attn"))))
def test_changing_a_later_token_never_changes_earlier_outputs(norm_pos, block, pos, attn):
    model = build(f"norm_pos={norm_pos}", f"block={block}", f"pos={pos}", f"attn={attn}")
    idx = torch.randint(0, VOCAB, (2, 24))
    t = 11
    changed = idx.clone()
    changed[:, t + 1:] = torch.randint(0, VOCAB, (2, 24 - t - 1))
    with torch.no_grad():
        before, after = model(idx), model(changed)
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, t + 1:], after[:, t + 1:])  # later outputs do see the change


def test_logits_shape_and_tied_head():
    model = build()
    assert model(torch.randint(0, VOCAB, (3, 10))).shape == (3, 10, VOCAB)
    assert model.head.weight is model.embed.weight
    untied = build("model.tie_embeddings=false")
    assert untied.head.weight is not untied.embed.weight


ONE_AT_A_TIME = [(axis, option) for axis in axes("model") for option in options(axis)]


@pytest.mark.parametrize("axis,option", ONE_AT_A_TIME, ids=[f"{a}={o}" for a, o in ONE_AT_A_TIME])
def test_counts_of_the_meta_build_equal_the_real_model(axis, option):
    """Every option, on a plain and on a biased/untied/GQA base (random combinations: test_combinations.py):
    the accounting builds on the meta device; the real model on the CPU must have the same parameters."""
    for base in (("norm=rms",), ("norm=ln", "model.bias=true", "model.tie_embeddings=false", "model.n_kv_heads=2",
                                 "block=parallel", "norm_pos=double")):
        cfg = compose("model=micro", *base, f"{axis}={option}")
        try:
            check(cfg)
        except ConfigError:
            continue
        model = Transformer(cfg, VOCAB)
        counted = sum(p.numel() for p in model.parameters())  # shared (tied) tensors count once
        counts = count(cfg, VOCAB)
        assert counts["params_total"] == counted, base
        tables = model.embed.weight.numel() + sum(p.numel() for p in model.pos.parameters())
        assert counts["params_non_embedding"] == counted - tables
        if axis != "moe" or option == "off":
            assert counts["params_active"] == counted


def test_parameter_count_formula_for_the_default_model():
    """nano: d 128, 4 layers, SwiGLU d_ff 344, RMSNorm gains only, tied head, RoPE (no table)."""
    d, layers, d_ff, vocab = 128, 4, 344, 2048
    per_layer = 4 * d * d + 3 * d * d_ff + 2 * d  # q, k, v, out; gate, up, down; two pre-norms
    counts = count(compose(), vocab)
    assert counts["params_total"] == vocab * d + layers * per_layer + d
    assert counts["params_non_embedding"] == layers * per_layer + d


def test_flops_per_token_formula_for_the_default_model():
    cfg = compose()  # nano: d 128, 4 layers, context 128, SwiGLU d_ff 344, tied
    d, layers, t, d_ff, vocab = 128, 4, 128, 344, 2048
    matmuls = layers * (3 * d * d + d * d + 3 * d * d_ff) + vocab * d
    assert count(cfg, vocab)["flops_per_token"] == 6 * matmuls + 3 * layers * 4 * t * d


def test_fast_compose_agrees_with_hydra():
    from tests.conftest import hydra_compose_once

    overrides = ("model=micro", "norm=ln", "norm_pos=post", "ffn=gelu", "block=parallel", "pos=learned",
                 "model.n_kv_heads=2")
    assert compose(*overrides) == hydra_compose_once(*overrides)
    # but group order matters to Hydra only through the defaults list, so a later group override of a
    # key set by an earlier option must still be applied: the helper keeps non-group keys in Hydra


@pytest.mark.parametrize("overrides", [
    (), ("ffn=gelu",), ("ffn=geglu", "block=parallel"), ("model.n_kv_heads=1",), ("model.n_kv_heads=2", "qk_norm=on"),
    ("model.tie_embeddings=false", "pos=learned", "model.bias=true", "norm=ln"), ("softcap=on", "norm_pos=double"),
])
def test_flops_per_token_matches_torch_flop_counter(overrides):
    """Closed-form forward+backward FLOPs against torch.utils.flop_counter (math SDPA, so scores count)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = compose("model=micro", *overrides)
    model = Transformer(cfg, 256)
    idx = torch.randint(0, 256, (2, cfg.model.context_length))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(idx).float().logsumexp(-1).mean().backward()
    measured = counter.get_total_flops() / idx.numel()
    assert count(cfg, 256)["flops_per_token"] == pytest.approx(measured, rel=0.05)
