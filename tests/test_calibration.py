"""The verdict is calibrated: on synthetic sweeps in the on-disk format runs write, identical options
are called `better`/`worse` at most 5 % of the time, and a planted difference of three noise standard
deviations with 5 seeds is found, in the right direction, at least 80 % of the time.

Tolerance: with a fixed random generator the counts are deterministic; the bound a count must meet is
the 99.9 % quantile of Binomial(N, 0.05), so a correct test (true rate <= 5 %) fails it with
probability below 0.1 % for any generator seed, while a rule that declares differences 21 % of the
time (the old "margin > max std" rule) exceeds it by far.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.build import build_report
from analysis.verdict import BETTER, WORSE, detectable_difference, holm
from tests.synthetic import write_run

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
SIGMA = 0.02  # seed noise of one run's final loss (nats): the size measured on the nano model


def sweep(root, losses: dict[str, list[float]], axis: str = "norm", drop: tuple[str, int] | None = None):
    """One sweep dir: `losses[option][i]` is the final loss of seed i; `drop` leaves one run out."""
    job = 0
    for option, values in losses.items():
        for seed, loss in enumerate(values):
            if drop != (option, seed):
                write_run(root / str(job), {axis: option, "train.seed": str(seed)}, float(loss))
            job += 1
    return root


def verdicts(root) -> pd.DataFrame:
    return pd.read_csv(build_report(root, plots=False) / "comparisons.csv")


def tolerance(n: int, rate: float = 0.05) -> int:
    return int(stats.binom.ppf(0.999, n, rate))


def test_identical_options_are_rarely_called_different(tmp_path):
    rng = np.random.default_rng(0)
    found, total, tests = 0, 0, set()
    for i in range(150):
        seed_effect = rng.normal(0, SIGMA, 3)  # one seed's data order helps every option alike
        losses = {o: 3.0 + seed_effect + rng.normal(0, SIGMA, 3) for o in ("rms", "ln", "none")}
        # every third sweep loses one baseline run: its options are compared unpaired (Welch)
        drop = ("rms", 2) if i % 3 == 0 else None
        table = verdicts(sweep(tmp_path / str(i), losses, drop=drop))
        found += int(table["verdict"].isin([BETTER, WORSE]).sum())
        total += len(table)
        tests |= set(table["test"])
    assert tests == {"paired t", "Welch"}
    assert total == 300
    print(f"A/A: {found} of {total} comparisons called different (bound {tolerance(total)})")
    assert found <= tolerance(total), f"{found} of {total} identical options called different"


@pytest.mark.parametrize("drop", [None, ("rms", 4)], ids=["paired", "welch"])
def test_a_three_sigma_difference_is_found_in_its_direction(tmp_path, drop):
    rng = np.random.default_rng(1)
    right, n = 0, 80
    for i in range(n):
        sign = 1 if i % 2 else -1  # half the sweeps plant a worse option, half a better one
        losses = {"rms": 3.0 + rng.normal(0, SIGMA, 5), "ln": 3.0 + sign * 3 * SIGMA + rng.normal(0, SIGMA, 5)}
        [row] = verdicts(sweep(tmp_path / str(i), losses, drop=drop)).to_dict("records")
        right += row["verdict"] == (WORSE if sign > 0 else BETTER)
    print(f"3 sigma, {drop or 'paired'}: found {right} of {n}")
    assert right >= 0.8 * n, f"found {right} of {n}"


def test_holm_adjustment():
    # Holm (1979) by hand: sorted p 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04,
    # made non-decreasing: 0.02, 0.03, 0.06, 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, float("nan"), 0.6]) == pytest.approx([1.0, float("nan"), 1.0], nan_ok=True)
    # Rejections equal the step-down rule: reject while p_(i) <= alpha / (m - i + 1).
    rng = np.random.default_rng(2)
    for _ in range(200):
        p = rng.uniform(0, 0.1, rng.integers(1, 8))
        order = np.argsort(p)
        rejected = set()
        for i, j in enumerate(order):
            if p[j] > 0.05 / (len(p) - i):
                break
            rejected.add(int(j))
        assert {i for i, q in enumerate(holm(p.tolist())) if q <= 0.05} == rejected


def test_detectable_difference_has_the_stated_power():
    # Monte Carlo with scipy's own t-test: at the detectable difference the paired test rejects ~80 %.
    rng = np.random.default_rng(3)
    delta = detectable_difference(sd=1.0, n=5, alpha=0.05, paired=True)
    p = stats.ttest_1samp(rng.normal(delta, 1.0, (20000, 5)), 0.0, axis=1).pvalue
    assert (p < 0.05).mean() == pytest.approx(0.80, abs=0.015)
    unpaired = detectable_difference(sd=1.0, n=5, alpha=0.05, paired=False)
    a, b = rng.normal(unpaired, 1.0, (20000, 5)), rng.normal(0.0, 1.0, (20000, 5))
    assert (stats.ttest_ind(a, b, axis=1).pvalue < 0.05).mean() == pytest.approx(0.80, abs=0.015)
    assert detectable_difference(1.0, 10, 0.05, True) < delta  # more seeds resolve less


def test_cli_no_plots_writes_the_contract_table(tmp_path):
    root = sweep(tmp_path / "s", {"rms": [3.00, 3.01, 3.02], "ln": [3.10, 3.12, 3.11]})
    done = subprocess.run([sys.executable, "-m", "analysis.report", str(root), "--no-plots"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = root / "report"
    assert not list(out.glob("*.png"))
    table = pd.read_csv(out / "comparisons.csv")
    assert list(table.columns[:13]) == ["axis", "option", "baseline", "metric", "n", "n_baseline", "paired",
                                        "diff_mean", "ci_low", "ci_high", "p_value", "p_adjusted", "verdict"]
    [row] = table.to_dict("records")
    diffs = np.array([0.10, 0.11, 0.09])
    t = stats.ttest_1samp(diffs, 0.0)
    assert row["baseline"] == "rms" and row["option"] == "ln" and row["paired"]
    assert row["diff_mean"] == pytest.approx(diffs.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(t.confidence_interval(0.95)))
    assert row["p_value"] == pytest.approx(t.pvalue) and row["p_adjusted"] == pytest.approx(t.pvalue)
    assert row["verdict"] == WORSE
    assert "`ln` **worse**" in done.stdout and "Winner" not in done.stdout
    results = pd.read_csv(out / "results.csv")
    assert "sample" not in results.columns


def test_a_real_a_a_sweep_through_the_cli(tmp_path):
    """Two options that train identical models (`logger=none` and `logger=wandb` with W&B disabled):
    with seeds paired, every per-seed difference is exactly zero (the pairing premise holds end to
    end: same seed, same batches, same evaluation windows) and the verdict says no detectable
    difference. (Hydra reads `0.003` and `3e-3` as one float, so two spellings of a number would not
    make two options.)"""
    from tests.test_cli import FAST, ablate

    out = tmp_path / "aa"
    done = ablate("-m", *FAST, "train.batch_size=8", "train.max_steps=150", "optim.lr=1e-2",
                  "schedule.warmup_steps=5", "logger=none,wandb", "train.seed=0,1", f"hydra.sweep.dir={out}",
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [row] = pd.read_csv(out / "report" / "comparisons.csv").to_dict("records")
    assert (row["axis"], row["baseline"], row["option"]) == ("logger", "wandb", "none")
    assert row["paired"] and row["n"] == row["n_baseline"] == 2, row
    assert row["diff_mean"] == 0.0 and row["verdict"] == "no detectable difference"
