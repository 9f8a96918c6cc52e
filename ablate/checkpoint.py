"""Load a run back: `model, cfg, tokenizer = load_run(RUN_DIR)`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ablate.config import Config
from ablate.model import Transformer
from ablate.tokenizer import load_tokenizer


def load_run(run_dir: str | Path) -> tuple[Transformer, DictConfig, Any]:
    run_dir = Path(run_dir)
    checkpoint = run_dir / "checkpoints" / "latest.pt"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{run_dir} has no checkpoints/latest.pt; is it a run directory of ablate?")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = OmegaConf.merge(OmegaConf.structured(Config), state["config"])
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    model = Transformer(cfg, state["vocab_size"])
    model.load_state_dict(state["model"])
    return model.eval(), cfg, tokenizer
