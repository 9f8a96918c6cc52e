"""Verdict seeds in looks (analysis/sequential.py, analysis/family.LookPlan, analysis/interim.states): the
spending function's exact values, conditional power against a Monte Carlo of the real t-test, and the
whole sequential procedure calibrated by simulation, every look counted, with the report's own code."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hydra.errors import HydraException
from omegaconf import OmegaConf
from scipy import stats

from analysis.family import compare_axes
from analysis.interim import DECIDED, FUTILE, OPEN, states
from analysis.sequential import conditional_power, look_levels, spent
from analysis.verdict import BETTER, WORSE
from hydra_plugins.ablate_tuning_sweeper.tuning_sweeper import checked_budget, checked_looks
from tests.test_calibration import SIGMA, tolerance

LOOKS = [3, 6, 10]


def test_spending_functions_have_their_closed_forms_and_the_looks_spend_exactly_alpha():
    # O'Brien-Fleming-like at t = 0.5: 2 (1 - Phi(1.959964 / sqrt(0.5))) = 2 (1 - Phi(2.771808)) = 0.005575
    assert spent(0.5, 0.05, "obrien_fleming") == pytest.approx(0.0055746, abs=2e-7)
    assert spent(0.5, 0.05, "pocock") == pytest.approx(0.05 * math.log(1 + (math.e - 1) * 0.5))
    for kind in ("obrien_fleming", "pocock"):
        assert spent(0.0, 0.05, kind) == 0.0 and spent(1.0, 0.05, kind) == pytest.approx(0.05)
        levels = look_levels(LOOKS, 0.05, kind)
        assert sum(levels) == pytest.approx(0.05) and all(x > 0 for x in levels)
    assert look_levels([], 0.05) == [0.05]
    obf, pocock = look_levels(LOOKS, 0.05, "obrien_fleming"), look_levels(LOOKS, 0.05, "pocock")
    assert obf[0] < pocock[0] and obf[-1] > pocock[-1]  # one spends late, the other early


def test_conditional_power_matches_a_monte_carlo_of_the_final_t_test():
    rng = np.random.default_rng(0)
    first = np.array([0.8, 1.3, 0.2, 1.1, 0.6, 1.4])
    mean, sd = first.mean(), first.std(ddof=1)
    future = rng.normal(mean, sd, (40000, 4))
    final = np.concatenate([np.broadcast_to(first, (40000, 6)), future], axis=1)
    simulated = float((stats.ttest_1samp(final, 0.0, axis=1).pvalue < 0.01).mean())
    assert conditional_power(first, 10, 0.01) == pytest.approx(simulated, abs=0.04)
    assert conditional_power(first, 6, 0.01) != conditional_power(first, 6, 0.01)  # no seed to come: NaN
    assert conditional_power([0.01, -0.012, 0.003], 10, 0.01) < 0.1  # a trend near 0 is futile


def frame(losses: dict[str, np.ndarray], seeds: dict[str, list[int]], look_of: dict[int, int]) -> pd.DataFrame:
    rows = [{"norm": o, "seed": s, "status": "completed", "final_val_loss": float(losses[o][s]), "stage": "verdict",
             "look": look_of[s], "did_not_learn": False} for o in losses for s in seeds[o]]
    df = pd.DataFrame(rows)
    df.attrs.update({"override_keys": ["norm"]})
    return df


def sequential_sweep(losses: dict[str, np.ndarray], settings: dict) -> pd.DataFrame:
    """The sweeper's loop on planted losses: look 1 every option, then only the open comparisons'
    options (and the baseline) get the next look's seeds; returns the final comparisons."""
    look_of = {s: next(k for k, n in enumerate(LOOKS, 1) if s < n) for s in range(LOOKS[-1])}
    seeds = {o: list(range(LOOKS[0])) for o in losses}
    for k in range(1, len(LOOKS)):
        open_options = {c["option"] for c in states(frame(losses, seeds, look_of), settings) if c["state"] == OPEN}
        for o in open_options | ({"rms"} if open_options else set()):
            seeds[o] += list(range(LOOKS[k - 1], LOOKS[k]))
    comparisons, _ = compare_axes(frame(losses, seeds, look_of), ["norm"], "final_val_loss", settings)
    return pd.DataFrame([c.row() for c in comparisons])


SETTINGS = {"alpha": 0.05, "tuned": [], "baseline": {"norm": "rms"}, "looks": LOOKS, "futility": 0.05,
            "spending": "obrien_fleming"}


def test_identical_options_are_rarely_called_different_over_every_look():
    rng = np.random.default_rng(5)
    found = total = 0
    looks_used = set()
    for _ in range(100):  # 3 comparisons each: 300
        seed_effect = rng.normal(0, SIGMA, LOOKS[-1])
        losses = {o: 3.0 + seed_effect + rng.normal(0, SIGMA, LOOKS[-1]) for o in ("rms", "ln", "none", "layer")}
        table = sequential_sweep(losses, SETTINGS)
        found += int(table["verdict"].isin([BETTER, WORSE]).sum())
        total += len(table)
        looks_used |= set(table["look"])
    print(f"sequential A/A: {found} of {total} called different (bound {tolerance(total)}); looks {looks_used}")
    assert total == 300 and found <= tolerance(total)
    assert looks_used >= {1, 3}  # futile ones stopped after look 1, others ran to the end


def test_a_planted_three_sigma_difference_is_found_and_a_large_one_stops_early():
    rng = np.random.default_rng(6)
    right, n, early, runs = 0, 60, 0, 0
    for i in range(n):
        sign = 1 if i % 2 else -1
        losses = {"rms": 3.0 + rng.normal(0, SIGMA, 10), "ln": 3.0 + sign * 3 * SIGMA + rng.normal(0, SIGMA, 10),
                  "none": 3.0 + 30 * SIGMA + rng.normal(0, SIGMA, 10)}
        table = sequential_sweep(losses, SETTINGS).set_index("option")
        right += table.loc["ln", "verdict"] == (WORSE if sign > 0 else BETTER)
        early += table.loc["none", "verdict"] == WORSE and table.loc["none", "look"] < 3
        assert table.loc["ln", "resolvable"] > 0
    print(f"sequential 3 sigma: found {right} of {n}; 30 sigma decided before the last look {early} of {n}")
    assert right >= 0.8 * n and early >= 0.8 * n


def test_the_looks_and_the_budget_are_checked_before_any_run():
    config = lambda **compare: OmegaConf.create({"compare": compare})
    seeds = [str(s) for s in range(10)]
    assert checked_looks(config(looks=None), seeds, "train.seed") == []
    assert checked_looks(config(looks=[3, 6, 10]), seeds, "train.seed") == [3, 6, 10]
    for bad, needle in (([3, 3, 10], "growing"), ([1, 10], "at least 2"), ([3, 6], "gives 10")):
        with pytest.raises(HydraException, match=needle):
            checked_looks(config(looks=bad), seeds, "train.seed")
    assert checked_budget(config(budget={"runs": 40})) == {"runs": 40.0} and checked_budget(config()) == {}
    with pytest.raises(HydraException, match="must name one cap"):
        checked_budget(config(budget={"hours": 1}))


def test_a_fixed_plan_is_one_look_at_the_whole_alpha():
    rng = np.random.default_rng(7)
    losses = {"rms": 3.0 + rng.normal(0, SIGMA, 5), "ln": 3.1 + rng.normal(0, SIGMA, 5)}
    df = frame(losses, {o: list(range(5)) for o in losses}, {s: None for s in range(5)})
    [c], _ = compare_axes(df, ["norm"], "final_val_loss", {**SETTINGS, "looks": []})
    assert c.look == 1 and c.level == 0.05 and c.p_adjusted == pytest.approx(c.p_value)
    assert states(df, {**SETTINGS, "looks": []})[0]["state"] == DECIDED
    assert FUTILE != OPEN


def test_a_plan_stopped_early_says_what_its_last_look_would_resolve():
    """A comparison futile after look 1 (3 seeds, tested at O'Brien-Fleming's tiny first share): the
    report's "more seeds would resolve" is the plan's last look, 10 seeds at its level, not 5 seeds at look
    1's (which would overstate what more seeds need by an order of magnitude)."""
    from analysis.findings import power_sentence
    from analysis.verdict import detectable_difference

    rng = np.random.default_rng(3)
    noise = rng.normal(0, SIGMA, 3)
    losses = {"rms": 3.0 + noise, "ln": 3.0 + noise + rng.normal(0, SIGMA, 3)}
    df = frame(losses, {o: [0, 1, 2] for o in losses}, {0: 1, 1: 1, 2: 1})
    [c], info = compare_axes(df, ["norm"], "final_val_loss", SETTINGS)
    levels = look_levels(LOOKS, 0.05, "obrien_fleming")
    sd = float(np.std(losses["ln"] - losses["rms"], ddof=1))
    noise_info = info["norm"]
    assert c.look == 1 and noise_info["level"] == pytest.approx(levels[0])
    assert noise_info["more_seeds"] == 10 and noise_info["more_level"] == pytest.approx(levels[-1])
    assert noise_info["detectable_more"] == pytest.approx(detectable_difference(sd, 10, levels[-1], True))
    assert noise_info["detectable_more"] < noise_info["detectable"] / 5
    assert "10 seeds, the plan's last look, would resolve" in power_sentence(noise_info, "final_val_loss")


# --- the real sweeper on planted runs: a fake launcher writes each job's run directory -----------------

class PlantedLauncher:
    """Stands in for Hydra's launcher: each job becomes a run directory (tests/synthetic.write_run) whose
    final loss is planted from its overrides; a directory already there is read, not written (a resume)."""

    def __init__(self, sweep_dir, effect: dict[str, float]):
        self.sweep_dir, self.effect, self.launched = sweep_dir, effect, []

    def loss(self, overrides: dict[str, str]) -> float:
        seed = int(overrides["train.seed"])
        noise = np.random.default_rng([seed, sorted(self.effect).index(overrides["norm"])]).normal(0, SIGMA)
        shared = np.random.default_rng([seed, 99]).normal(0, 2 * SIGMA)  # a seed's luck, common to its variants
        return 3.0 + shared + noise + self.effect[overrides["norm"]] + abs(math.log(float(overrides["optim.lr"]) / 3e-3))

    def launch(self, jobs, initial_job_idx):
        import json

        from hydra.core.utils import JobReturn, JobStatus

        from tests.synthetic import write_run

        returns = []
        for i, job in enumerate(jobs, initial_job_idx):
            overrides = dict(o.split("=", 1) for o in job)
            run = self.sweep_dir / str(i)
            if not (run / "summary.json").is_file():
                write_run(run, overrides, self.loss(overrides))
            self.launched.append(job)
            returns.append(JobReturn(status=JobStatus.COMPLETED,
                                     _return_value=json.loads((run / "summary.json").read_text())["final_val_loss"]))
        return returns


def planted_sweep(sweep_dir, effect, budget=None):
    from hydra_plugins.ablate_tuning_sweeper.tuning_sweeper import TuningSweeper

    sweeper = TuningSweeper(None, {"optim.lr": "0.0015,0.003,0.006"}, [1000], "train.seed", None, extend=0)
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}, "train": {"max_steps": 100},
                                       "compare": {"looks": LOOKS, "budget": budget}})
    sweeper.launcher = PlantedLauncher(sweep_dir, effect)
    sweeper.hydra_context = type("Context", (), {"config_loader": None})()
    sweeper.validate_batch_is_legal = lambda batch: None  # Hydra's composition check: no config loader here
    sweeper.sweep([f"norm={','.join(effect)}", "train.seed=range(0,10)", f"compare.looks=[{','.join(map(str, LOOKS))}]"])
    return sweeper.launcher.launched


def test_the_real_sweeper_gives_later_looks_only_to_open_comparisons_and_a_rerun_launches_the_same(tmp_path):
    import json

    from analysis.build import build_report

    effect = {"rms": 0.0, "ln": 1.5 * SIGMA, "none": 100 * SIGMA}
    launched = planted_sweep(tmp_path, effect)
    verdict = [dict(o.split("=", 1) for o in job) for job in launched if "compare.stage=verdict" in job]
    assert all(v["optim.lr"] == "0.003" for v in verdict)  # every variant tuned to the planted best rate
    record = json.loads((tmp_path / "looks.json").read_text())
    rounds = record["rounds"]
    assert rounds[0]["states"]["norm=none"] == DECIDED  # 100 sigma: decided at the first look (2 df: t > 50 at its share of alpha)
    for before, after in zip(rounds, rounds[1:]):
        still_open = {name.split("=")[1] for name, state in before["states"].items() if state == OPEN}
        trained = {v["norm"] for v in verdict if int(v["compare.look"]) == after["look"]}
        assert trained == (still_open | {"rms"} if still_open else set()), (before, after)
        assert after["seeds"] == [str(s) for s in range(before_n(before), LOOKS[after["look"] - 1])]
    assert sum(r["runs"] for r in rounds) == len(verdict) < 3 * 10  # fewer runs than every seed of every variant
    build_report(tmp_path)
    table = pd.read_csv(tmp_path / "report" / "comparisons.csv").set_index("option")
    assert table.loc["none", "verdict"] == WORSE and table.loc["none", "look"] == 1
    assert table.loc["none", "n_seeds"] == LOOKS[0] and table.loc["ln", "look"] == len(rounds)
    assert table.loc["ln", "resolvable"] < table.loc["none", "resolvable"]  # more seeds resolve less
    md = (tmp_path / "report" / "report.md").read_text()
    assert "The verdict's seeds came in looks (`compare.looks=[3, 6, 10]`)" in md
    assert "| resolvable (80 %) | look | verdict |" in md
    again = planted_sweep(tmp_path, effect)  # the same command into the same folder: the same jobs, in order
    assert again == launched
    timeless = lambda r: [{k: v for k, v in x.items() if k != "wall_s"} for x in r["rounds"]]
    assert timeless(json.loads((tmp_path / "looks.json").read_text())) == timeless(record)


def before_n(round_: dict) -> int:
    return LOOKS[round_["look"] - 1]


def test_a_runs_budget_caps_the_sweep_and_says_so(tmp_path):
    import json

    effect = {"rms": 0.0, "ln": 1.5 * SIGMA, "none": 0.0}
    launched = planted_sweep(tmp_path, effect, budget={"runs": 3 * 3 + 3 * 3 + 2 * 3})
    rounds = json.loads((tmp_path / "looks.json").read_text())["rounds"]
    assert sum(r["runs"] for r in rounds) + 9 == len(launched) <= 3 * 3 + 3 * 3 + 2 * 3  # 9 tuning runs
    # both comparisons open after look 1, but the cap affords one: the more promising, with its baseline
    assert set(rounds[0]["states"].values()) == {OPEN} and [r["runs"] for r in rounds] == [9, 6]
    assert len(rounds[1]["variants"]) == 2 and 0 in rounds[1]["variants"]  # rms, the baseline, is variant 0


def test_the_verdict_bench_reads_the_fixed_plan_off_the_first_look(tmp_path):
    """`python -m ablate.bench --verdict`: the fixed 3-seed plan is the sequential sweep's first look,
    tested at the whole alpha; here recomputed from that look's runs alone by the report's code."""
    from analysis.bench_verdict import plans, report
    from analysis.collect import load_results

    planted_sweep(tmp_path, {"rms": 0.0, "ln": 1.5 * SIGMA, "none": 100 * SIGMA})
    found = plans(tmp_path)
    fixed = {c["option"]: c for c in found["fixed"]["comparisons"]}
    looks = {c["option"]: c for c in found["looks"]["comparisons"]}
    assert {c["n_seeds"] for c in fixed.values()} == {3} and looks["ln"]["n_seeds"] == 10
    assert found["fixed"]["runs"] == 9 + 9 and found["looks"]["runs"] == 9 + 9 + 6 + 8  # tuning + looks
    assert looks["ln"]["resolvable"] < fixed["ln"]["resolvable"] / 2  # 10 seeds against 3
    assert looks["none"] == {**looks["none"], "look": 1, "n_seeds": 3}  # decided at look 1: the same runs
    rows = pd.DataFrame(found["fixed"]["comparisons"])
    df = load_results(tmp_path)
    first = df[(df["stage"] == "verdict") & (df["seed"].astype(int) < 3)]
    [ln] = rows[rows["option"] == "ln"].to_dict("records")
    diffs = (first[first["norm"] == "ln"].set_index("seed")["final_val_loss"]
             - first[first["norm"] == "rms"].set_index("seed")["final_val_loss"])
    assert ln["diff_mean"] == pytest.approx(diffs.mean()) and ln["p_value"] == pytest.approx(
        stats.ttest_1samp(diffs, 0.0).pvalue)
    assert ln["paired_sd"] == pytest.approx(diffs.std(ddof=1))  # what the resolvable difference scales with
    verdict = df[df["stage"] == "verdict"]
    assert found["chosen"] == dict(zip(verdict["norm"], verdict["optim.lr"].astype(str)))  # the rates they ran at
    found["looks"]["wall_s"], found["fixed"]["wall_s"] = 60.0, 30.0
    assert "resolvable, fixed / looks:" in report({"planted": found})
