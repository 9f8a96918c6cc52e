"""Every predefined sweep states its question, job count and time, and every one of its jobs is valid."""
from __future__ import annotations

import re

import pytest
from hydra import compose as hydra_compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from ablate.validate import check
from tests.conftest import ROOT, hydra_compose_once

SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
GRIDS = [name for name in SWEEPS if "# Jobs:" in (ROOT / "sweeps" / f"{name}.yaml").read_text()]
SEARCHES = [name for name in SWEEPS if name not in GRIDS]  # Optuna: a number of trials, not a grid
REQUIRED = {"norm", "norm_pos", "ffn", "block", "pos", "attn", "heads", "kv_heads", "d_ff", "stability", "moe",
            "vocab", "lr", "lecture"}


def header(name: str) -> dict[str, str]:
    text = (ROOT / "sweeps" / f"{name}.yaml").read_text()
    return dict(re.findall(r"^# (Question|Grid|Jobs|Trials|Expected time): (.+)$", text, re.M))


def jobs(name: str) -> list[list[str]]:
    """The job overrides Hydra's basic sweeper will launch for `+sweep=NAME`."""
    hydra_compose_once()  # initializes Hydra once for this process
    cfg = hydra_compose("config", overrides=[f"+sweep={name}"], return_hydra_config=True)
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    parsed = OverridesParser.create().parse_overrides(params)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def test_the_lecture_questions_all_have_a_sweep():
    assert REQUIRED <= set(SWEEPS)


@pytest.mark.parametrize("name", GRIDS)
def test_sweep_states_its_question_and_every_job_is_a_valid_config(name):
    info = header(name)
    assert {"Question", "Grid", "Jobs", "Expected time"} <= info.keys(), info
    minutes = int(re.search(r"(\d+) minutes", info["Expected time"]).group(1))
    assert minutes <= 20
    grid = jobs(name)
    assert len(grid) == int(info["Jobs"])
    seeds = {o for job in grid for o in job if o.startswith("train.seed=")}
    assert len(seeds) >= 3
    distinct = {tuple(o for o in job if not o.startswith("train.seed=")) for job in grid}  # seeds change no validity
    for job in sorted(distinct):
        check(hydra_compose("config", overrides=[f"+sweep={name}", *job]))


@pytest.mark.parametrize("name", SEARCHES)
def test_search_states_its_question_and_its_bounds_are_valid_configs(name):
    info = header(name)
    assert {"Question", "Trials", "Expected time"} <= info.keys(), info
    hydra_compose_once()
    cfg = hydra_compose("config", overrides=[f"+sweep={name}"], return_hydra_config=True)
    assert cfg.hydra.sweeper.n_trials == int(info["Trials"])
    for key, spec in cfg.hydra.sweeper.params.items():
        for bound in re.findall(r"[-+]?\d*\.?\d+(?:e[-+]?\d+)?", spec.split("interval", 1)[-1]):
            check(hydra_compose("config", overrides=[f"+sweep={name}", f"{key}={bound}"]))
