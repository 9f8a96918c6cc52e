"""Every predefined sweep states its question, job count and time, and every one of its jobs is valid."""
from __future__ import annotations

import re

import pytest
from hydra import compose as hydra_compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from ablate.config.rungs import apply as apply_rung
from ablate.config.validate import check
from hydra_plugins.ablate_tuning_sweeper.halving import is_rung_key, rungs, why_not_halved
from tests.conftest import ROOT, hydra_compose_once

SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
GRIDS = [name for name in SWEEPS if "# Jobs:" in (ROOT / "sweeps" / f"{name}.yaml").read_text()]
SEARCHES = [name for name in SWEEPS if name not in GRIDS]  # Optuna: a number of trials, not a grid
REQUIRED = {"norm", "norm_pos", "ffn", "block", "pos", "attn", "heads", "kv_heads", "d_ff", "stability", "moe",
            "vocab", "lr", "lecture", "optim", "weight_decay", "dropout", "aspect", "attn_pattern"}


# The learning-rate sweeps answer the rate question itself: tuning the rate per variant there is moot.
# A ladder's sweeps (ladder_*) set the rate per rung by the ladder's rule (conf/ladder/, ablate/config/rungs.py).
LADDERS = {name for name in SWEEPS if name.startswith("ladder_")}
UNTUNED = {"lr", "lr_search"} | LADDERS


def header(name: str) -> dict[str, str]:
    text = (ROOT / "sweeps" / f"{name}.yaml").read_text()
    return dict(re.findall(r"^# (Question|Grid|Tuning|Looks|Jobs|Cost|Trials|Expected time): (.+)$", text, re.M))


EXTRA = re.compile(r"^(\d+)(?: \(\+ up to (\d+) tuning runs if choices land on the grid's edge\))?$")


def job_counts(name: str) -> tuple[int, int]:
    """The header's job count and the most tuning runs a grid extension may add (0 if none stated)."""
    match = EXTRA.match(header(name)["Jobs"])
    assert match, header(name)["Jobs"]
    return int(match.group(1)), int(match.group(2) or 0)


def hydra_config(name: str):
    hydra_compose_once()  # initializes Hydra once for this process
    return hydra_compose("config", overrides=[f"+sweep={name}"], return_hydra_config=True)


def jobs(name: str) -> list[list[str]]:
    """Every job's overrides that `-m +sweep=NAME` launches: the basic sweeper's grid, or both stages
    of the tuning sweeper (its verdict stage at the grid's first tuned value: any is a valid job)."""
    from hydra_plugins.ablate_tuning_sweeper.tuning_sweeper import plan

    sweeper = hydra_config(name).hydra.sweeper
    params = [f"{key}={value}" for key, value in sweeper.params.items()]
    if "tune" in sweeper:
        p = plan(params, dict(sweeper.tune), list(sweeper.tune_seeds), sweeper.seed_key)
        verdict = p.verdict_jobs([p.grid[0]] * len(p.variants))
        return (halving_jobs(name, p, sweeper) or p.tuning_jobs()) + verdict
    parsed = OverridesParser.create().parse_overrides(params)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def halving_jobs(name: str, p, sweeper) -> list[list[str]]:
    """The tuning runs of a halved sweep before any extension, each budget's as it is launched (the values
    that go on stand for whichever do; a placeholder for the trunk they continue); [] when not halved."""
    import math

    cfg = hydra_compose_once(f"+sweep={name}")
    warmup = cfg.schedule.warmup_steps
    the_rungs = rungs(cfg.train.max_steps, warmup, list(sweeper.halving.budgets), sweeper.halving.cooldown)
    if why_not_halved(p.variants, p.tuned_keys, len(the_rungs)) is not None:
        return []
    found, n = [], len(p.grid)
    for k, rung in enumerate(the_rungs):
        for variant in p.variants:
            for point in p.grid[:n]:
                found += [[*(o for o in job if not is_rung_key(o)), *rung.overrides(warmup, "trunk" if k else None)]
                          for job in p.point_jobs(variant, point)]
        n = min(n, max(2, math.ceil(n / sweeper.halving.eta)))
    return found


def jobs_variants(grid: list[list[str]]) -> set[tuple[str, ...]]:
    """The variants of a tuned sweep's jobs: each job without its seed, tuned rate and stage marks."""
    rung = ("train.max_steps=", "train.save_trunk=", "train.branch_from=", "schedule=wsd", "schedule.")  # a budget's
    return {tuple(o for o in job if not o.startswith(("train.seed=", "compare.", "optim.lr=", *rung))) for job in grid}


def test_the_lecture_questions_all_have_a_sweep():
    assert REQUIRED <= set(SWEEPS)


@pytest.mark.parametrize("name", GRIDS)
def test_sweep_states_its_question_and_every_job_is_a_valid_config(name):
    info = header(name)
    assert {"Question", "Grid", "Jobs", "Expected time"} <= info.keys(), info
    minutes = int(re.search(r"(\d+) minutes", info["Expected time"]).group(1))
    assert minutes <= (60 if name in LADDERS else 30)  # a ladder trains 4 sizes: up to an hour (issue #14)
    grid = jobs(name)
    assert len(grid) == job_counts(name)[0]
    verdict = [job for job in grid if "compare.stage=tune" not in job]
    seeds = {o for job in verdict for o in job if o.startswith("train.seed=")}
    assert len(seeds) >= 3
    # Seeds change no validity; a tuned rate only needs checking once (with the first variant).
    distinct = {tuple(o for o in job if not o.startswith(("train.seed=", "compare.", "optim.lr="))) for job in grid}
    rates = sorted({o for job in grid for o in job if o.startswith("optim.lr=")})
    first = min(distinct)
    for job in sorted(distinct) + [(*first, rate) for rate in rates]:
        cfg = hydra_compose("config", overrides=[f"+sweep={name}", *job])
        apply_rung(cfg, job)  # a ladder's rung sets the model's size, as ablate/cli/job.py applies it
        check(cfg)


@pytest.mark.parametrize("name", sorted(set(SWEEPS) - UNTUNED))
def test_sweep_tunes_the_rate_per_variant_at_most_doubling_its_cost(name):
    sweeper = hydra_config(name).hydra.sweeper
    assert sweeper._target_.endswith("TuningSweeper") and list(sweeper.tune) == ["optim.lr"]
    assert list(hydra_compose_once(f"+sweep={name}").compare.tuned) == ["optim.lr"]  # the report knows
    rates = [float(v) for v in str(sweeper.tune["optim.lr"]).split(",")]
    assert len(rates) >= 3 and min(rates) < max(rates)
    grid = jobs(name)
    tuning = [job for job in grid if "compare.stage=tune" in job]
    verdict = len(grid) - len(tuning)
    info = header(name)
    assert {"Tuning", "Cost"} <= info.keys()
    # halved (hydra_plugins/ablate_tuning_sweeper/halving.py): the header's runs and steps are the plan's
    cfg = hydra_compose_once(f"+sweep={name}")
    from hydra_plugins.ablate_tuning_sweeper.tuning_sweeper import plan as tuning_plan

    p = tuning_plan([f"{k}={v}" for k, v in sweeper.params.items()], dict(sweeper.tune), list(sweeper.tune_seeds),
                    sweeper.seed_key)
    the_rungs = rungs(cfg.train.max_steps, cfg.schedule.warmup_steps, list(sweeper.halving.budgets),
                      sweeper.halving.cooldown)
    reason = why_not_halved(p.variants, p.tuned_keys, len(the_rungs))
    if reason is None:
        counts = p.halving_outline(the_rungs, sweeper.halving.eta)
        steps = sum(c * r.trained(the_rungs[k - 1] if k else None)
                    for k, (c, r) in enumerate(zip(counts, the_rungs)))
        assert steps <= verdict * cfg.train.max_steps  # tuning trains at most what the verdict trains
        assert f"{sum(counts)} tuning + {verdict} verdict runs; the tuning trains {steps:,} steps" in info["Cost"]
        assert "compared by successive halving" in info["Tuning"]
        assert job_counts(name)[0] == sum(counts) + verdict
    else:  # at full length: total <= 2x the untuned sweep with the same verdict seeds
        assert len(tuning) <= verdict and f"{len(tuning)} tuning + {verdict} verdict runs" in info["Cost"]
    # the grid's extension past an edge (hydra.sweeper.extend): stated, with its bound on the jobs
    from hydra_plugins.ablate_tuning_sweeper.tuning_sweeper import plan

    extend = int(sweeper.get("extend", 2))
    bound = plan([f"{k}={v}" for k, v in sweeper.params.items()], dict(sweeper.tune), list(sweeper.tune_seeds),
                 sweeper.seed_key).max_extension_jobs(extend)
    assert extend >= 1 and job_counts(name)[1] == bound == len(jobs_variants(grid)) * extend * len(sweeper.tune_seeds)
    assert f"extended automatically by up to {extend} steps (x2 each)" in info["Tuning"]
    assert all(b / a == 2 for a, b in zip(rates, rates[1:]))  # what "x2 each" says


@pytest.mark.parametrize("name", sorted(set(SWEEPS) - UNTUNED))
def test_a_sweep_with_seeds_in_looks_states_them_and_its_looks_are_valid(name):
    from hydra_plugins.ablate_tuning_sweeper.tuning_sweeper import checked_budget, checked_looks, plan

    config = hydra_config(name)
    looks = list(config.compare.looks or [])
    if not looks:
        assert "Looks" not in header(name)
        return
    sweeper = config.hydra.sweeper
    p = plan([f"{k}={v}" for k, v in sweeper.params.items()], dict(sweeper.tune), list(sweeper.tune_seeds),
             sweeper.seed_key)
    assert checked_looks(config, p.seeds, sweeper.seed_key) == looks  # refused before any run otherwise
    checked_budget(config)
    stated = header(name)["Looks"]
    assert f"compare.looks=[{','.join(map(str, looks))}]" in stated and f"seeds 0-{looks[0] - 1} for every variant" in stated
    assert f"{len(p.variants) * looks[-1]} verdict runs" in header(name)["Cost"]  # the most, every look run


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
