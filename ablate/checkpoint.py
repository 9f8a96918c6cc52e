"""Load a run back: `model, cfg, tokenizer = load_run(RUN_DIR)`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ablate.config import structured
from ablate.model import Transformer
from ablate.tokenizer import load_tokenizer
from ablate.validate import ConfigError
from components.registry import AXES

# What a checkpoint's weights and data position depend on: the model's shape and every axis that
# shapes a checkpoint; everything else (steps, eval cadence, optimizer settings, logging) may change
# when a run is resumed, e.g. to train it longer.
ARCHITECTURE_KEYS = ("model", *(name for name, axis in AXES.items() if axis.shapes_checkpoint))
CHECKPOINT = Path("checkpoints") / "latest.pt"


def check_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Refuse to train into a directory whose results this run would destroy.

    With train.resume=auto a checkpoint is resumed only if it was trained with the same architecture,
    data and tokenizer; with train.resume=never a directory that already holds results is refused.
    """
    checkpoint = run_dir / CHECKPOINT
    has_results = checkpoint.exists() or (run_dir / "summary.json").exists()
    if cfg.train.resume == "never" and has_results:
        raise ConfigError(f"train.resume=never, but {run_dir} already holds a run (summary.json or a checkpoint); "
                          f"it will not be overwritten. Choose a new hydra.run.dir, or train.resume=auto to continue it.")
    if cfg.train.resume != "auto" or not checkpoint.exists():
        return
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["config"]
    current = OmegaConf.to_container(cfg, resolve=True)
    differences = [f"{group}.{key}: checkpoint {value!r}, now {current[group].get(key)!r}"
                   for group in ARCHITECTURE_KEYS for key, value in saved.get(group, {}).items()
                   if current[group].get(key) != value]
    if differences:
        raise ConfigError(f"train.resume=auto found a checkpoint in {run_dir} from a different configuration "
                          f"({'; '.join(differences[:6])}). Resume it with its own settings, or train this "
                          f"configuration in a new hydra.run.dir.")


def load_run(run_dir: str | Path) -> tuple[Transformer, DictConfig, Any]:
    run_dir = Path(run_dir)
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{run_dir} has no checkpoints/latest.pt; is it a run directory of ablate?")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = structured(state["config"])
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    model = Transformer(cfg, state["vocab_size"])
    model.load_state_dict(state["model"])
    return model.eval(), cfg, tokenizer
