"""Sweep directories with chosen final losses, in the on-disk format runs write (`.hydra/config.yaml`
from the real composed config, `.hydra/overrides.yaml`, `metrics.jsonl`, `summary.json`), for tests
of the report's statistics that need hundreds of sweeps in seconds."""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import hydra_compose_once

DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
UNIGRAM = 6.0


@functools.lru_cache(maxsize=1)
def _template() -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(hydra_compose_once("train.max_steps=100"), resolve=True)


def write_run(path: Path, overrides: dict[str, str], final_loss: float | None, *, status: str = "completed",
              compare: dict[str, Any] | None = None, unigram: float = UNIGRAM, steps: int = 100,
              tokens_per_s: float = 1e4, extra_summary: dict[str, Any] | None = None,
              settings: dict[str, Any] | None = None) -> None:
    """One run directory as `python ablate/run.py` leaves it (`overrides` as typed on the command line:
    `group=option` or `dotted.key=value`; `settings`: dotted keys of the saved config set without an
    override, as a ladder's rung sets the model's shape)."""
    config = copy.deepcopy(_template())
    for key, value in (settings or {}).items():
        node = config
        for part in key.split(".")[:-1]:
            node = node[part]
        node[key.split(".")[-1]] = value
    for key, value in overrides.items():
        parts = key.lstrip("+").split(".")
        if len(parts) == 1 and isinstance(config.get(parts[0]), dict):
            config[parts[0]]["name"] = value
            continue
        node = config
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    if compare:
        config["compare"].update(compare)
    seed = int(config["train"]["seed"])
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(yaml.dump(config, Dumper=DUMPER, sort_keys=False))
    override_list = [f"{k}={v}" for k, v in overrides.items()]
    (path / ".hydra" / "overrides.yaml").write_text(yaml.dump(override_list, Dumper=DUMPER))
    rows = []
    for step in range(0, steps + 1, steps // 4):
        row = {"step": step, "tokens": step * 2048, "train_loss": None if step == 0 else 5.0 - step / steps,
               "lr": 3e-3, "grad_norm": None if step == 0 else 1.0, "tokens_per_s": tokens_per_s,
               "elapsed_s": step * 0.1}
        if final_loss is not None:
            row["val_loss"] = row["val_bpb"] = final_loss + (steps - step) / steps
        rows.append(json.dumps(row))
    (path / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    choices = {g: v["name"] for g, v in config.items() if isinstance(v, dict) and "name" in v}
    summary = {
        "status": status, "error": None if status == "completed" else f"{status} at step 50",
        "final_val_loss": final_loss, "best_val_loss": final_loss, "val_bpb": final_loss,
        "unigram_val_loss": unigram, "vocab_size": 2048, "params_total": 1_000_000,
        "params_non_embedding": 500_000, "params_active": 1_000_000, "flops_per_token": 6_000_000,
        "tokens_seen": steps * 2048, "steps": steps, "wall_time_s": 10.0, "tokens_per_s": tokens_per_s,
        "seed": seed, "choices": choices, "overrides": override_list, "dtype": "fp32",
        "sample": "multi-line\nsample text", **(extra_summary or {}),
    }
    (path / "summary.json").write_text(json.dumps(summary))
