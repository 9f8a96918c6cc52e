"""The premise of the report's paired test: two runs with the same train.seed see the same batches
in the same order and are evaluated on the same windows, whatever option and learning rate they use
(analysis/verdict.py pairs runs by seed on this ground)."""
from __future__ import annotations

import numpy as np
import torch

from ablate.data.corpora import prepare
from ablate.training.loop import Run
from tests.conftest import TINY, compose


def drawn_batches(tmp_path, *overrides: str, steps: int = 3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training window starts of the first `steps` steps, evaluation window starts) of a run."""
    cfg = compose(*TINY, "train.max_steps=3", *overrides)
    corpus = prepare(cfg)
    torch.manual_seed(cfg.train.seed)
    run = Run(cfg, tmp_path, corpus, torch.device("cpu"))
    drawn: list[np.ndarray] = []
    original = corpus.random_starts

    def recording(split, count, context, rng):
        starts = original(split, count, context, rng)
        if split == "train":
            drawn.append(starts.copy())
        return starts

    corpus.random_starts = recording
    for _ in range(steps):
        run.train_step()
    run.evaluate()
    return drawn, [s.copy() for s in run.eval_starts]


def test_same_seed_same_batches_and_windows_across_options_and_rates(tmp_path):
    base_train, base_eval = drawn_batches(tmp_path / "a", "train.seed=3")
    for overrides in (("norm=ln", "pos=learned", "optim.lr=1e-2"), ("ffn=gelu", "model.dropout=0.1"),
                      ("moe=topk",)):
        train, evaluation = drawn_batches(tmp_path / overrides[0], "train.seed=3", *overrides)
        assert all(np.array_equal(a, b) for a, b in zip(train, base_train)), overrides
        assert all(np.array_equal(a, b) for a, b in zip(evaluation, base_eval)), overrides
    other_train, other_eval = drawn_batches(tmp_path / "b", "train.seed=4")
    assert not np.array_equal(other_train[0], base_train[0])  # the seed does choose the order
    assert all(np.array_equal(a, b) for a, b in zip(other_eval, base_eval))  # windows never depend on it


def initial_weights(*overrides: str, seed: int = 3) -> dict[str, torch.Tensor]:
    from ablate.model import Transformer

    cfg = compose(*TINY, f"train.seed={seed}", *overrides)
    torch.manual_seed(seed)  # as the training loop seeds before it builds the model
    return {k: v.clone() for k, v in Transformer(cfg, 400).state_dict().items()}


def test_weights_two_variants_share_start_equal_and_only_those(tmp_path):
    """model.init_by_name: each weight's draw depends on the seed and its name alone, so a resized or extra
    matrix (a GLU's, learned positions) leaves every other weight as the baseline's; one stream would not."""
    base = initial_weights()
    for overrides in (("ffn=gelu",), ("pos=learned",), ("norm=ln", "model.bias=true")):
        other = initial_weights(*overrides)
        shared = [k for k in base if k in other and base[k].shape == other[k].shape]
        assert [k for k in shared if not torch.equal(base[k], other[k])] == [], overrides
        assert len(shared) >= len(base) // 2, overrides
    stream, stream_gelu = initial_weights("model.init_by_name=false"), initial_weights("model.init_by_name=false", "ffn=gelu")
    late = [k for k in stream if k.startswith("blocks.1.") and k in stream_gelu and stream[k].shape == stream_gelu[k].shape
            and k.endswith("weight") and stream[k].dim() == 2]
    assert late and not any(torch.equal(stream[k], stream_gelu[k]) for k in late)  # one stream: shifted by layer 0's MLP
    again, reseeded = initial_weights(), initial_weights(seed=4)
    assert all(torch.equal(base[k], again[k]) for k in base)  # reproducible
    assert not torch.equal(base["blocks.0.attn.qkv.weight"], reseeded["blocks.0.attn.qkv.weight"])  # the seed matters
    drawn = torch.cat([v.flatten() for k, v in base.items() if k.endswith(("qkv.weight", "embed.weight"))])
    assert abs(drawn.std().item() - 0.02) < 0.001 and abs(drawn.mean().item()) < 0.001  # still N(0, init_std)
