"""Checkpoints: written atomically, read back without running code, and `load_run(RUN_DIR)`.

A checkpoint holds only tensors, numbers, strings and plain containers (the RNG states as a tensor
and as numpy's plain-int state), so it is loaded with `torch.load(weights_only=True)`: a file that
would need to run code to load (a malicious pickle, or a checkpoint of an older ablate that pickled
objects) is refused naming the file, and nothing in it runs. What a run directory may be used for
(fresh, resume, skip, refuse) is decided in `ablate.rundir.plan.plan_run_dir`.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ablate.config.schema import structured
from ablate.errors import ConfigError
from ablate.rundir.files import atomic_output
from components.registry import AXES

# What a checkpoint's weights and data position depend on: the model's shape and every axis that
# shapes a checkpoint; everything else (steps, eval cadence, optimizer settings, logging) may change
# when a run is resumed, e.g. to train it longer.
ARCHITECTURE_KEYS = ("model", *(name for name, axis in AXES.items() if axis.shapes_checkpoint))
CHECKPOINT = Path("checkpoints") / "latest.pt"
TRUNK = Path("checkpoints") / "trunk.pt"  # train.save_trunk: the state where a wsd decay began
FORMAT = "ablate-checkpoint/2"  # 2: plain data only (weights_only), with the data's fingerprints
REQUIRED = ("model", "optimizer", "step", "tokens_seen", "best_val_loss", "initial_loss", "rng", "torch_rng",
            "config", "vocab_size", "seed", "corpus_fingerprint", "tokenizer_fingerprint")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be trusted: damaged, foreign, or needing code to load."""


def write_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Save `state` (plain data) to `path` atomically: the previous checkpoint stays intact until the new
    one is complete, and a full disk leaves no temporary file (raised as files.DiskFull)."""
    with atomic_output(path) as handle:  # torch writes through Python's file, so ENOSPC surfaces as OSError
        torch.save({"format": FORMAT, **state}, handle)


def read_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint at `path`, loaded without executing anything from the file; CheckpointError otherwise."""
    path = Path(path)
    damaged = ("It was left as it is; move it away to start this run again from scratch, or train into a new "
               "hydra.run.dir.")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
            warnings.simplefilter("ignore")
            # mmap on CPU: checking a run directory does not copy the weights into memory
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=map_location == "cpu")
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines()]
        detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0])[:200]
        if "GLOBAL" not in detail:
            raise CheckpointError(f"{path} is damaged or not a checkpoint of ablate ({detail}). {damaged}") from None
        raise CheckpointError(
            f"refused to load {path}: it is not plain data, and loading it would run code stored in the file "
            f"({detail}). Nothing from it was executed. ablate writes checkpoints of tensors and numbers only; "
            f"if this one comes from an older ablate, train the run again; if you do not know where it comes "
            f"from, delete it.") from None
    except (RuntimeError, EOFError, ValueError, IsADirectoryError, PermissionError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__ + ": the file ends early"])[0][:160]
        raise CheckpointError(f"{path} is damaged or not a checkpoint of ablate ({first_line}). {damaged}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or any(k not in state for k in REQUIRED):
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        missing = [k for k in REQUIRED if k not in state] if isinstance(state, dict) else list(REQUIRED)
        raise CheckpointError(
            f"{path} is not a checkpoint of this ablate (format {found!r}, expected {FORMAT!r}"
            f"{'; missing ' + ', '.join(missing[:5]) if missing else ''}). {damaged}")
    return state


def load_run(run_dir: str | Path) -> tuple[Any, DictConfig, Any]:
    from ablate.data.tokenizers import load_tokenizer
    from ablate.model import Transformer

    run_dir = Path(run_dir)
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{run_dir} has no checkpoints/latest.pt; is it a run directory of ablate?")
    state = read_checkpoint(checkpoint)
    cfg = structured(state["config"])
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    model = Transformer(cfg, state["vocab_size"])
    model.load_state_dict(state["model"])
    return model.eval(), cfg, tokenizer
