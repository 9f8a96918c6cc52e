"""Experiment trackers (the `logger` axis). metrics.jsonl is always written; these add to it."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from components.registry import register


@register("logger", "none")
class NoLogger:
    def __init__(self, **_: Any):
        pass

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


def wandb_mode() -> str:
    """WANDB_MODE when set; else online with an API key configured (or under a W&B sweep agent,
    which must report back), offline without one."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_SWEEP_ID"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return "online" if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore") else "offline"


@register("logger", "wandb")
class WandbLogger:
    """One W&B run per training run: group = the sweep, name = the overrides, tags = the choices."""

    def __init__(self, run_dir: Path, config: dict[str, Any], group: str, run_name: str, tags: list[str],
                 project: str = "ablate", entity: str | None = None):
        import wandb

        self.wandb = wandb
        mode = wandb_mode()
        self.run = wandb.init(project=project, entity=entity, group=group, name=run_name, tags=tags[:64],
                              config=config, dir=str(run_dir), mode=mode, reinit="finish_previous",
                              settings=wandb.Settings(quiet=True))
        if mode == "offline":
            print(f"W&B offline run in {run_dir}/wandb (upload later with `wandb sync {run_dir}/wandb/offline-run-*`)",
                  file=sys.stderr)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        for key, value in summary.items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                self.run.summary[key] = value
        self.run.finish()
