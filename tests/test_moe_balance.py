"""moe.balance=bias (DeepSeek-V3's auxiliary-loss-free balancing): the bias picks experts but never
scales them, it balances a skewed router with no loss term and no gradient, the training loop nudges it
after every optimizer step, and it lives in the checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

from ablate.config.validate import ConfigError, check
from ablate.rundir.checkpoint import CHECKPOINT, read_checkpoint
from ablate.training.loop import train
from components.registry import option
from tests.conftest import TINY, compose

D, E = 16, 8


def skewed_moe(balance: str, bias_rate: float = 0.003):
    """8 experts, top-1, whose router sends most tokens of the input distribution below to expert 0."""
    torch.manual_seed(0)
    moe = option("moe", "topk", n_experts=E, top_k=1, granularity=1, balance=balance, bias_rate=bias_rate,
                 aux_loss=0.01, router_z_loss=0.0).build(
        make_ffn=lambda hidden: option("ffn", "swiglu").build(D, hidden, False), d_model=D, d_ff=24)
    with torch.no_grad():
        moe.router.weight.normal_(std=0.3)
        moe.router.weight[0] += 0.3  # expert 0's logit grows with sum(x): the tokens below have a positive mean
    return moe.train()


def tokens(seed: int) -> torch.Tensor:
    return torch.randn(256, D, generator=torch.Generator().manual_seed(seed)) + 0.5


def load_of(moe, x) -> torch.Tensor:
    moe(x)
    return moe.last_diagnostics["expert_load"]


def test_the_bias_balances_a_skewed_router_without_any_loss_or_gradient():
    moe = skewed_moe("bias")
    with torch.no_grad():
        before = load_of(moe.eval(), tokens(999))
    assert before[0] > 0.7  # skewed: one expert takes most tokens (uniform: 1/8)
    moe.train()
    loads = []
    for step in range(400):  # no optimizer, no backward: only the after-step nudge changes anything
        with torch.no_grad():
            moe(tokens(step))
        assert "moe_aux_loss" not in moe.last_aux_losses  # auxiliary-loss-free
        loads.append(moe.last_diagnostics["expert_load"])
        moe.after_optimizer_step()
    recent = torch.stack(loads[-100:]).mean(0)  # the sign rule keeps oscillating by about one bias_rate
    assert recent.max() < 0.15 and recent.min() > 0.10, recent  # 1/8 = 0.125 each
    with torch.no_grad():
        after = load_of(moe.eval(), tokens(999))  # held-out tokens; eval forwards move nothing
    assert after.max() < 0.2, after
    assert moe.expert_bias[0] == moe.expert_bias.min() < 0  # the overloaded expert was made less attractive
    assert torch.equal(moe.load_since_step, torch.zeros(E))


def test_without_the_bias_the_same_router_stays_skewed():
    moe = skewed_moe("aux_loss")
    for step in range(50):
        with torch.no_grad():
            moe(tokens(step))
        moe.after_optimizer_step()  # aux_loss balancing has nothing to do between steps
    assert "expert_bias" not in dict(moe.named_buffers())
    with torch.no_grad():
        assert load_of(moe.eval(), tokens(999))[0] > 0.5


def test_the_bias_chooses_the_experts_and_the_gates_stay_softmax_over_their_logits():
    moe = skewed_moe("bias").eval()
    with torch.no_grad():
        moe.expert_bias.copy_(torch.linspace(-0.3, 0.3, E))
        x = tokens(5)[:32]
        logits = x @ moe.router.weight.T
        gates, chosen = moe.route(logits)
        expected = (torch.softmax(logits, -1) + moe.expert_bias).argmax(-1)
        assert torch.equal(chosen[:, 0], expected)
        assert torch.allclose(gates, torch.ones_like(gates))  # top-1: softmax over one logit, whatever the bias
        y = moe(x)
        reference = torch.stack([moe.experts[int(e)](t[None])[0] for t, e in zip(x, expected)])
        torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-5)


def test_the_training_loop_nudges_the_bias_and_the_checkpoint_carries_it(tmp_path):
    rate = 0.01
    cfg = compose(*TINY, "moe=topk", "moe.balance=bias", f"moe.bias_rate={rate}", "train.max_steps=3",
                  "train.eval_interval=3", "train.log_interval=1", "schedule.warmup_steps=1")
    assert train(cfg, tmp_path, progress=False)["status"] == "completed"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("moe_aux_loss" not in row for row in rows) and rows[-1]["moe_router_z_loss"] > 0
    state = read_checkpoint(tmp_path / CHECKPOINT)["model"]
    biases = [value for key, value in state.items() if key.endswith("mlp.expert_bias")]
    assert len(biases) == cfg.model.n_layers
    for bias in biases:  # 3 steps of +-rate (or 0 for an expert exactly at the mean load)
        steps = bias / rate
        assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 3 and bias.abs().sum() > 0
    assert not any(key.endswith("load_since_step") for key in state)  # zero between steps: not saved
    # the last row logs the bias its forward routed with and that forward's load; the step then nudged it
    logged_bias, load = (torch.tensor(rows[-1][f"{k}/blocks.0.mlp"]) for k in ("expert_bias", "expert_load"))
    torch.testing.assert_close(biases[0], logged_bias + rate * torch.sign(load.mean() - load))


@pytest.mark.parametrize("override,needle", [("moe.balance=loss_free", "moe.balance='loss_free'"),
                                             ("moe.bias_rate=0", "moe.bias_rate=0")])
def test_bad_balance_settings_are_refused(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("'", "'?")):
        check(compose("model=micro", "moe=topk", override))
