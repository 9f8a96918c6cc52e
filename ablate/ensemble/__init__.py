"""Seeds (and tuned values) of one configuration trained together as one batched ensemble.

`hydra/launcher=batched` (hydra_plugins/ablate_batched_launcher) groups a sweep's jobs that differ only
in `train.seed` and in `compare.tuned` keys and hands each group to `ablate.ensemble.train_group.train_group`.

    stacked.py   the model with a member dimension: members folded into the batch for attention and
                 element-wise parts, batched matmuls over the members' stacked weights for linear layers
    step.py      one optimizer step and one evaluation of several runs through that model
    train.py     the group's training: every member keeps its own run directory, files and state
"""
