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

from hydra_plugins.ablate_tuning_sweeper.tuning_sweeper import choose, plan
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
import ablate.config
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
