"""moe=topk: routing, dispatch against a per-token reference, accounting, losses, diagnostics, training."""
from __future__ import annotations

import json
import math

import pytest
import torch

from ablate.accounting import count
from ablate.config.validate import ConfigError, check
from ablate.model import Transformer
from ablate.training.loop import loss_terms, train
from components.counting import inactive_params, matmul_weights, n_params
from components.ffn import hidden_size
from components.moe import TopKMoE
from components.registry import option
from tests.conftest import TINY, compose

VOCAB = 97
D = 16


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread avoids OpenMP overhead (10x faster on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_moe(n_experts=4, top_k=2, granularity=1, n_shared=0, ffn="swiglu", bias=False, d_ff=24,
             aux_loss=0.01, router_z_loss=0.001, seed=0) -> TopKMoE:
    torch.manual_seed(seed)
    settings = dict(n_experts=n_experts, top_k=top_k, n_shared=n_shared, granularity=granularity,
                    aux_loss=aux_loss, router_z_loss=router_z_loss)
    moe = option("moe", "topk", **settings).build(make_ffn=lambda hidden: option("ffn", ffn).build(D, hidden, bias),
                                                  d_model=D, d_ff=d_ff)
    for p in moe.parameters():  # O(1) weights, so a wrong expert or gate shows up far above tolerance
        torch.nn.init.normal_(p, std=0.5)
    return moe


def reference(moe: TopKMoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token: top-k logits, softmax over them, sum of gate * expert(x) plus shared experts."""
    flat = x.reshape(-1, x.shape[-1])
    rows = []
    for token in flat:
        logits = token @ moe.router.weight.T
        order = sorted(range(len(logits)), key=lambda e: -logits[e].item())[: moe.k]
        gates = torch.softmax(logits[order], dim=0)
        out = sum(g * moe.experts[e](token[None])[0] for g, e in zip(gates, order))
        out = out + sum((shared(token[None])[0] for shared in moe.shared), torch.zeros(x.shape[-1]))
        rows.append(out)
    return torch.stack(rows).reshape(x.shape)


CONFIGS = [  # (n_experts, top_k, granularity, n_shared, ffn, bias)
    (4, 1, 1, 0, "swiglu", False),
    (4, 2, 1, 0, "gelu", False),
    (4, 2, 2, 0, "swiglu", False),
    (4, 1, 2, 1, "swiglu", True),
    (3, 2, 1, 1, "relu", True),
    (5, 5, 1, 2, "geglu", False),  # every expert for every token
]


@pytest.mark.parametrize("n_experts,top_k,granularity,n_shared,ffn,bias", CONFIGS)
def test_output_equals_per_token_reference_and_gradients_reach_router_and_experts(
        n_experts, top_k, granularity, n_shared, ffn, bias):
    moe = make_moe(n_experts, top_k, granularity, n_shared, ffn, bias, aux_loss=0.0, router_z_loss=0.0)
    x = torch.randn(2, 7, D, requires_grad=True)
    y = moe(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, reference(moe, x), rtol=1e-5, atol=1e-5)
    assert moe.last_aux_losses == {}  # zero coefficients: no terms
    y.square().sum().backward()  # no aux losses: the router learns through the gate weights alone...
    # ...unless a token has one expert: Mixtral's softmax over a single chosen logit is the constant 1
    assert (moe.router.weight.grad.abs().sum() > 0) == (top_k * granularity > 1)
    used = set(moe.route(moe.router(x.detach().reshape(-1, D)))[1].flatten().tolist())
    for e, expert in enumerate(moe.experts):
        grads = [p.grad for p in expert.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert (sum(g.abs().sum() for g in grads) > 0) == (e in used), e
    for shared in moe.shared:
        assert all(p.grad.abs().sum() > 0 for p in shared.parameters())
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("top_k,granularity", [(1, 1), (2, 1), (1, 2), (2, 3)])
def test_each_token_gets_top_k_times_granularity_experts_with_softmax_gates(top_k, granularity):
    moe = make_moe(n_experts=4, top_k=top_k, granularity=granularity)
    x = torch.randn(3, 10, D)
    n_tokens, k = 30, top_k * granularity
    seen = []
    hooks = [expert.register_forward_hook(lambda mod, args, out, e=e: seen.append((e, args[0].detach())))
             for e, expert in enumerate(moe.experts)]
    moe(x)
    for hook in hooks:
        hook.remove()
    logits = moe.router(x.reshape(-1, D))
    gates, chosen = moe.route(logits)
    assert chosen.shape == gates.shape == (n_tokens, k)
    assert all(len(set(row.tolist())) == k for row in chosen)  # k distinct experts per token
    chosen_logits = logits.gather(1, chosen)
    others = logits.scatter(1, chosen, float("-inf"))
    assert (chosen_logits.min(1).values >= others.max(1).values).all()  # the argmax-k of the logits
    torch.testing.assert_close(gates, torch.softmax(chosen_logits, dim=-1))
    torch.testing.assert_close(gates.sum(-1), torch.ones(n_tokens))
    probs = torch.softmax(logits, -1)  # = the full softmax renormalized over the chosen experts
    torch.testing.assert_close(gates, probs.gather(1, chosen) / probs.gather(1, chosen).sum(-1, keepdim=True))
    # dispatch: each expert saw exactly the tokens routed to it, and every token was processed k times
    flat = x.reshape(-1, D)
    times = torch.zeros(n_tokens, dtype=torch.long)
    for e, inputs in seen:
        routed = (chosen == e).any(1).nonzero().flatten()
        match = (inputs[:, None, :] == flat[None, :, :]).all(-1)  # (rows seen, tokens)
        assert match.sum(1).eq(1).all()
        assert sorted(match.float().argmax(1).tolist()) == routed.tolist(), e
        times += match.sum(0)
    assert (times == k).all()


def test_expert_load_sums_to_one_and_matches_bincount():
    moe = make_moe(n_experts=4, top_k=2, granularity=2)
    x = torch.randn(4, 9, D)
    moe(x)
    load = moe.last_diagnostics["expert_load"]
    _, chosen = moe.route(moe.router(x.reshape(-1, D)))
    assert load.shape == (8,)
    torch.testing.assert_close(load.sum(), torch.tensor(1.0))
    torch.testing.assert_close(load, torch.bincount(chosen.flatten(), minlength=8).float() / chosen.numel())


def one_hot_router(moe: TopKMoE) -> None:
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:, : moe.n_routed] = 5 * torch.eye(moe.n_routed)


@pytest.mark.parametrize("top_k", [1, 2])
def test_load_balancing_loss_is_aux_loss_for_uniform_routing_and_larger_when_skewed(top_k):
    moe = make_moe(n_experts=4, top_k=top_k, aux_loss=0.05, router_z_loss=0.0)
    one_hot_router(moe)
    eye = torch.eye(D)
    # uniform: k=1 -> each expert is the top-1 of 2 tokens; k=2 -> tokens pick {0,1} or {2,3}, 2 of each
    uniform = (eye[[0, 1, 2, 3, 0, 1, 2, 3]] if top_k == 1 else
               (eye[[0, 2, 0, 2]] + eye[[1, 3, 1, 3]]) + 0.1 * eye[[1, 3, 0, 2]])
    moe(uniform)
    torch.testing.assert_close(moe.last_diagnostics["expert_load"], torch.full((4,), 0.25))
    torch.testing.assert_close(moe.last_aux_losses["moe_aux_loss"], torch.tensor(0.05))
    assert "moe_router_z_loss" not in moe.last_aux_losses
    skewed = eye[[0] * 7 + [1]] + (eye[[1] * 8] if top_k == 2 else 0)  # expert 0 (and 1) get everything
    moe(skewed)
    logits = skewed @ moe.router.weight.T
    load = torch.bincount(moe.route(logits)[1].flatten(), minlength=4).float() / (8 * top_k)
    expected = 0.05 * 4 * (load * torch.softmax(logits, -1).mean(0)).sum()
    torch.testing.assert_close(moe.last_aux_losses["moe_aux_loss"], expected)
    assert moe.last_aux_losses["moe_aux_loss"] > 0.05 * 1.5


def test_router_z_loss_equals_its_formula():
    moe = make_moe(n_experts=4, top_k=2, granularity=2, aux_loss=0.0, router_z_loss=0.003)
    x = torch.randn(2, 5, D)
    moe(x)
    logits = x.reshape(-1, D) @ moe.router.weight.T
    assert set(moe.last_aux_losses) == {"moe_router_z_loss"}
    torch.testing.assert_close(moe.last_aux_losses["moe_router_z_loss"],
                               0.003 * torch.logsumexp(logits, -1).square().mean())


def test_granularity_keeps_active_and_total_expert_parameters_equal():
    d, d_ff = 64, 168

    def moe(granularity):
        return option("moe", "topk", n_experts=4, top_k=1, granularity=granularity).build(
            make_ffn=lambda hidden: option("ffn", "swiglu").build(d, hidden), d_model=d, d_ff=d_ff)

    coarse, fine = moe(1), moe(2)
    total = [n_params(m) for m in (coarse, fine)]
    active = [n_params(m) - inactive_params(m) for m in (coarse, fine)]
    routers = d * 4, d * 8  # the router is the only difference: it scores m * n_experts experts
    assert (total[0] - routers[0], active[0] - routers[0]) == (total[1] - routers[1], active[1] - routers[1])
    assert active[0] - routers[0] == 3 * d * d_ff  # active = one dense SwiGLU expert
    assert matmul_weights(fine) - routers[1] == matmul_weights(coarse) - routers[0] == 3 * d * d_ff


@pytest.mark.parametrize("n_experts,top_k,granularity,n_shared,ffn,bias", CONFIGS)
def test_active_parameters_are_the_router_and_the_chosen_experts(n_experts, top_k, granularity, n_shared, ffn, bias):
    moe = make_moe(n_experts, top_k, granularity, n_shared, ffn, bias)
    total, active = n_params(moe), n_params(moe) - inactive_params(moe)
    assert total == moe.router.weight.numel() + (n_experts * granularity + n_shared) * n_params(moe.experts[0])
    per_expert = sum(p.numel() for p in moe.experts[0].parameters())
    assert active == moe.router.weight.numel() + (top_k * granularity + n_shared) * per_expert
    assert (active < total) == (top_k < n_experts)


@pytest.mark.parametrize("extra", [(), ("moe.granularity=2", "moe.n_shared=1"),
                                   ("model.bias=true", "model.tie_embeddings=false", "block=parallel",
                                    "norm_pos=double", "ffn=gelu", "moe.top_k=1")])
def test_whole_model_accounting_with_moe(extra):
    cfg = compose("model=micro", "moe=topk", *extra)
    model = Transformer(cfg, VOCAB)
    closed = count(cfg, VOCAB)
    assert closed["params_total"] == sum(p.numel() for p in model.parameters())
    assert closed["params_active"] < closed["params_total"]
    m = cfg.moe
    expert = sum(p.numel() for p in model.blocks[0].mlp.experts[0].parameters())
    idle = m.granularity * (m.n_experts - m.top_k) * expert
    assert closed["params_total"] - closed["params_active"] == cfg.model.n_layers * idle


def test_flops_of_fine_grained_top1_moe_exceed_dense_by_the_router_only():
    dense = count(compose("model=micro"), VOCAB)
    moe = count(compose("model=micro", "moe=topk", "moe.n_experts=8", "moe.top_k=1", "moe.granularity=2"), VOCAB)
    assert moe["flops_per_token"] - dense["flops_per_token"] == 6 * 2 * 64 * (8 * 2)  # layers x d x E


def test_model_collects_expert_load_per_layer_and_both_losses():
    cfg = compose("model=micro", "moe=topk", "model.n_layers=3")
    torch.manual_seed(0)
    model = Transformer(cfg, VOCAB)
    model(torch.randint(0, VOCAB, (2, 16)))
    diagnostics = model.diagnostics()
    assert sorted(diagnostics) == [f"expert_load/blocks.{i}.mlp" for i in range(3)]
    for load in diagnostics.values():
        assert len(load) == 8 and math.isclose(sum(load), 1.0, rel_tol=1e-6)
    losses = model.auxiliary_losses()
    assert set(losses) == {"moe_aux_loss", "moe_router_z_loss"}
    for name, value in losses.items():
        torch.testing.assert_close(value, sum(block.mlp.last_aux_losses[name] for block in model.blocks))
    assert losses["moe_aux_loss"] >= 3 * 0.01 * 0.95  # E * sum f P >= ~1 per layer near uniform probabilities


@pytest.mark.parametrize("extra", [(), ("block=parallel", "norm_pos=double", "moe.granularity=2", "moe.n_shared=1")])
def test_training_steps_give_finite_loss_and_grads_and_fit_a_batch(extra):
    cfg = compose("model=micro", "moe=topk", *extra)
    check(cfg)
    torch.manual_seed(0)
    model = Transformer(cfg, VOCAB)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, VOCAB, (2, 33))
    ces = []
    for _ in range(5):
        optimizer.zero_grad()
        terms = loss_terms(model, option("z_loss", "off").build(), model(idx[:, :-1]), idx[:, 1:])
        assert {"ce", "moe_aux_loss", "moe_router_z_loss"} <= set(terms)
        loss = sum(terms.values())
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        assert model.blocks[0].mlp.router.weight.grad.abs().sum() > 0
        optimizer.step()
        ces.append(terms["ce"].item())
    assert ces[-1] < ces[0] - 0.5


def test_a_training_run_logs_moe_losses_and_expert_load(tmp_path):
    cfg = compose(*(o for o in TINY if not o.startswith("tokenizer.")), "tokenizer=byte", "moe=topk", "train.max_steps=3",
                  "train.eval_interval=3", "train.log_interval=1", "schedule.warmup_steps=1")
    summary = train(cfg, tmp_path, progress=False)
    assert summary["status"] == "completed"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["step"] == 0  # the step-0 evaluation, then 3 training steps
    for row in rows[1:]:
        assert row["moe_aux_loss"] > 0 and row["moe_router_z_loss"] > 0
        for i in range(cfg.model.n_layers):
            assert math.isclose(sum(row[f"expert_load/blocks.{i}.mlp"]), 1.0, rel_tol=1e-6)
    assert summary["params_active"] < summary["params_total"]


@pytest.mark.parametrize("override,needle", [
    ("moe.top_k=9", "moe.top_k=9"),
    ("moe.top_k=0", "moe.top_k=0"),
    ("moe.granularity=5", "moe.granularity=5 does not divide"),
    ("moe.granularity=0", "moe.granularity=0"),
    ("moe.n_shared=-1", "moe.n_shared=-1"),
    ("moe.aux_loss=-0.1", "moe.aux_loss=-0.1"),
    ("moe.router_z_loss=-1", "moe.router_z_loss=-1"),
])
def test_bad_moe_configs_are_refused(override, needle):
    cfg = compose("model=micro", "moe=topk", override)
    with pytest.raises(ConfigError) as error:
        check(cfg)
    message = str(error.value)
    assert needle in message and "\n" not in message and ("llowed" in message or "must be" in message)
    if "granularity=5" in override:
        d_ff = hidden_size(64, cfg.ffn.d_ff_ratio, cfg.ffn.multiple_of)
        assert f"d_ff={d_ff}" in message and "[1, 2, 3, 4, 6, 7, 8" in message


def test_good_moe_configs_pass_validation_and_the_module_refuses_bad_sizes():
    check(compose("model=micro", "moe=topk", "moe.n_experts=8", "moe.granularity=4", "moe.top_k=8", "moe.n_shared=2",
                  "moe.aux_loss=0", "moe.router_z_loss=0"))
    with pytest.raises(ValueError, match="granularity=5"):
        make_moe(granularity=5, d_ff=24)


def test_gate_weights_are_float32_under_bf16_autocast():
    moe = make_moe(n_experts=4, top_k=2)
    x = torch.randn(2, 6, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = moe(x)
        gates, _ = moe.route(moe.router(x.reshape(-1, D)))
    assert gates.dtype == torch.float32 and torch.isfinite(y).all()
    assert moe.last_aux_losses["moe_aux_loss"].dtype == torch.float32
    torch.testing.assert_close(y.float(), moe(x), rtol=0.1, atol=0.5)
