"""Each option against its axis's baseline: seed-paired t-test (Welch's when the seeds do not pair),
95 % confidence interval of the difference, Holm's correction across every comparison of the report,
and one verdict word per option (`better`, `worse`, `no detectable difference`, `not compared`).

Why paired: two runs with the same `train.seed` see the same batches in the same order and are
evaluated on the same validation windows (ablate/train.py draws batches from
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

BETTER, WORSE, NO_DIFFERENCE, NOT_COMPARED = "better", "worse", "no detectable difference", "not compared"
VERDICTS = (BETTER, WORSE, NO_DIFFERENCE, NOT_COMPARED)
CONFIDENCE = 0.95
POWER = 0.80
COLUMNS = ["axis", "option", "baseline", "metric", "n", "n_baseline", "paired", "diff_mean", "ci_low",
           "ci_high", "p_value", "p_adjusted", "verdict", "note", "n_seeds", "test", "did_not_learn"]


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
    n_seeds: int = 0
    test: str = ""
    did_not_learn: bool = False
    reason: str = ""  # why not compared, in a few words (the opening paragraph uses it)
    seed_diffs: dict[Any, float] = field(default_factory=dict)  # seed -> option - baseline (paired only)

    def row(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in COLUMNS}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): the i-th smallest p times (m - i + 1), made
    non-decreasing, capped at 1. NaN entries stay NaN and do not count in m."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    if valid.size == 0:
        return out.tolist()
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out.tolist()


def same_value(a: Any, b: Any) -> bool:
    """Option names compare as text; numbers also by value (`3e-3` is `0.003`)."""
    if str(a) == str(b):
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


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


def compare_option(option_runs: pd.DataFrame, baseline_runs: pd.DataFrame, metric: str,
                   cell_keys: list[str], comparison: Comparison) -> Comparison:
    """Fill `comparison` from the usable runs of the option and of the baseline.

    Paired when every option run has a baseline run with the same seed and the same `cell_keys`
    values (the other axes)."""
    def key(frame: pd.DataFrame) -> pd.Series:
        parts = [frame["seed"].astype("string")] + [frame[k].astype("string") for k in cell_keys]
        return pd.Series(list(zip(*parts)), index=frame.index)

    opt = option_runs.groupby(key(option_runs))[metric].mean() if len(option_runs) else pd.Series(dtype=float)
    base = baseline_runs.groupby(key(baseline_runs))[metric].mean() if len(baseline_runs) else pd.Series(dtype=float)
    c = comparison
    c.n, c.n_baseline = len(option_runs), len(baseline_runs)
    c.paired = len(opt) > 0 and set(opt.index) <= set(base.index)
    if c.paired:
        diffs = opt - base.loc[opt.index]
        per_seed = diffs.groupby([k[0] for k in diffs.index]).mean()
        c.n_baseline = int(sum(len(baseline_runs[key(baseline_runs) == k]) for k in opt.index))
        c.seed_diffs = per_seed.to_dict()
        c.n_seeds = len(per_seed)
        c.diff_mean = float(per_seed.mean())
        if c.n_seeds < 2:
            c.test, c.note = "paired", "one seed: no spread to test against (run at least 3 seeds)"
            return c
        c.test = "paired t"
        c.p_value, c.ci_low, c.ci_high = _t_test(per_seed.to_numpy(float))
    else:
        a, b = option_runs[metric].to_numpy(float), baseline_runs[metric].to_numpy(float)
        c.n_seeds = int(option_runs["seed"].nunique())
        c.diff_mean = float(a.mean() - b.mean()) if a.size and b.size else math.nan
        if a.size < 2 or b.size < 2:
            c.test = "Welch"
            c.note = (f"fewer than 2 usable runs ({a.size} option, {b.size} baseline): no spread to test "
                      f"against")
            return c
        c.test = "Welch"
        c.p_value, c.ci_low, c.ci_high = _welch(a, b)
        c.note = "seeds do not pair (a run without its baseline twin): Welch's test, less sensitive"
    if c.ci_low == c.ci_high:
        c.note = "the same difference on every seed (no spread): check that the seeds really differ"
    return c


def decide(comparisons: list[Comparison], alpha: float) -> list[Comparison]:
    """Holm-adjust every p-value of the report together, then give each comparison its word."""
    tested = [c for c in comparisons if not math.isnan(c.p_value)]
    for c, p in zip(tested, holm([c.p_value for c in tested])):
        c.p_adjusted = p
        if p < alpha:
            c.verdict = BETTER if c.diff_mean < 0 else WORSE
        else:
            c.verdict = NO_DIFFERENCE
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


# -- from runs to comparisons --------------------------------------------------------------------
CONF = __import__("pathlib").Path(__file__).resolve().parents[1] / "conf"


def project_default(axis: str) -> str | None:
    """The option (group axis) or value (dotted key) that conf/config.yaml's defaults list selects,
    read from this repository's conf/ (no Hydra composition, no training code)."""
    import yaml

    try:
        defaults = yaml.safe_load((CONF / "config.yaml").read_text(encoding="utf-8"))["defaults"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    chosen = {str(k): str(v) for item in defaults if isinstance(item, dict) for k, v in item.items()}
    group, _, rest = axis.lstrip("+").partition(".")
    if not rest:
        return chosen.get(group)
    if group not in chosen:
        return None
    try:
        node = yaml.safe_load((CONF / group / f"{chosen[group]}.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    for part in rest.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return None if node is None or isinstance(node, (dict, list)) else str(node)


def baseline_of(axis: str, options: list[str], settings: dict[str, Any]) -> tuple[str, str]:
    """(baseline option, where it came from) for an axis whose options were run in `options` order."""
    def find(wanted: str) -> str | None:  # the spelling as run; by value only if no run spells it so
        return wanted if wanted in options else next((o for o in options if same_value(o, wanted)), None)

    named = settings.get("baseline", {})
    for key in (axis, axis.lstrip("+")):
        if key in named:
            return find(named[key]) or named[key], "compare.baseline"
    default = project_default(axis)
    if default is not None:
        match = find(default)
        if match is not None:
            return match, "the default in conf/config.yaml"
    return options[0], ("the first option run (no default known for this axis: set "
                        f"compare.baseline={{{axis.lstrip('+')}: OPTION}} to choose)")


def compare_axes(df: pd.DataFrame, axes: list[str], metric: str, settings: dict[str, Any],
                 context: list[str] | None = None) -> tuple[list[Comparison], dict[str, dict[str, Any]]]:
    """Every option of every axis against the axis's baseline, Holm-corrected together.

    `context`: swept keys that are not compared but hold cells apart like another axis (a ladder's
    rung: runs pair by seed within a rung, and a difference is averaged over the rungs).
    Returns the comparisons and, per axis, its baseline, where the baseline came from, and the
    noise and power figures (`axis_noise`)."""
    alpha = float(settings.get("alpha", 0.05))
    context = list(context or [])
    runs = df[df["stage"] == "verdict"] if "stage" in df else df
    comparisons: list[Comparison] = []
    info: dict[str, dict[str, Any]] = {}
    for axis in axes:
        values = runs[axis].astype("string").fillna("?")
        options = list(dict.fromkeys(values))
        baseline, source = baseline_of(axis, options, settings)
        base_mask = values == baseline
        others = [a for a in axes if a != axis] + context
        info[axis] = {"baseline": baseline, "source": source, "options": options}
        for option in options:
            if option == baseline:
                continue
            c = Comparison(axis, option, baseline, metric)
            opt_mask = values == option
            opt_runs, base_runs = _clean_cells(runs, opt_mask, base_mask, others, metric, baseline, c)
            if opt_runs is None:
                comparisons.append(c)
                continue
            compare_option(opt_runs[_usable(opt_runs, metric)], base_runs[_usable(base_runs, metric)],
                           metric, others, c)
            excluded = _status_counts(runs[opt_mask])
            if excluded:
                c.note = "; ".join(p for p in (c.note, f"not in the test: {excluded}") if p)
            comparisons.append(c)
    decide(comparisons, alpha)
    n_tests = sum(not math.isnan(c.p_value) for c in comparisons)
    for axis in axes:
        info[axis].update(axis_noise(df, runs, axis, axes + context, metric, [c for c in comparisons if c.axis == axis],
                                     alpha, n_tests))
    return comparisons, info


def _usable(runs: pd.DataFrame, metric: str) -> pd.Series:
    ok = (runs["status"] == "completed") & pd.to_numeric(runs[metric], errors="coerce").notna()
    if "did_not_learn" in runs:
        ok &= ~runs["did_not_learn"].astype(bool)
    return ok


def _status_counts(runs: pd.DataFrame) -> str:
    counts = runs.loc[runs["status"] != "completed", "status"].value_counts()
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _blocking_problem(runs: pd.DataFrame, metric: str) -> tuple[str, str]:
    """(short reason, sentence) why a set of runs cannot enter a comparison; ('', '') when it can."""
    n = len(runs)
    if "did_not_learn" in runs and runs["did_not_learn"].any():
        k = int(runs["did_not_learn"].sum())
        return "did not learn", (f"did not learn in {k} of {n} runs (final loss within 2 % of the unigram "
                                 f"baseline): its learning rate or training budget does not suit it, so "
                                 f"a comparison would measure that, not the design")
    diverged = int((runs["status"] == "diverged").sum())
    if diverged:
        return "diverged", (f"diverged in {diverged} of {n} runs: at this learning rate it does not "
                            f"train; tune the rate per variant (compare.tuned) before comparing")
    if not _usable(runs, metric).any():
        return "no completed run", "has no completed run with a " + metric
    return "", ""


def _clean_cells(runs: pd.DataFrame, opt_mask: pd.Series, base_mask: pd.Series, others: list[str],
                 metric: str, baseline: str, c: Comparison) -> tuple[Any, Any]:
    """The option's and the baseline's runs, less the cells (values of the other axes) where either
    side did not learn or diverged: there the difference would measure the learning rate, not the
    design. (None, None) with `c.note` set when no cell is left."""
    cell = (runs[others].astype("string").fillna("?").agg(" ".join, axis=1) if others
            else pd.Series("", index=runs.index))
    keep, dropped = pd.Series(True, index=runs.index), []
    c.did_not_learn = False
    for value in dict.fromkeys(cell[opt_mask | base_mask]):
        here = cell == value
        short, long = _blocking_problem(runs[opt_mask & here], metric)
        side = f"`{c.option}`"
        if not short:
            short, long = _blocking_problem(runs[base_mask & here], metric)
            side = f"the baseline `{baseline}`"
        elif short == "did not learn":
            c.did_not_learn = True
        if short:
            keep &= ~here
            where = ", ".join(f"{a}={v}" for a, v in zip(others, value.split(" "))) if others else ""
            dropped.append((short, f"{side} {long}" + (f" (at {where})" if where else "")))
    c.n = int(_usable(runs[opt_mask], metric).sum())
    c.n_baseline = int(_usable(runs[base_mask], metric).sum())
    if not (keep & opt_mask).any() or not (keep & base_mask).any():
        c.reason = dropped[0][0] if dropped else "no runs"
        if c.reason != "did not learn" or not c.did_not_learn:
            c.reason = ("baseline " if dropped and dropped[0][1].startswith("the baseline") else "") + c.reason
        c.note = "; ".join(text for _, text in dropped)
        return None, None
    c.did_not_learn = False  # compared on the cells where both trained; the note names the others
    if dropped:
        c.note = "left out: " + "; ".join(text for _, text in dropped)
    return runs[opt_mask & keep], runs[base_mask & keep]


def axis_noise(df: pd.DataFrame, runs: pd.DataFrame, axis: str, axes: list[str], metric: str,
               comparisons: list[Comparison], alpha: float, n_tests: int) -> dict[str, Any]:
    """Seed noise of an axis and the smallest difference resolvable at 80 % power.

    Paired axes: pooled spread of the per-seed differences over the axis's options; otherwise the
    pooled spread of single runs within a configuration. The level is alpha / (number of tests):
    Holm's first, strictest step, so the figure holds for every comparison of the report."""
    paired = [c for c in comparisons if c.paired and len(c.seed_diffs) >= 2]
    if paired:
        sd, dof = pooled_sd([np.array(list(c.seed_diffs.values())) for c in paired])
        n = int(np.median([c.n_seeds for c in paired]))
    else:
        ok = runs[_usable(runs, metric)]
        groups = [g[metric].to_numpy(float) for _, g in ok.groupby([ok[a].astype("string") for a in axes])] \
            if len(ok) else []
        sd, dof = pooled_sd(groups)
        per_option = ok.groupby(ok[axis].astype("string"))["seed"].nunique() if len(ok) else pd.Series(dtype=int)
        n = int(per_option.median()) if len(per_option) else 0
    level = alpha / max(n_tests, 1)
    more = 5 if n < 5 else 2 * n
    return {"paired": bool(paired), "noise_sd": sd, "noise_dof": dof, "n_seeds": n, "level": level,
            "detectable": detectable_difference(sd, n, level, bool(paired)),
            "more_seeds": more, "detectable_more": detectable_difference(sd, more, level, bool(paired))}


def comparisons_frame(comparisons: list[Comparison]) -> pd.DataFrame:
    return pd.DataFrame([c.row() for c in comparisons], columns=COLUMNS)
