"""One optimizer step and one evaluation of several runs at once, through the stacked model.

Each run (ablate.training.state.Run) keeps everything that makes it itself: its model's parameters, optimizer,
schedule, data order (its own numpy generator draws its batches), gradient clipping and counters. Per step
`Ensemble.train_step` asks each selected run for its learning rate and batches (`begin_step`,
`micro_batches`), folds the batches into one, runs one forward and one backward through the stacked model,
and lets each run clip and step on its own gradients (`end_step`). Each member's loss terms are its own
objective on its own rows, so the sum's gradient with respect to a member's weights is exactly that of its
loss: the members share kernel launches, not numbers.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ablate.ensemble.stacked import EnsembleModel
from ablate.training.state import Run, add_terms, lm_loss, loss_terms


class Ensemble:
    """Runs of one architecture, trained and evaluated together (members are indices into `runs`)."""

    def __init__(self, runs: Sequence[Run]):
        self.runs = list(runs)
        first = self.runs[0]
        precisions = {run.precision.name for run in self.runs}
        if len(precisions) > 1:
            raise ValueError(f"the members of a batched ensemble compute in one dtype, these in {sorted(precisions)}")
        if any(not all(np.array_equal(a, b) for a, b in zip(run.eval_starts, first.eval_starts, strict=True))
               for run in self.runs):
            raise ValueError("the members of a batched ensemble must evaluate on the same validation windows")
        self.model = EnsembleModel([run.raw_model for run in self.runs])
        self.autocast = first.autocast

    def train_step(self, members: Sequence[int]) -> list[tuple[dict[str, float], float]]:
        """One optimizer step of each selected member; returns each one's mean loss terms and gradient norm
        before clipping, as `Run.train_step` does for a run of its own."""
        runs = [self.runs[i] for i in members]
        accum = runs[0].cfg.train.grad_accum
        for run in runs:
            run.begin_step()
        batches = [run.micro_batches() for run in runs]
        totals: list[dict[str, float]] = [{} for _ in runs]
        for index in range(accum):
            x = torch.cat([own[index][0] for own in batches])  # member i's rows follow member i - 1's
            targets = [own[index][1] for own in batches]
            with self.autocast():
                logits = self.model(x, members).split([len(y) for y in targets])
                terms = [loss_terms(run.raw_model, run.objective, own, y)
                         for run, own, y in zip(runs, logits, targets)]
            objective = sum(sum(own.values()) for own in terms)  # d/d(member i's weights) = d(member i's loss)
            (objective / accum).backward()
            for total, own in zip(totals, terms):
                add_terms(total, own, accum)
        return [(total, run.end_step()) for run, total in zip(runs, totals)]

    @torch.no_grad()
    def evaluate(self, members: Sequence[int]) -> list[float]:
        """Each selected member's mean loss over the fixed validation windows (`Run.evaluate`)."""
        first = self.runs[members[0]]
        self.model.eval()
        losses: list[list[float]] = [[] for _ in members]
        for starts in first.eval_starts:
            x, y = (first.to_device(a) for a in first.corpus.windows("val", starts, first.cfg.model.context_length))
            with self.autocast():
                logits = self.model(x.repeat(len(members), 1), members).split(len(x))
                for own, member_logits in zip(losses, logits):
                    own.append(lm_loss(member_logits, y).item())
        self.model.train()
        return [float(np.mean(own)) for own in losses]
