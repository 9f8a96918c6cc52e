"""ablate: transformer architecture ablations, one registered component per design choice."""
from __future__ import annotations

__all__ = ["load_run"]


def load_run(run_dir):
    """(model in eval mode, resolved config, tokenizer) of a finished or checkpointed run."""
    from ablate.rundir.checkpoint import load_run as _load_run

    return _load_run(run_dir)
