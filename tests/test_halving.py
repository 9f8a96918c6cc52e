"""Successive halving in the tuning stage (hydra_plugins/ablate_tuning_sweeper/halving.py): the budgets,
who goes on, when a sweep cannot be halved; a branch from a wsd trunk is the longer run exactly
(train.branch_from, train.save_trunk); and a halved sweep through the CLI: each value continues its own
trunk, the steps trained are the ones tuning.json counts, the choice is the best at the last budget, the
verdict runs use it, and a re-run trains nothing."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from hydra.errors import HydraException

from ablate.errors import ConfigError
from hydra_plugins.ablate_tuning_sweeper.halving import Rung, rungs, survivors, why_not_halved
from hydra_plugins.ablate_tuning_sweeper.tuning_sweeper import checked_halving


def as_pairs(found) -> list[tuple[int, int]]:
    """(steps, cooldown) per rung: Hydra's plugin scan may load the sweeper's modules afresh, so compare values."""
    return [(r.steps, r.cooldown) for r in found]


def test_rungs_end_past_warmup_keep_apart_and_fit_the_run():
    assert as_pairs(rungs(300, 50, [0.2, 0.4], 0.2)) == [(65, 13), (120, 24)]  # 0.2 x 300 = 60 < 50 + 15
    assert as_pairs(rungs(170, 50, [0.2, 0.4], 0.2)) == [(68, 14)]  # 59 and 68 judge nearly the same runs
    assert as_pairs(rungs(1000, 50, [0.1, 0.3, 1.0], 0.1)) == [(100, 10), (300, 30), (1000, 100)]
    assert rungs(57, 55, [0.5], 0.2) == []  # no stable phase after warmup to judge on
    for max_steps, warmup in [(300, 50), (170, 50), (2000, 100), (80, 0)]:
        found = rungs(max_steps, warmup, [0.05, 0.1, 0.2, 0.4, 0.8], 0.2)
        assert found and all(r.steps >= warmup + math.ceil(0.05 * max_steps) and r.steps <= max_steps for r in found)
        assert all(b.steps >= 1.5 * a.steps for a, b in zip(found, found[1:]))


def test_a_rung_job_decays_exactly_its_cooldown_after_its_budget():
    from ablate.training.schedules import WarmupStableDecay, WSDConfig

    rung = Rung(65, 13)
    overrides = dict(o.split("=", 1) for o in rung.overrides(50, "/runs/7"))
    assert overrides["train.max_steps"] == "78" and overrides["train.branch_from"] == "/runs/7"
    schedule = WarmupStableDecay(WSDConfig(warmup_steps=50, min_lr_ratio=0.0,
                                           decay_fraction=float(overrides["schedule.decay_fraction"])), 78)
    assert schedule.decay_start == 65
    assert [schedule(s) for s in (49, 50, 64)] == [1.0, 1.0, 1.0] and schedule(65) < 1 and schedule(77) == 0.0
    assert rung.trained(None) == 78 and Rung(120, 24).trained(rung) == 55 + 24


def test_survivors_are_the_best_third_at_least_two_finite_ties_to_the_first_tried():
    p = [(f"optim.lr={v}",) for v in ("a", "b", "c", "d", "e", "f", "g")]
    assert survivors(dict(zip(p[:3], [3.0, 1.0, 2.0])), 3) == [p[1], p[2]]
    assert survivors(dict(zip(p, [7, 6, 5, 4, 3, 2, 1.0])), 3) == [p[4], p[5], p[6]]  # ceil(7 / 3)
    assert survivors(dict(zip(p[:3], [math.inf, 1.0, math.inf])), 3) == [p[1]]  # a diverged value stops
    assert survivors(dict(zip(p[:4], [1.0, 1.0, 1.0, 1.0])), 2) == [p[0], p[1]]


def test_a_sweep_whose_variants_differ_in_schedule_or_length_is_not_halved():
    shared = ["train.max_steps=300", "schedule.warmup_steps=20"]
    assert why_not_halved([[*shared, "norm=rms"], [*shared, "norm=ln"]], ["optim.lr"], 2) is None
    assert "schedule" in why_not_halved([["schedule=cosine"], ["schedule=wsd"]], ["optim.lr"], 2)
    assert "train.max_steps" in why_not_halved([["train.max_steps=100"], ["train.max_steps=200"]], ["optim.lr"], 2)
    assert "schedule.warmup_steps" in why_not_halved([["norm=rms"]], ["schedule.warmup_steps"], 2)
    assert "too short" in why_not_halved([["norm=rms"]], ["optim.lr"], 0)


@pytest.mark.parametrize("halving,needle", [
    ({"budgets": [], "eta": 3, "cooldown": 0.2}, "halving.budgets=[]"),
    ({"budgets": [0.2, 1.5], "eta": 3, "cooldown": 0.2}, "halving.budgets=[0.2, 1.5]"),
    ({"budgets": [0.2], "eta": 1, "cooldown": 0.2}, "halving.eta=1"),
    ({"budgets": [0.2], "eta": 3, "cooldown": 0}, "halving.cooldown=0"),
])
def test_bad_halving_settings_are_refused_naming_the_key_and_the_allowed_values(halving, needle):
    with pytest.raises(HydraException, match="hydra.sweeper.halving=null") as error:
        checked_halving(halving)
    assert needle in str(error.value)


# --- a branch from a trunk is the longer run ---

TINY = ["model=micro", "tokenizer.vocab_size=300", "logger=none", "train.batch_size=4", "train.eval_batches=1",
        "train.sample_tokens=0", "train.log_interval=1", "schedule=wsd", "schedule.warmup_steps=4",
        "schedule.min_lr_ratio=0.0", "optim.lr=0.003"]


def tiny(tmp_path, *overrides):
    from ablate.config.schema import compose
    from tests.test_cli import POEMS

    return compose("data=text", f"data.path={POEMS}", *TINY, *overrides)


def train_losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in rows if r.get("train_loss") is not None}


def test_a_branch_from_a_trunk_trains_exactly_what_the_longer_run_trains(tmp_path):
    """The short run keeps its state after 12 steps at the stable rate; a 30-step run branched from it has
    the same training losses, step for step, as the same 30-step run from scratch, and ends at the same
    validation loss: the trunk is shared, not approximated."""
    from ablate.training.loop import train

    short = train(tiny(tmp_path, "train.max_steps=15", "schedule.decay_fraction=0.2", "train.save_trunk=true"),
                  tmp_path / "short", progress=False)
    assert (tmp_path / "short" / "checkpoints" / "trunk.pt").is_file() and short["steps"] == 15
    longer = train(tiny(tmp_path, "train.max_steps=30", "schedule.decay_fraction=0.2"), tmp_path / "long",
                   progress=False)
    branch = train(tiny(tmp_path, "train.max_steps=30", "schedule.decay_fraction=0.2",
                        f"train.branch_from={tmp_path / 'short'}"), tmp_path / "branch", progress=False)
    whole, continued = train_losses(tmp_path / "long"), train_losses(tmp_path / "branch")
    assert sorted(continued) == list(range(13, 31))  # it trained only the steps beyond the trunk
    assert all(continued[s] == whole[s] for s in continued)
    assert branch["final_val_loss"] == longer["final_val_loss"] and branch["tokens_seen"] == longer["tokens_seen"]
    assert short["final_val_loss"] != longer["final_val_loss"]  # (the cooldown made the short run differ)


@pytest.mark.parametrize("change,needle", [
    (["optim.lr=0.001"], "optim.lr: checkpoint 0.003, now 0.001"),
    (["train.seed=1"], "train.seed"),
    (["schedule.decay_fraction=0.9"], "decays from step 3"),
])
def test_a_branch_of_another_configuration_is_refused_before_it_writes_anything(tmp_path, change, needle):
    from ablate.training.loop import train

    train(tiny(tmp_path, "train.max_steps=15", "schedule.decay_fraction=0.2", "train.save_trunk=true"),
          tmp_path / "short", progress=False)
    cfg = tiny(tmp_path, "train.max_steps=30", "schedule.decay_fraction=0.2", *change,
               f"train.branch_from={tmp_path / 'short'}")
    with pytest.raises(ConfigError, match="train.branch_from=") as error:
        train(cfg, tmp_path / "branch", progress=False)
    assert needle in str(error.value)
    assert not (tmp_path / "branch").exists() or not any((tmp_path / "branch").iterdir())


def test_a_branch_from_a_run_without_a_trunk_names_what_keeps_one(tmp_path):
    from ablate.training.loop import train

    train(tiny(tmp_path, "train.max_steps=15", "schedule.decay_fraction=0.2"), tmp_path / "short", progress=False)
    with pytest.raises(ConfigError, match="train.save_trunk=true"):
        train(tiny(tmp_path, "train.max_steps=30", f"train.branch_from={tmp_path / 'short'}"), tmp_path / "b",
              progress=False)


# --- a halved sweep through the CLI ---

def test_a_halved_sweep_continues_each_value_from_its_own_trunk_and_a_rerun_trains_nothing(tmp_path):
    from tests.test_cli import FAST, ablate

    out = tmp_path / "halved"
    command = ["-m", *FAST, "train.max_steps=40", "schedule.warmup_steps=6", "train.log_interval=1",
               "hydra/sweeper=ablate_tuned", "hydra.sweeper.tune={optim.lr:'0.0003,0.003,0.03'}",
               "hydra.sweeper.tune_seeds=[100]", "hydra.sweeper.extend=0",
               "hydra.sweeper.halving.budgets=[0.3,0.6]", "ffn=swiglu,gelu", "train.seed=0",
               f"hydra.sweep.dir={out}"]
    done = ablate(*command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = json.loads((out / "tuning.json").read_text())
    assert [(r["steps"], r["cooldown"]) for r in recorded["halving"]["rungs"]] == [(12, 2), (24, 5)]
    runs = []
    for summary in out.glob("*/summary.json"):
        s = json.loads(summary.read_text())
        overrides = dict(o.split("=", 1) for o in s["overrides"])
        rows = train_losses(summary.parent)
        runs.append({"dir": str(summary.parent), "ffn": s["choices"]["ffn"], "lr": overrides["optim.lr"],
                     "stage": overrides.get("compare.stage", "verdict"), "loss": s["final_val_loss"],
                     "max_steps": int(overrides.get("train.max_steps", 40)),
                     "branch_from": overrides.get("train.branch_from"), "trained": len(rows), "first": min(rows)})
    runs = pd.DataFrame(runs)
    tune, verdict = runs[runs["stage"] == "tune"], runs[runs["stage"] == "verdict"]
    first, second = tune[tune["branch_from"].isna()], tune[tune["branch_from"].notna()]
    assert len(first) == 2 * 3 and set(first["max_steps"]) == {14} and len(second) == 2 * 2
    assert set(second["max_steps"]) == {29} and set(second["first"]) == {13}  # from the trunk's step on
    for _, run in second.iterrows():  # each value continues its own trunk: same variant, same rate
        parent = first[first["dir"] == run["branch_from"]].iloc[0]
        assert (parent["ffn"], parent["lr"]) == (run["ffn"], run["lr"])
    for ffn, group in first.groupby("ffn"):  # the best two of three went on
        assert sorted(second.loc[second["ffn"] == ffn, "lr"]) == sorted(group.nsmallest(2, "loss")["lr"])
        best = second[second["ffn"] == ffn].nsmallest(1, "loss")["lr"].iloc[0]  # chosen at the last budget
        assert set(verdict.loc[verdict["ffn"] == ffn, "lr"]) == {best} and len(verdict[verdict["ffn"] == ffn]) == 1
    assert tune["trained"].sum() == recorded["tuning_steps"] == 6 * 14 + 4 * (12 + 5)  # nothing trained twice
    assert recorded["full_length_steps"] == 6 * 40 and recorded["tuning_steps"] < recorded["full_length_steps"]
    md = (out / "report" / "report.md").read_text()
    assert "successive halving" in md and f"run dirs found: {len(runs)}" in md and "missing" not in md
    assert (out / "report" / "tuning.png").is_file()

    again = ablate(*command, cwd=tmp_path)  # the same command into the same folder: every job skipped
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped") == len(runs) and json.loads((out / "tuning.json").read_text()) == recorded


def test_a_sweep_begun_before_halving_resumes_at_full_length_and_one_whose_variants_differ_in_schedule_too(tmp_path):
    """Its later jobs sit at the job numbers the full-length plan gave them: halving would renumber them."""
    from omegaconf import OmegaConf

    from hydra_plugins.ablate_tuning_sweeper.tuning_sweeper import TuningSweeper, plan

    sweeper = TuningSweeper(None, {"optim.lr": "0.1,0.2,0.4"}, [1000], "train.seed", None,
                            halving={"budgets": [0.2, 0.4], "eta": 3, "cooldown": 0.2})
    sweeper.config = OmegaConf.create({"train": {"max_steps": 300}, "schedule": {"warmup_steps": 50}})
    the_plan = plan(["norm=rms,ln", "train.seed=0,1"], sweeper.tune, [1000])
    found, reason = sweeper._halving_for(tmp_path, the_plan)
    assert as_pairs(found) == [(65, 13), (120, 24)] and reason is None  # a new sweep
    (tmp_path / "tuning.json").write_text(json.dumps({"tuned": ["optim.lr"], "extend": 2, "choices": []}))
    rungs_, reason = sweeper._halving_for(tmp_path, the_plan)
    assert rungs_ == [] and "written before tuning was halved" in reason
    (tmp_path / "tuning.json").unlink()
    rungs_, reason = sweeper._halving_for(tmp_path, plan(["schedule=cosine,wsd"], sweeper.tune, [1000]))
    assert rungs_ == [] and "the variants differ in schedule" in reason
    assert the_plan.halving_outline([Rung(65, 13), Rung(120, 24)], 3) == [2 * 3, 2 * 2]
