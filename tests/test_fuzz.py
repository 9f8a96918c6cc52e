"""Fuzzing the command line: random override sets, valid and invalid, either train two steps with a
finite loss or are refused with a clean message (Hydra's for composition, ablate's for the rest)."""
from __future__ import annotations

import math

from hydra.errors import HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf.errors import OmegaConfBaseException

from ablate.config.validate import ConfigError
from ablate.data.corpora import DataError
from ablate.training.loop import train
from tests.conftest import TINY, hydra_compose_once

CHOICES = {
    "norm": ["rms", "ln", "none", "batchnorm"],
    "pos": ["rope", "alibi", "learned", "sinusoidal", "nope", "xpos"],
    "attn": ["full", "linear", "sliding_window", "strided"],
    "ffn": ["swiglu", "relu2", "geglu"],
    "moe": ["off", "topk"],
    "model.n_heads": ["1", "2", "3", "4", "0", "-2", "four"],
    "model.n_kv_heads": ["null", "1", "2", "3"],
    "model.context_length": ["16", "32", "0"],
    "train.batch_size": ["4", "6", "0", "abc"],
    "train.grad_accum": ["1", "2", "4"],
    "optim.lr": ["0.001", "-1", "1e-2"],
    "tokenizer.vocab_size": ["300", "256", "100"],
    "attn.window": ["null", "0", "8"],
    "moe.top_k": ["1", "2", "9"],
    "train.no_such_key": ["1"],
}


@st.composite
def override_sets(draw):
    keys = draw(st.lists(st.sampled_from(sorted(CHOICES)), min_size=1, max_size=6, unique=True))
    return [f"{key}={draw(st.sampled_from(CHOICES[key]))}" for key in keys]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(override_sets())
def test_random_overrides_train_or_are_refused_cleanly(tmp_path_factory, overrides):
    run_dir = tmp_path_factory.mktemp("fuzz")
    try:
        cfg = hydra_compose_once(*TINY, "train.max_steps=2", "train.eval_interval=2", "train.sample_tokens=2",
                                 *overrides)
    except (HydraException, OmegaConfBaseException) as error:  # what Hydra prints for the command line
        assert str(error).strip(), overrides
        return
    try:
        summary = train(cfg, run_dir, progress=False)
    except (ConfigError, DataError) as error:
        message = str(error)
        assert "=" in message and len(message) > 30, (overrides, message)
        assert not (run_dir / "metrics.jsonl").exists()  # refused before training
        return
    assert summary["status"] == "completed", (overrides, summary["error"])
    assert summary["steps"] == 2 and math.isfinite(summary["final_val_loss"]), overrides
