"""Per-variant tuning (hydra_plugins/ablate_tuning_sweeper): the plan of both stages, the choice
rule, discovery by Hydra, and a tiny tuned sweep through the CLI whose verdict runs use each
variant's best value from the tuning seeds, which the report shows."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest
from hydra.errors import HydraException

from hydra_plugins.ablate_tuning_sweeper.extension import grid_step, max_extra_points, next_points
from hydra_plugins.ablate_tuning_sweeper.tuning_sweeper import Tried, choose, plan
from tests.conftest import ROOT

TUNE = {"optim.lr": "0.001,0.003,0.01"}


def test_plan_has_both_stages_and_costs_at_most_twice_the_untuned_sweep():
    p = plan(["ffn=swiglu,gelu", "train.seed=0,1,2", "train.max_steps=50"], TUNE, [1000])
    assert p.variants == [["ffn=swiglu", "train.max_steps=50"], ["ffn=gelu", "train.max_steps=50"]]
    assert p.seeds == ["0", "1", "2"] and p.grid == [["optim.lr=0.001"], ["optim.lr=0.003"], ["optim.lr=0.01"]]
    tuning = p.tuning_jobs()
    assert len(tuning) == 2 * 3 * 1
    assert tuning[0] == ["ffn=swiglu", "train.max_steps=50", "optim.lr=0.001", "train.seed=1000",
                         "compare.stage=tune", "compare.tuned=[optim.lr]"]
    verdict = p.verdict_jobs([["optim.lr=0.003"], None])
    assert verdict[0] == ["ffn=swiglu", "train.max_steps=50", "optim.lr=0.003", "train.seed=0",
                          "compare.stage=verdict", "compare.tuned=[optim.lr]"]
    assert verdict[3][:2] == ["ffn=gelu", "train.max_steps=50"]
    assert not any(o.startswith("optim.lr=") for o in verdict[3])  # all its tuning runs failed: the default
    untuned = len(p.variants) * len(p.seeds)
    assert p.n_jobs == len(tuning) + len(verdict) == 12 <= 2 * untuned  # 3 values x 1 seed <= 3 seeds


def test_choice_is_the_lowest_mean_over_tuning_seeds_and_failures_count_as_infinite():
    p = plan(["ffn=swiglu,gelu", "train.seed=0,1"], TUNE, [7, 8])
    scores = [3.0, 3.2,  2.9, 3.4,  3.5, math.inf,      # swiglu: means 3.1, 3.15, inf -> 0.001
              math.inf, math.inf,  4.0, 4.0,  4.0, 3.9]  # gelu: inf, 4.0, 3.95 -> 0.01
    assert choose(p, scores) == [["optim.lr=0.001"], ["optim.lr=0.01"]]
    assert choose(p, [math.inf] * 12) == [None, None]


@pytest.mark.parametrize("params,tune,seeds,needle", [
    (["optim.lr=0.1,0.2", "train.seed=0"], TUNE, [9], "optim.lr is both swept and tuned"),
    (["ffn=gelu", "train.seed=0,1"], TUNE, [1], "share no seed"),
    (["ffn=gelu"], {}, [9], "hydra.sweeper.tune is empty"),
])
def test_bad_plans_are_refused_with_the_reason(params, tune, seeds, needle):
    with pytest.raises(HydraException, match=needle):
        plan(params, tune, seeds)


DISCOVER = """
import importlib.util, sys
from pathlib import Path
root = Path(sys.argv[1])
# Load ablate and components the way setuptools' editable finder does: by a mapping to their
# folders, with the repository root NOT on sys.path (so the hydra_plugins namespace lacks it).
for name in ("components", "ablate"):
    spec = importlib.util.spec_from_file_location(name, root / name / "__init__.py",
                                                  submodule_search_locations=[str(root / name)])
    module = importlib.util.module_from_spec(spec); sys.modules[name] = module; spec.loader.exec_module(module)
assert not any(Path(p or ".").resolve() == root for p in sys.path)
import ablate.config.schema
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
print(sorted(c.__name__ for c in Plugins.instance().discover(Sweeper)))
"""


def test_hydra_discovers_the_sweeper_without_the_repository_on_sys_path(tmp_path):
    done = subprocess.run([sys.executable, "-c", DISCOVER, str(ROOT)], cwd=tmp_path, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "TuningSweeper" in done.stdout


def test_a_tuned_sweep_through_the_cli(tmp_path):
    from tests.test_cli import FAST, ablate

    out = tmp_path / "tuned"
    done = ablate("-m", *FAST, "train.max_steps=6", "hydra/sweeper=ablate_tuned",
                  "hydra.sweeper.tune={optim.lr:'0.001,0.03'}", "hydra.sweeper.tune_seeds=[100]",
                  "hydra.sweeper.extend=0",  # the two stages alone (a 2-value grid's choice is always an edge)
                  "ffn=swiglu,gelu", "train.seed=0,1", f"hydra.sweep.dir={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = []
    for summary in out.glob("*/summary.json"):
        config = (summary.parent / ".hydra" / "config.yaml").read_text()
        s = json.loads(summary.read_text())
        runs.append({"ffn": s["choices"]["ffn"], "seed": s["seed"], "loss": s["final_val_loss"],
                     "stage": "tune" if "stage: tune" in config else "verdict",
                     "lr": next(o for o in s["overrides"] if o.startswith("optim.lr=")).split("=")[1]})
    runs = pd.DataFrame(runs)
    tune, verdict = runs[runs["stage"] == "tune"], runs[runs["stage"] == "verdict"]
    assert len(tune) == 2 * 2 and len(verdict) == 2 * 2
    assert set(tune["seed"]) == {100} and set(verdict["seed"]) == {0, 1}  # the verdict's seeds never tune
    for ffn, group in tune.groupby("ffn"):
        best = group.loc[group["loss"].idxmin(), "lr"]
        assert set(verdict.loc[verdict["ffn"] == ffn, "lr"]) == {best}, ffn
    md = (out / "report" / "report.md").read_text()
    assert "## Tuning" in md and "Tuned per variant: `optim.lr` (4 tuning runs on seeds 100" in md
    assert "Jobs expected from multirun.yaml: 8, run dirs found: 8" in md  # both stages counted
    assert "learning rate tuned per variant" in md
    assert (out / "report" / "tuning.png").is_file()
    table = pd.read_csv(out / "report" / "comparisons.csv")
    assert list(table["option"]) == ["gelu"] and table.loc[0, "n"] + table.loc[0, "n_baseline"] <= 4


# --- extending the grid past an edge the best value lands on (hydra.sweeper.extend) ---

LR = {"optim.lr": ["0.0015", "0.003", "0.006"]}


def lr(*values: str) -> dict:
    """Injected mean scores: the points in the order tried, the first value the best."""
    return {(f"optim.lr={v}",): float(i) for i, v in enumerate(values)}


def test_a_best_value_at_the_top_edge_extends_by_the_grids_ratio_until_it_moves_inside_or_the_limit():
    means = {("optim.lr=0.0015",): 5.0, ("optim.lr=0.003",): 4.8, ("optim.lr=0.006",): 4.7}
    assert next_points(means, LR, extend=2) == [("optim.lr=0.012",)]
    assert next_points(means, LR, extend=0) == []                   # 0 turns it off
    assert next_points({**means, ("optim.lr=0.012",): 4.75}, LR, 2) == []   # the best moved inside: done
    means[("optim.lr=0.012",)] = 4.6
    assert next_points(means, LR, extend=2) == [("optim.lr=0.024",)]
    assert next_points(means, LR, extend=1) == []                   # one step past the grid taken: the limit
    means[("optim.lr=0.024",)] = 4.5
    assert next_points(means, LR, extend=2) == []                   # still at the edge: the report flags it
    assert next_points(lr("0.003", "0.0015", "0.006"), LR, 2) == []  # an inner best never extends


def test_the_bottom_edge_extends_downwards_and_a_middle_or_failed_choice_does_not():
    assert next_points(lr("0.0015", "0.003", "0.006"), LR, 2) == [("optim.lr=0.00075",)]
    assert next_points(lr("0.00075", "0.0015", "0.003", "0.006"), LR, 2) == [("optim.lr=0.000375",)]
    failed = {p: math.inf for p in lr("0.0015", "0.003", "0.006")}
    assert next_points(failed, LR, 2) == []  # every run failed: the default value, nothing to extend


@pytest.mark.parametrize("values,best,expected", [
    (["0.1", "0.2", "0.3"], "0.3", "0.4"),        # evenly spaced: one difference further
    (["0.1", "0.2", "0.3"], "0.1", None),         # 0.1 - 0.1 reaches zero: a bound, not extended
    (["0", "0.1"], "0", None),                    # leaving zero (e.g. weight decay): not extended
    (["0", "0.1"], "0.1", "0.2"),
    (["0.001", "0.003", "0.01"], "0.01", "0.0333333333333"),   # roughly log-spaced: the edge's own ratio
    (["0.001", "0.003", "0.01"], "0.001", "0.000333333333333"),
    (["100", "200"], "200", "400"),               # two values: a ratio; integers stay integers
    (["-4", "-2"], "-2", "-1"),                   # one sign, geometric: towards zero, never across
    (["-1", "0", "1"], "1", "2"),
    (["1", "2", "3"], "3", "4"),
])
def test_the_step_continues_the_grids_spacing(values, best, expected):
    grid = {"k": values}
    means = {("k=" + best,): 0.0, **{("k=" + v,): 1.0 for v in values if v != best}}
    assert next_points(means, grid, 2) == ([("k=" + expected,)] if expected else [])


def test_the_kind_of_step_follows_the_spacing():
    assert grid_step(["0.0015", "0.003", "0.006"]).geometric and grid_step(["1e-5", "2e-5"]).geometric
    assert not grid_step(["0.1", "0.2", "0.3"]).geometric and not grid_step(["0", "0.5", "1"]).geometric
    for never in (["swiglu", "gelu"], ["0.1"], ["true", "false"], ["[1,2]", "[3,4]"], ["nan", "1"]):
        assert grid_step(never) is None, never
    assert next_points({("ffn=gelu",): 1.0, ("ffn=relu",): 2.0}, {"ffn": ["gelu", "relu"]}, 2) == []


@pytest.mark.parametrize("extend", [-1, 1.5, True])
def test_a_bad_extension_limit_is_refused_before_any_run(extend):
    from hydra_plugins.ablate_tuning_sweeper.tuning_sweeper import TuningSweeper

    with pytest.raises(HydraException, match=rf"hydra.sweeper.extend={extend!r} must be a whole number >= 0"):
        TuningSweeper(None, {"optim.lr": "0.1,0.2"}, [1000], "train.seed", None, extend=extend)


def test_a_sweep_begun_before_grids_were_extended_resumes_without_extending(tmp_path):
    """Its verdict runs sit at the job numbers extension runs would now take: extending would shift them."""
    from hydra_plugins.ablate_tuning_sweeper.tuning_sweeper import TuningSweeper

    sweeper = TuningSweeper(None, {"optim.lr": "0.1,0.2"}, [1000], "train.seed", None, extend=2)
    assert sweeper._extend_for(tmp_path) == 2  # a new sweep
    (tmp_path / "tuning.json").write_text(json.dumps({"tuned": ["optim.lr"], "extend": 2}))
    assert sweeper._extend_for(tmp_path) == 2  # begun with extension
    (tmp_path / "tuning.json").write_text(json.dumps({"tuned": ["optim.lr"], "choices": []}))
    assert sweeper._extend_for(tmp_path) == 0  # begun before it


def test_with_several_keys_only_the_keys_at_an_edge_move_and_the_others_stay_at_the_chosen_point():
    grid = {"optim.lr": ["0.001", "0.002", "0.004"], "optim.weight_decay": ["0.0", "0.1", "0.2"],
            "ffn": ["swiglu", "gelu"]}
    means = {(f"optim.lr={a}", f"optim.weight_decay={b}", f"ffn={c}"): 9.0
             for a in grid["optim.lr"] for b in grid["optim.weight_decay"] for c in grid["ffn"]}
    means[("optim.lr=0.004", "optim.weight_decay=0.1", "ffn=gelu")] = 1.0    # lr at its top, decay inside
    assert next_points(means, grid, 2) == [("optim.lr=0.008", "optim.weight_decay=0.1", "ffn=gelu")]
    means[("optim.lr=0.004", "optim.weight_decay=0.2", "ffn=gelu")] = 0.5    # now both keys at their top
    assert next_points(means, grid, 2) == [("optim.lr=0.008", "optim.weight_decay=0.2", "ffn=gelu"),
                                           ("optim.lr=0.004", "optim.weight_decay=0.3", "ffn=gelu")]
    assert max_extra_points(grid, 2) == 4  # the non-numeric key never extends


def test_the_choice_is_made_over_every_tuning_run_and_the_plan_bounds_the_extra_jobs():
    p = plan(["ffn=swiglu,gelu", "train.seed=0,1,2"], {"optim.lr": "0.0015,0.003,0.006"}, [7, 8])
    assert p.axes == LR and p.max_extension_jobs(2) == 2 * 2 * 2  # variants x steps x tuning seeds
    tried = Tried(p)
    tried.add_stage([[tuple(g) for g in p.grid]] * 2, [5.0, 5.2, 4.8, 4.8, 4.7, 4.7,   # swiglu: top edge
                                                         4.0, 4.0, 4.5, 4.5, 4.9, 4.9])  # gelu: bottom
    assert tried.extensions(2) == [[("optim.lr=0.012",)], [("optim.lr=0.00075",)]]
    tried.add_stage(tried.extensions(2), [4.9, 4.9, 3.9, 3.9])  # swiglu's worse, gelu's better
    assert tried.chosen() == [["optim.lr=0.006"], ["optim.lr=0.00075"]]
    assert tried.extensions(2) == [[], [("optim.lr=0.000375",)]]
    extension_runs = [r for r in tried.runs if r[1] in ("optim.lr=0.012", "optim.lr=0.00075")]
    assert len(tried.runs) == 12 + 4 and [r[2:] for r in extension_runs] == [["train.seed=7", "compare.stage=tune", "compare.tuned=[optim.lr]", 4.9],
                                               ["train.seed=8", "compare.stage=tune", "compare.tuned=[optim.lr]", 4.9],
                                               ["train.seed=7", "compare.stage=tune", "compare.tuned=[optim.lr]", 3.9],
                                               ["train.seed=8", "compare.stage=tune", "compare.tuned=[optim.lr]", 3.9]]


def test_a_choice_at_the_grids_edge_extends_the_grid_through_the_cli_and_a_rerun_reaches_the_same(tmp_path):
    """Planted: learning rates so small (1e-5, 2e-5) that after 6 steps the larger is better for
    every variant, so each best lies at the grid's top edge and the sweeper tries 4e-5, then 8e-5
    while the best stays there (extend=2); the verdict runs at the best over all tuning runs."""
    from tests.test_cli import FAST, ablate

    out = tmp_path / "edge"
    command = ["-m", *FAST, "train.max_steps=6", "hydra/sweeper=ablate_tuned",
               "hydra.sweeper.tune={optim.lr:'1e-5,2e-5'}", "hydra.sweeper.tune_seeds=[100]",
               "hydra.sweeper.extend=2", "ffn=swiglu,gelu", "train.seed=0", f"hydra.sweep.dir={out}"]
    done = ablate(*command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = []
    for summary in out.glob("*/summary.json"):
        config = (summary.parent / ".hydra" / "config.yaml").read_text()
        s = json.loads(summary.read_text())
        runs.append({"job": int(summary.parent.name), "ffn": s["choices"]["ffn"], "seed": s["seed"],
                     "loss": s["final_val_loss"], "stage": "tune" if "stage: tune" in config else "verdict",
                     "lr": float(next(o for o in s["overrides"] if o.startswith("optim.lr=")).split("=")[1])})
    runs = pd.DataFrame(runs).sort_values("job")
    tune, verdict = runs[runs["stage"] == "tune"], runs[runs["stage"] == "verdict"]
    grid = tune[tune["job"] < 4]
    assert sorted(grid["lr"]) == [1e-5, 1e-5, 2e-5, 2e-5]
    for ffn, group in grid.groupby("ffn"):  # the planted situation: the grid's top is best
        assert group.loc[group["loss"].idxmin(), "lr"] == 2e-5, ffn
    extension = tune[tune["job"] >= 4]
    assert list(extension["lr"][:2]) == [4e-5, 4e-5] and set(extension["seed"]) == {100}
    for ffn, group in tune.groupby("ffn"):  # one step more exactly while the best stayed at the new edge
        at_4e5 = group.loc[group["lr"] <= 4e-5]
        assert (8e-5 in set(group["lr"])) == (at_4e5.loc[at_4e5["loss"].idxmin(), "lr"] == 4e-5), ffn
        best = group.loc[group["loss"].idxmin(), "lr"]
        assert set(verdict.loc[verdict["ffn"] == ffn, "lr"]) == {best} and best > 2e-5, ffn
    assert list(verdict["job"]) == list(range(len(tune), len(runs)))  # after every tuning run
    recorded = json.loads((out / "tuning.json").read_text())
    assert recorded["grid"] == {"optim.lr": ["1e-05", "2e-05"]} and recorded["extend"] == 2
    assert recorded["n_extension_runs"] == len(extension) and len(recorded["scores"]) == len(tune)
    for choice in recorded["choices"]:
        assert choice["extended"][0] == ["optim.lr=4e-05"] and len(choice["tried"]) == 2 + len(choice["extended"])
    md = (out / "report" / "report.md").read_text()
    assert f"Jobs expected from multirun.yaml: {len(runs)}, run dirs found: {len(runs)}" in md
    assert "extended automatically" in md and "up to 2 grid steps" in md
    assert "it was extended for `swiglu`, `gelu`" in md and "| optim.lr=4e-05 |" in md

    again = ablate(*command, cwd=tmp_path)  # the same command into the same folder: every job skipped
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped") == len(runs) and len(list(out.glob("*/summary.json"))) == len(runs)
    assert json.loads((out / "tuning.json").read_text()) == recorded


def test_the_tuning_table_shows_extended_values_as_columns_blank_where_a_variant_did_not_try_them(tmp_path):
    from analysis.tuning import sweep_grid, tuning_of

    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    _target_: hydra_plugins.ablate_tuning_sweeper.tuning_sweeper.TuningSweeper\n"
        "    tune:\n      optim.lr: 0.0015,0.003,0.006\n    extend: 2\n")
    assert sweep_grid(tmp_path) == ({"optim.lr": [0.0015, 0.003, 0.006]}, 2)
    rows = [("swiglu", lr, loss) for lr, loss in [(0.0015, 5.0), (0.003, 4.8), (0.006, 4.7), (0.012, 4.6),
                                                    (0.024, 4.5)]]          # extended twice, still at the edge
    rows += [("gelu", lr, loss) for lr, loss in [(0.0015, 5.0), (0.003, 4.9), (0.006, 4.8), (0.012, 4.85)]]
    rows += [("relu", lr, loss) for lr, loss in [(0.0015, 5.0), (0.003, 4.7), (0.006, 4.8)]]  # inside
    tune = pd.DataFrame([{"ffn": f, "optim.lr": lr, "final_val_loss": loss, "stage": "tune", "status": "completed",
                          "seed": 1000} for f, lr, loss in rows])
    verdict = pd.DataFrame([{"ffn": f, "optim.lr": lr, "final_val_loss": 4.0, "stage": "verdict",
                             "status": "completed", "seed": 0} for f, lr in [("swiglu", 0.024), ("gelu", 0.006),
                                                                             ("relu", 0.003)]])
    tuning = tuning_of(pd.concat([tune, verdict], ignore_index=True), ["ffn"], "final_val_loss", ["optim.lr"],
                       tmp_path)
    assert tuning.extended == ["swiglu", "gelu"] and tuning.extend == 2
    (text,), (header, table_rows, _) = tuning.blocks(lambda t: (t,), lambda *a: a)
    assert header[1:6] == [f"optim.lr={v}" for v in ("0.0015", "0.003", "0.006", "0.012", "0.024")]
    by_variant = {r[0]: r for r in table_rows}
    assert by_variant["`swiglu`"][5] == "4.5000 ◀" and by_variant["`swiglu`"][-1] == "yes, after extending: widen the grid"
    assert by_variant["`gelu`"][3:6] == ["4.8000 ◀", "4.8500", ""] and by_variant["`gelu`"][-1] == "no"
    assert by_variant["`relu`"][4:6] == ["", ""] and by_variant["`relu`"][-1] == "no"
    assert "extended automatically" in text and "up to 2 grid steps" in text
    assert "it was extended for `swiglu`, `gelu`" in text
