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
