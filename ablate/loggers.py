"""Experiment trackers (the `logger` axis). metrics.jsonl is always written; these add to it."""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

from dataclasses import dataclass
from typing import Optional

from components.registry import OptionConfig, axis, register

axis("logger", "experiment tracker beside metrics.jsonl", kind="logging")


@register("logger", "none")
class NoLogger:
    """Built as `Option(cfg, run_dir=, config=, group=, run_name=, tags=)`; this one ignores them."""

    def __init__(self, cfg: OptionConfig, **_: Any):
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


@dataclass
class WandbConfig(OptionConfig):
    project: str = "ablate"
    entity: Optional[str] = None


@register("logger", "wandb")
class WandbLogger:
    """One W&B run per training run: group = the sweep, name = the overrides, tags = the choices.

    `import wandb` and `wandb.init` (which starts W&B's service process) take about 2 s of mostly
    Python work. They run in a background thread started at the first `log`, so they overlap training
    steps (torch releases the GIL) instead of delaying the first one; metrics logged before the run is
    up are queued and sent in order. If W&B cannot start, training goes on (metrics.jsonl has every
    logged step) and the reason is printed once."""

    Config = WandbConfig

    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict[str, Any], group: str, run_name: str,
                 tags: list[str]):
        self.init_kwargs = dict(project=cfg.project, entity=cfg.entity, group=group, name=run_name, tags=tags[:64],
                                config=config, dir=str(run_dir), mode=wandb_mode(), reinit="finish_previous")
        self.run: Any = None
        self.error: BaseException | None = None
        self.pending: list[tuple[dict[str, Any], int]] = []
        self.starting: threading.Thread | None = None
        self.started = False

    def _start(self) -> None:
        try:
            import wandb

            self.run = wandb.init(**self.init_kwargs, settings=wandb.Settings(quiet=True))
        except BaseException as error:  # noqa: BLE001  (reported by _ready, on the training thread)
            self.error = error
        else:
            if self.init_kwargs["mode"] == "offline":
                where = self.init_kwargs["dir"]
                print(f"W&B offline run in {where}/wandb (upload later with `wandb sync {where}/wandb/offline-run-*`)",
                      file=sys.stderr)

    def _ready(self, wait: bool) -> bool:
        """Whether the W&B run is up (waiting for it when `wait`); sends the queued metrics once it is."""
        if not self.started:
            self.started = True
            self.starting = threading.Thread(target=self._start, daemon=True, name="wandb-init")
            self.starting.start()
        if self.starting is not None:
            if not wait and self.starting.is_alive():
                return False
            self.starting.join()
            self.starting = None
            if self.error is not None:
                print(f"W&B could not start ({type(self.error).__name__}: {self.error}); training goes on without "
                      f"it, metrics.jsonl in the run directory has every logged step.", file=sys.stderr)
        if self.run is None:
            self.pending.clear()
            return False
        for metrics, step in self.pending:
            self.run.log(metrics, step=step)
        self.pending.clear()
        return True

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.pending.append((metrics, step))
        self._ready(wait=False)

    def finish(self, summary: dict[str, Any]) -> None:
        if not self._ready(wait=True):
            return
        for key, value in summary.items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                self.run.summary[key] = value
        self.run.finish()
