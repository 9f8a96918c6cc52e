"""Shared fixtures: an isolated cache, W&B off, and config composition without a command line."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
POEMS = ROOT / "tests" / "fixtures" / "poems"  # four Shakespeare poems: a small real corpus
sys.path.insert(0, str(ROOT))

os.environ["WANDB_MODE"] = "disabled"
torch.set_num_threads(1)  # the test models are tiny: a second OpenMP thread costs more than it gives
os.environ.setdefault("ABLATE_CACHE", str(Path(os.environ.get("PYTEST_CACHE_ROOT", "/tmp")) / f"ablate-test-cache-{os.getpid()}"))


def hydra_compose_once(*overrides: str):
    """The config `python ablate/run.py OVERRIDES` would train (Hydra's compose API)."""
    from ablate.config.schema import compose as hydra_compose

    return hydra_compose(*overrides)


def compose(*overrides: str):
    """Like `hydra_compose_once`, but fast for grids: Hydra composes the non-group overrides once
    (cached) and each plain `group=option` is then loaded from its YAML into the typed node, which
    is what Hydra's defaults list does for these option files (tests check the two agree)."""
    from ablate.config.schema import with_option

    groups, rest = {}, []
    for override in overrides:
        key, _, value = override.partition("=")
        if "." not in key and not key.startswith(("+", "~")) and (ROOT / "conf" / key / f"{value}.yaml").is_file():
            groups[key] = value
        else:
            rest.append(override)
    def switched(override: str) -> bool:  # a knob of a group this call switches: set after the switch
        return override.partition("=")[0].split(".")[0] in groups

    cfg = hydra_compose_once(*(o for o in rest if not switched(o)))
    for group, option in groups.items():
        cfg = with_option(cfg, group, option)
    for override in filter(switched, rest):  # key=value overrides win over option files, as on the command line
        key, _, value = override.partition("=")
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    return cfg


TINY = ("model=micro", "data=text", f"data.path={POEMS}", "tokenizer.vocab_size=400", "logger=none",
        "train.batch_size=8", "train.eval_batches=2", "train.sample_tokens=20",
        "train.dtype=fp32")  # the same numbers on every machine (`auto` picks bf16 where it measures fast)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every test session builds its own corpus and tokenizer cache."""
    cache = tmp_path_factory.mktemp("ablate-cache")
    os.environ["ABLATE_CACHE"] = str(cache)
    yield cache
