"""Property-based: random combinations of every config group either train or are refused cleanly."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ablate.accounting import count
from ablate.config.validate import ConfigError, check
from ablate.model import Transformer
from ablate.training.loop import loss_terms
from components.knobs import typed
from components.registry import axes
from tests.conftest import ROOT, compose

ARCHITECTURE_GROUPS = axes("model")


def option_files(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@st.composite
def configurations(draw):
    overrides = ["model=micro", "model.context_length=32"]
    overrides += [f"{group}={draw(st.sampled_from(option_files(group)))}" for group in ARCHITECTURE_GROUPS]
    overrides.append(f"model.n_kv_heads={draw(st.sampled_from(['null', 1, 2, 4]))}")
    overrides.append(f"model.tie_embeddings={draw(st.booleans())}".lower())
    overrides.append(f"model.bias={draw(st.booleans())}".lower())
    overrides.append(f"model.dropout={draw(st.sampled_from([0.0, 0.1]))}")
    if draw(st.booleans()):  # sometimes a size that does not divide, or an odd head dimension
        overrides.append(f"model.n_heads={draw(st.sampled_from([3, 8, 16]))}")
    return overrides


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configurations())
def test_every_combination_trains_or_is_refused_with_a_message(overrides):
    cfg = compose(*overrides)
    try:
        check(cfg)
    except ConfigError as error:
        message = str(error)
        assert "=" in message and len(message) > 40, message  # names a key=value and says why
        return
    torch.manual_seed(0)
    vocab = 61
    model = Transformer(cfg, vocab)
    assert count(cfg, vocab)["params_total"] == sum(p.numel() for p in model.parameters())
    idx = torch.randint(0, vocab, (2, cfg.model.context_length + 1))
    logits = model(idx[:, :-1])
    assert logits.shape == (2, cfg.model.context_length, vocab)
    terms = loss_terms(model, typed(cfg).z_loss.build(), logits, idx[:, 1:])
    loss = sum(terms.values())
    loss.backward()
    assert math.isfinite(loss.item())
    for name, param in model.named_parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), name


def test_the_strategy_reaches_both_outcomes():
    """Guard against a generator that only ever produces refusals (or never does)."""
    refused = compose("model=micro", "model.n_heads=3")
    with pytest.raises(ConfigError):
        check(refused)
    check(compose("model=micro"))
