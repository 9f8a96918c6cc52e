"""Options train as their sources train them (issue: a handicapped option loses for the wrong reason)."""
from __future__ import annotations

import pytest
import torch

from ablate.config.validate import ConfigError, check
from ablate.model import Transformer
from components.positional import sinusoid_table
from tests.conftest import compose


def test_sinusoidal_scales_token_embeddings_by_sqrt_d_model_as_vaswani():
    cfg = compose("model=micro", "pos=sinusoidal")
    model = Transformer(cfg, 300)
    idx = torch.randint(0, 300, (2, 10))
    tokens = model.embed(idx)
    expected = tokens * cfg.model.d_model ** 0.5 + sinusoid_table(cfg.model.context_length, cfg.model.d_model)[:10]
    assert torch.allclose(model.pos.embed(tokens), expected)
    # The two signals are now of comparable size at initialization (unscaled: ~50x apart).
    ratio = (tokens * cfg.model.d_model ** 0.5).std() / sinusoid_table(10, cfg.model.d_model).std()
    assert 0.1 < ratio < 1.0


def test_sinusoidal_refuses_a_second_embedding_scale():
    with pytest.raises(ConfigError, match="model.scale_embeddings=true would scale them twice"):
        check(compose("pos=sinusoidal", "model.scale_embeddings=true"))


def test_learned_positions_start_at_the_token_embeddings_scale():
    # GPT-2 / nanoGPT: both tables N(0, 0.02), no scaling; ours does the same, so no handicap to fix.
    model = Transformer(compose("model=micro", "pos=learned"), 300)
    assert model.pos.weight.std().item() == pytest.approx(model.embed.weight.std().item(), rel=0.1)
