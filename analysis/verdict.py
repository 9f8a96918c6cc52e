"""Each option against its axis's baseline: seed-paired t-test (Welch's when the seeds do not pair),
95 % confidence interval of the difference, Holm's correction across every comparison of the report,
and one verdict word per option (`better`, `worse`, `no detectable difference`, `unstable`,
`not compared`).

Divergence is evidence, not a gap in the data: where one side diverged in a seed and the other did
not, the comparison is tested by ranks with each diverged run ranked worst (Wilcoxon's signed-rank
test on the seeds when they pair, Mann-Whitney's rank-sum test otherwise; exact by permutation, so
the error rate holds at any seed count), and the difference with its interval is given over the
seeds where both trained. Significant after Holm: `better`/`worse`; otherwise `unstable`, with the
counts. With n seeds the signed-rank test's smallest p is 2 / 2^n, so 3 seeds can only say
`unstable`; seeds that diverged on both sides say nothing about the choice and are left out.

Why paired: two runs with the same `train.seed` see the same batches in the same order and are
evaluated on the same validation windows (ablate/training/loop.py draws batches from
`default_rng(train.seed)` and evaluation windows from a fixed seed), so the per-seed difference
cancels the luck of the data order, which is most of the seed noise. The unit of replication is
the seed: in a multi-axis sweep the differences of one seed are first averaged over the other
axes' values (the pairs of one seed share a data order, so they are not independent).

Distributions and tests come from scipy.stats; Holm's procedure is a sort and a running maximum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from analysis.sequential import holm

BETTER, WORSE, NO_DIFFERENCE, NOT_COMPARED = "better", "worse", "no detectable difference", "not compared"
UNSTABLE = "unstable"
VERDICTS = (BETTER, WORSE, NO_DIFFERENCE, UNSTABLE, NOT_COMPARED)
CONFIDENCE = 0.95
POWER = 0.80
COLUMNS = ["axis", "option", "baseline", "metric", "n", "n_baseline", "paired", "diff_mean", "ci_low",
           "ci_high", "p_value", "p_adjusted", "verdict", "note", "look", "resolvable", "n_seeds", "test", "did_not_learn", "diverged",
           "diverged_baseline", "n_outcomes", "n_outcomes_baseline", "conditional_power"]
RANK_RESAMPLES = 9999  # permutations: exact enumeration up to 13 seeds (2^13 sign flips), seeded beyond


@dataclass
class Comparison:
    axis: str
    option: str
    baseline: str
    metric: str
    n: int = 0
    n_baseline: int = 0
    paired: bool = False
    diff_mean: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    p_adjusted: float = math.nan
    verdict: str = NOT_COMPARED
    note: str = ""
    look: int = 1            # the look of a sequential plan its verdict was reached at (1: a fixed plan)
    resolvable: float = math.nan  # smallest difference its seeds resolve at 80 % power, at its look's level
    conditional_power: float = math.nan  # open after its look: P(the last look rejects | the trend so far)
    level: float = math.nan  # the per-test level its seeds had (alpha_look / tests): what `resolvable` uses
    spread: float = math.nan  # sd of the per-seed differences (paired), else the pooled sd of one run
    n_seeds: int = 0
    test: str = ""
    did_not_learn: bool = False
    diverged: int = 0                      # the option's runs that diverged
    diverged_baseline: int = 0             # the baseline's runs that diverged
    n_outcomes: int = 0                    # the option's runs that trained or diverged (of which `diverged`)
    n_outcomes_baseline: int = 0
    diverged_at: str = ""    # the option's rate (or tuned values) in its diverged runs, e.g. "rate 0.006"
    tuned: bool = False      # that rate was chosen per variant by the tuning stage
    unit: str = "seeds"      # what the divergence counts count: seeds, or runs when other axes are swept
    advice: str = ""         # for `unstable`: what would settle it (the report prints it under the table)
    reason: str = ""  # why not compared, in a few words (the opening paragraph uses it)
    seed_diffs: dict[Any, float] = field(default_factory=dict)  # seed -> option - baseline (paired only)
    unstable: bool = False   # one side diverged where the other did not: tested by ranks
    direction: int = 0       # +1: the test's evidence points to the option being worse, -1 better
    n_both: int = 0          # seeds (or runs, unpaired) where both trained: what diff_mean is over
    p_both: float = math.nan  # the t-test of diff_mean over those (uncorrected; the note gives it)

    def row(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in COLUMNS}

    def diverged_where(self) -> str:
        """' at its tuned rate 0.006': the rate the diverging side trained at, as the report says it."""
        return f" at its {'tuned ' if self.tuned else ''}{self.diverged_at}" if self.diverged_at else ""


def _t_test(values: np.ndarray) -> tuple[float, float, float]:
    """(p, ci_low, ci_high) of a one-sample t-test of mean 0; no spread: exact answer, no p."""
    mean = float(values.mean())
    if np.ptp(values) == 0:  # the limit of the t statistic: 0/0 -> no evidence, x/0 -> certain
        return (1.0 if mean == 0 else 0.0), mean, mean
    result = stats.ttest_1samp(values, 0.0)
    ci = result.confidence_interval(CONFIDENCE)
    return float(result.pvalue), float(ci.low), float(ci.high)


def _welch(option: np.ndarray, baseline: np.ndarray) -> tuple[float, float, float]:
    if np.ptp(option) == 0 and np.ptp(baseline) == 0:
        diff = float(option.mean() - baseline.mean())
        return (1.0 if diff == 0 else 0.0), diff, diff
    result = stats.ttest_ind(option, baseline, equal_var=False)
    ci = result.confidence_interval(CONFIDENCE)
    return float(result.pvalue), float(ci.low), float(ci.high)


def _key(frame: pd.DataFrame, cell_keys: list[str]) -> pd.Series:
    """(seed, other axes' values) per run: runs with equal keys saw the same data order."""
    parts = [frame["seed"].astype("string")] + [frame[k].astype("string") for k in cell_keys]
    return pd.Series(list(zip(*parts)), index=frame.index)


def outcomes(runs: pd.DataFrame, metric: str, cell_keys: list[str]) -> pd.Series:
    """Per key: the metric where the runs trained, +inf where one diverged (ranked worst); runs that
    failed, are still running or are unreadable are no outcome."""
    trained, diverged = _usable(runs, metric), runs["status"] == "diverged"
    kept = runs[trained | diverged]
    if kept.empty:
        return pd.Series(dtype=float)
    value = pd.to_numeric(kept[metric], errors="coerce").where(trained[kept.index], np.inf)
    return value.groupby(_key(kept, cell_keys)).mean()


def rank_test(opt: pd.Series, base: pd.Series, paired: bool) -> tuple[float, int]:
    """(two-sided p, direction) of a rank test with diverged (+inf) ranked worst; direction +1 when
    the option ranks worse. Paired: Wilcoxon's signed-rank statistic over the seeds, a seed's score
    the mean finite difference over its cells, or +-inf where one side diverged in more of its cells;
    otherwise the rank sum of the option's runs (Mann-Whitney). The null distribution is scipy's
    permutation test (every sign flip or relabelling up to RANK_RESAMPLES, a seeded sample beyond),
    which stays exact with the ties that diverged runs make, so the level holds at 3 seeds as at 30."""
    if paired:
        d = opt - base.loc[opt.index]
        d = d[~(np.isinf(opt) & np.isinf(base.loc[opt.index]))]  # both diverged: no evidence either way
        d = d.where(~np.isinf(opt.loc[d.index]), np.inf).where(~np.isinf(base.loc[d.index]), -np.inf)

        def seed_score(x: pd.Series) -> float:
            net = int((x == np.inf).sum()) - int((x == -np.inf).sum())
            finite = x[np.isfinite(x)]
            return math.copysign(np.inf, net) if net else (float(finite.mean()) if len(finite) else math.nan)

        x = d.groupby([k[0] for k in d.index]).agg(seed_score).dropna().to_numpy(float)
        x = x[x != 0]  # Wilcoxon's convention: a seed with no difference carries no sign
        if x.size == 0:
            return 1.0, 0
        ranks = stats.rankdata(np.abs(x))  # inf ranks above every finite difference, ties averaged
        signed_rank_sum = lambda v, axis=-1: np.sum(np.sign(v) * ranks, axis=axis)
        observed = signed_rank_sum(x)
        if x.size < 2:  # one sign flip either way: p = 1 exactly
            return 1.0, int(np.sign(observed))
        result = stats.permutation_test((x,), signed_rank_sum, permutation_type="samples", vectorized=True,
                                        n_resamples=RANK_RESAMPLES, rng=np.random.default_rng(0))
        return min(float(result.pvalue), 1.0), int(np.sign(observed))
    a, b = opt.to_numpy(float), base.to_numpy(float)
    if a.size < 2 or b.size < 2:  # too few to permute: no evidence claimed (p = 1, conservative)
        return 1.0, int(np.sign(np.median(a) - np.median(b))) if a.size and b.size else 0

    def rank_sum(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        return stats.rankdata(np.concatenate([u, v], axis=axis), axis=axis)[..., :u.shape[axis]].sum(axis=axis)

    result = stats.permutation_test((a, b), rank_sum, permutation_type="independent", vectorized=True,
                                    n_resamples=RANK_RESAMPLES, rng=np.random.default_rng(0))
    return min(float(result.pvalue), 1.0), int(np.sign(rank_sum(a, b) - a.size * (a.size + b.size + 1) / 2))


def compare_option(option_runs: pd.DataFrame, baseline_runs: pd.DataFrame, metric: str,
                   cell_keys: list[str], comparison: Comparison) -> Comparison:
    """Fill `comparison` from the option's and the baseline's runs (those that trained or diverged).

    Paired when every option run has a baseline run with the same seed and the same `cell_keys`
    values (the other axes). Where one side diverged and the other did not (`unstable`), the test is
    by ranks over every outcome, diverged ranked worst, and the difference is over the both-trained."""
    c = comparison
    c.unit = "runs" if cell_keys else "seeds"
    opt, base = outcomes(option_runs, metric, cell_keys), outcomes(baseline_runs, metric, cell_keys)
    c.diverged, c.diverged_baseline = int(np.isinf(opt).sum()), int(np.isinf(base).sum())
    c.n_outcomes, c.n_outcomes_baseline = len(opt), len(base)
    paired_outcomes = len(opt) > 0 and set(opt.index) <= set(base.index)
    keys = opt.index if paired_outcomes else opt.index.union(base.index)
    opt_diverged = opt.reindex(keys) == np.inf  # a key without an outcome on a side: not diverged there
    c.unstable = bool((opt_diverged != (base.reindex(keys) == np.inf)).any())
    # The difference: over the keys where both trained (a twin of a diverged run says nothing here).
    dead = set(opt.index[np.isinf(opt)]) | set(base.index[np.isinf(base)])
    opt_trained = option_runs[_usable(option_runs, metric) & ~_key(option_runs, cell_keys).isin(dead)]
    base_trained = baseline_runs[_usable(baseline_runs, metric) & ~_key(baseline_runs, cell_keys).isin(dead)]
    _difference(opt_trained, base_trained, metric, cell_keys, c)
    c.direction = int(np.sign(c.diff_mean)) if not math.isnan(c.diff_mean) else 0
    if c.unstable:
        c.p_both = c.p_value
        c.p_value, c.direction = rank_test(opt, base, paired_outcomes)
        c.paired = paired_outcomes
        c.n, c.n_baseline = len(opt), len(base)  # the rank test's outcomes; diff_mean's are in the note
        c.test = "signed-rank, diverged worst" if paired_outcomes else "rank-sum, diverged worst"
        c.n_seeds = len({k[0] for k in opt.index})
        c.note = "; ".join(p for p in (_instability_note(c), c.note) if p)
    elif c.diverged and not c.n_both:  # only where the baseline diverged too, and nowhere did both train
        c.reason, c.note = "both diverged", (f"both diverged wherever either ran (`{c.option}` {c.diverged} of "
                                             f"{c.n_outcomes}, the baseline {c.diverged_baseline} of "
                                             f"{c.n_outcomes_baseline})")
    elif c.diverged:  # only where the baseline diverged too
        c.note = "; ".join(p for p in (c.note, f"left out: {c.diverged} {c.unit} where both diverged "
                                                f"(no evidence either way)") if p)
    return c


def _instability_note(c: Comparison) -> str:
    unit = "seeds" if c.seed_diffs else "runs"
    both = (f"difference and CI over the {c.n_both} {unit} where both trained" if c.n_both and
            not math.isnan(c.diff_mean) else f"no {unit[:-1]} where both trained")
    if not math.isnan(c.p_both):
        both += f" (t-test p {c.p_both:.3g}, uncorrected)"
    return (f"diverged: `{c.option}` {c.diverged} of {c.n_outcomes}, baseline `{c.baseline}` "
            f"{c.diverged_baseline} of {c.n_outcomes_baseline}; {both}")


def _difference(option_runs: pd.DataFrame, baseline_runs: pd.DataFrame, metric: str,
                cell_keys: list[str], c: Comparison) -> None:
    """Difference, interval and t-test over runs that trained: paired per seed when they pair."""
    opt = option_runs.groupby(_key(option_runs, cell_keys))[metric].mean() if len(option_runs) else pd.Series(dtype=float)
    base = baseline_runs.groupby(_key(baseline_runs, cell_keys))[metric].mean() if len(baseline_runs) else pd.Series(dtype=float)
    c.n, c.n_baseline = len(option_runs), len(baseline_runs)
    c.paired = len(opt) > 0 and set(opt.index) <= set(base.index)
    if c.paired:
        diffs = opt - base.loc[opt.index]
        per_seed = diffs.groupby([k[0] for k in diffs.index]).mean()
        keys = _key(baseline_runs, cell_keys)
        c.n_baseline = int(sum(int((keys == k).sum()) for k in opt.index))
        c.seed_diffs = per_seed.to_dict()
        c.n_seeds = c.n_both = len(per_seed)
        c.diff_mean = float(per_seed.mean())
        if c.n_seeds < 2:
            c.test, c.note = "paired", "one seed: no spread to test against (run at least 3 seeds)"
            return
        c.test = "paired t"
        c.spread = float(per_seed.std(ddof=1))
        c.p_value, c.ci_low, c.ci_high = _t_test(per_seed.to_numpy(float))
    else:
        a, b = option_runs[metric].to_numpy(float), baseline_runs[metric].to_numpy(float)
        c.n_seeds = int(option_runs["seed"].nunique())
        c.n_both = min(a.size, b.size)
        c.diff_mean = float(a.mean() - b.mean()) if a.size and b.size else math.nan
        if a.size < 2 or b.size < 2:
            c.test = "Welch"
            c.note = (f"fewer than 2 usable runs ({a.size} option, {b.size} baseline): no spread to test "
                      f"against")
            return
        c.test = "Welch"
        c.spread = pooled_sd([a, b])[0]
        c.p_value, c.ci_low, c.ci_high = _welch(a, b)
        c.note = "seeds do not pair (a run without its baseline twin): Welch's test, less sensitive"
    if c.ci_low == c.ci_high:
        c.note = "the same difference on every seed (no spread): check that the seeds really differ"


def decide(comparisons: list[Comparison], alpha: float) -> list[Comparison]:
    """Holm-adjust every p-value of the report together, then give each comparison its word."""
    tested = [c for c in comparisons if not math.isnan(c.p_value)]
    for c, p in zip(tested, holm([c.p_value for c in tested])):
        c.p_adjusted = p
        if p < alpha and c.direction:
            c.verdict = BETTER if c.direction < 0 else WORSE
        else:
            c.verdict = UNSTABLE if c.unstable else NO_DIFFERENCE
    return comparisons


# -- power ---------------------------------------------------------------------------------------
def detectable_difference(sd: float, n: int, alpha: float, paired: bool, power: float = POWER) -> float:
    """Smallest true difference a two-sided t-test at level `alpha` finds with probability `power`
    given a noise `sd` (of the per-seed differences when paired, of one run otherwise) and `n` seeds
    per option. Power from the noncentral t distribution (scipy.stats.nct)."""
    if not (sd > 0) or n < 2:
        return math.nan
    df = n - 1 if paired else 2 * n - 2
    scale = sd / math.sqrt(n) if paired else sd * math.sqrt(2.0 / n)
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(delta: float) -> float:
        nc = delta / scale
        # P(T < -crit) written as sf(crit) at -nc: scipy's nct.cdf is NaN deep in its lower tail.
        return stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc) - power

    hi = scale * 4
    while shortfall(hi) < 0:
        hi *= 2
    return float(optimize.brentq(shortfall, 0.0, hi, xtol=scale * 1e-6))


def pooled_sd(groups: list[np.ndarray]) -> tuple[float, int]:
    """Pooled standard deviation over groups (each group's own mean removed) and its degrees of
    freedom."""
    num = dof = 0.0
    for g in groups:
        if len(g) >= 2:
            num += (len(g) - 1) * float(np.var(g, ddof=1))
            dof += len(g) - 1
    return (math.sqrt(num / dof), int(dof)) if dof else (math.nan, 0)


def seeds_for_rank_verdict(level: float) -> int:
    """Fewest seeds at which the signed-rank test can reach `level` at all: its smallest two-sided p,
    every seed favouring one side, is 2 / 2^n."""
    return int(math.floor(1 - math.log2(level))) + 1


def instability_advice(c: Comparison, level: float) -> str:
    """What would settle an `unstable` comparison: more seeds for a rank verdict, and what to change
    so the diverging side trains (tuning again is no help when the rate was tuned per variant)."""
    who = f"`{c.option}`" if c.diverged else f"the baseline `{c.baseline}`"
    if c.tuned:
        fix = (f"its rate was already tuned per variant, so tuning again will not help: a lower grid (the "
               f"tuning seed's best rate can sit at the edge of stability), a longer warmup "
               f"(schedule.warmup_steps) or more seeds would")
    else:
        fix = ("tune the rate per variant (compare.tuned=[optim.lr] with hydra/sweeper=ablate_tuned), lower "
               "it, or lengthen the warmup (schedule.warmup_steps)")
    return (f"{who} diverged{c.diverged_where()} where the other side did not. To settle it: {fix}. A rank verdict "
            f"(`better`/`worse`) needs at least {seeds_for_rank_verdict(level)} seeds that all favour one side "
            f"(the signed-rank test's smallest p with n seeds is 2 / 2^n, against level {level:.3g} here).")


def _usable(runs: pd.DataFrame, metric: str) -> pd.Series:
    ok = (runs["status"] == "completed") & pd.to_numeric(runs[metric], errors="coerce").notna()
    if "did_not_learn" in runs:
        ok &= ~runs["did_not_learn"].astype(bool)
    return ok


def comparisons_frame(comparisons: list[Comparison]) -> pd.DataFrame:
    return pd.DataFrame([c.row() for c in comparisons], columns=COLUMNS)
