"""attn=local_global: block i attends to the whole causal context when (i + 1) % global_every == 0 and to
a window otherwise; each layer is counted as what it computes; impossible patterns are refused."""
from __future__ import annotations

import pytest
import torch

from ablate.accounting import count
from ablate.config.validate import ConfigError, check
from ablate.model import Transformer
from components.attention import FullCausalAttention, SlidingWindowAttention
from components.counting import score_flops
from tests.conftest import compose

VOCAB, T = 50, 24


def attended(kernel, T: int) -> torch.Tensor:
    """(T, T) boolean: which key positions j the output at position i depends on, found by perturbing v_j."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, T, 8, generator=gen) for _ in range(3))
    base = kernel(q, k, v)
    seen = torch.zeros(T, T, dtype=torch.bool)
    for j in range(T):
        moved = v.clone()
        moved[:, :, j] += 1.0
        seen[:, j] = (kernel(q, k, moved) - base).abs().amax(dim=(0, 1, 3)) > 1e-6
    return seen


@pytest.mark.parametrize("n_layers,every,window", [(4, 2, 5), (6, 6, 3), (5, 3, 7), (3, 1, 4)])
def test_layer_i_attends_exactly_as_the_pattern_says(n_layers, every, window):
    cfg = compose("model=micro", f"model.n_layers={n_layers}", "attn=local_global", f"attn.window={window}",
                  f"attn.global_every={every}", f"model.context_length={T}")
    check(cfg)
    model = Transformer(cfg, VOCAB).eval()
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    for layer, block in enumerate(model.blocks):
        is_global = (layer + 1) % every == 0  # Gemma 2 (every 2): layers 1, 3, ...; Gemma 3 (every 6): 5, 11, ...
        expected = (j <= i) & (is_global | (i - j < window))
        with torch.no_grad():
            assert torch.equal(attended(block.attn.kernel, T), expected), f"layer {layer}"
        assert type(block.attn.kernel) is (FullCausalAttention if is_global else SlidingWindowAttention)


def test_score_flops_are_counted_layer_by_layer():
    d, window = 64, 5
    cfg = compose("model=micro", "model.n_layers=6", "attn=local_global", f"attn.window={window}",
                  "attn.global_every=3", f"model.context_length={T}")
    model = Transformer(cfg, VOCAB)
    per_layer = [score_flops(block) for block in model.blocks]
    assert per_layer == [4 * (T if (i + 1) % 3 == 0 else window) * d for i in range(6)]  # 2 matmuls x 2 FLOPs
    full = compose("model=micro", "model.n_layers=6", f"model.context_length={T}")
    sliding = compose("model=micro", "model.n_layers=6", "attn=sliding_window", f"attn.window={window}",
                      f"model.context_length={T}")
    counts = [count(c, VOCAB)["flops_per_token"] for c in (cfg, full, sliding)]
    # flops_per_token = 6 x matmul weights + 3 x score FLOPs: the weights are the same in all three
    assert counts[0] - counts[2] == 3 * 2 * 4 * (T - window) * d  # two of six layers are global
    assert counts[1] - counts[0] == 3 * 4 * 4 * (T - window) * d  # four of six are local


@pytest.mark.parametrize("overrides,words", [
    (("model.n_layers=4", "attn.global_every=6"), ("attn.global_every=6", "model.n_layers=4", "no layer would be global")),
    (("attn.global_every=0",), ("attn.global_every=0", ">= 1")),
    (("attn.window=0",), ("attn.window=0", ">= 1")),
])
def test_impossible_patterns_are_refused_naming_the_keys(overrides, words):
    with pytest.raises(ConfigError) as error:
        check(compose("model=micro", "attn=local_global", *overrides))
    for word in words:
        assert word in str(error.value)


def test_the_gemma2_preset_alternates_local_and_global_layers():
    cfg = compose("+experiment=gemma2", "model=micro", "model.n_layers=4")
    assert (cfg.attn.name, cfg.attn.window, cfg.attn.global_every) == ("local_global", 4096, 2)
    kernels = [type(block.attn.kernel) for block in Transformer(cfg, VOCAB).blocks]
    assert kernels == [SlidingWindowAttention, FullCausalAttention] * 2
