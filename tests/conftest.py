"""Shared fixtures: an isolated cache, W&B off, and config composition without a command line."""
from __future__ import annotations

import copy
import functools
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
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import ablate.config  # noqa: F401  (registers the schema)

    if not GlobalHydra.instance().is_initialized():  # initialize once per session: composing is then cheap
        initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None)
    return hydra_compose("config", overrides=list(overrides))


@functools.lru_cache(maxsize=None)
def _cached_compose(overrides: tuple[str, ...]):
    return hydra_compose_once(*overrides)


def compose(*overrides: str):
    """Like `hydra_compose_once`, but fast for grids: Hydra composes the non-group overrides once
    (cached) and each plain `group=option` is then loaded from its YAML into the typed node, which
    is what Hydra's defaults list does for these option files (tests check the two agree)."""
    groups, rest = {}, []
    for override in overrides:
        key, _, value = override.partition("=")
        if "." not in key and not key.startswith(("+", "~")) and (ROOT / "conf" / key / f"{value}.yaml").is_file():
            groups[key] = value
        else:
            rest.append(override)
    cfg = copy.deepcopy(_cached_compose(tuple(rest)))
    for group, option in groups.items():
        schema = OmegaConf.structured(OmegaConf.get_type(cfg, group))
        cfg[group] = OmegaConf.merge(schema, OmegaConf.load(ROOT / "conf" / group / f"{option}.yaml"))
    for override in rest:  # key=value overrides win over option files, as on the command line
        key, _, value = override.partition("=")
        if key.split(".")[0] in groups:
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
