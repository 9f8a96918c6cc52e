"""The family of comparisons a report tests: every option of every axis against that axis's baseline,
each in the cells (other axes' values) where both sides trained, Holm-corrected together, and with the
verdict's seeds in looks, decided look by look (analysis.sequential: each look at its share of alpha).

analysis.verdict holds one comparison's tests; this module chooses what is compared and decides the
whole family.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ablate.config.values import same_value
from analysis.sequential import conditional_power, holm, look_levels
from analysis.verdict import (BETTER, NO_DIFFERENCE, UNSTABLE, WORSE, Comparison, compare_option, decide,
                              detectable_difference, instability_advice, pooled_sd, _usable)

# -- from runs to comparisons --------------------------------------------------------------------
def runs_upto(runs: pd.DataFrame, look: int) -> pd.DataFrame:
    """The runs of looks 1..`look` (a run without a look mark, or a fixed plan's, counts as the first's)."""
    if "look" not in runs:
        return runs
    return runs[pd.to_numeric(runs["look"], errors="coerce").fillna(1) <= look]


@dataclass
class LookPlan:
    """The verdict's looks as its runs recorded them: `compare.looks` (the planned seeds at each look) and
    each run's `compare.look`. A fixed plan (one look, all of alpha) when the runs were not launched in
    looks, e.g. by the basic sweeper: nobody looked before every seed was in."""
    alpha: float
    looks: list[int] = field(default_factory=list)  # planned seeds per look; [] for a fixed plan
    spending: str = "obrien_fleming"
    futility: float = 0.05
    reached: int = 1  # looks that have runs

    @classmethod
    def of(cls, settings: dict[str, Any], runs: pd.DataFrame) -> "LookPlan":
        alpha = float(settings.get("alpha", 0.05))
        looks = [int(n) for n in settings.get("looks") or []]
        marked = pd.to_numeric(runs["look"], errors="coerce") if "look" in runs else pd.Series(dtype=float)
        if len(looks) < 2 or not marked.notna().any():
            return cls(alpha)
        return cls(alpha, looks, str(settings.get("spending", "obrien_fleming")),
                   float(settings.get("futility", 0.05)), int(min(len(looks), marked.max())))

    @property
    def sequential(self) -> bool:
        return bool(self.looks)

    @property
    def levels(self) -> list[float]:
        return look_levels(self.looks, self.alpha, self.spending)

    def describe(self) -> dict[str, Any]:
        return {"looks": self.looks, "levels": self.levels, "spending": self.spending, "futility": self.futility,
                "reached": self.reached}

    def decide(self, per_look: list[list[Comparison]]) -> list[Comparison]:
        """Each comparison's verdict: per look, Holm over those not yet rejected at that look's share of
        alpha (p_adjusted is scaled to the whole alpha, so `p_adjusted < compare.alpha` is the verdict);
        a rejected comparison keeps the look that rejected it, the others their last look with seeds."""
        if not self.sequential:
            [comparisons] = per_look
            decide(comparisons, self.alpha)
            n_tests = sum(not math.isnan(c.p_value) for c in comparisons)
            for c in comparisons:
                c.look, c.level = 1, self.alpha / max(n_tests, 1)
                c.resolvable = resolvable(c)
            return comparisons
        levels, decided = self.levels, {}
        for k, comparisons in enumerate(per_look, 1):
            candidates = [c for c in comparisons if _name(c) not in decided and not math.isnan(c.p_value)]
            for c, p in zip(candidates, holm([c.p_value for c in candidates])):
                c.p_adjusted = min(1.0, p * self.alpha / levels[k - 1])
                c.look, c.level = k, levels[k - 1] / max(len(candidates), 1)
                if p < levels[k - 1] and c.direction:
                    c.verdict = BETTER if c.direction < 0 else WORSE
                    decided[_name(c)] = c
                else:
                    c.verdict = UNSTABLE if c.unstable else NO_DIFFERENCE
            still_open = [c for c in candidates if _name(c) not in decided]
            for c in still_open:  # what the next looks could do for it, at the last look's strictest Holm level
                c.conditional_power = (conditional_power(list(c.seed_diffs.values()), self.looks[-1],
                                                         levels[-1] / len(still_open))
                                       if c.seed_diffs and not c.unstable and k < len(self.looks) else math.nan)
        by_look = [{_name(c): c for c in comparisons} for comparisons in per_look]
        out = []
        for c in per_look[-1]:
            if _name(c) in decided:
                first = decided[_name(c)]
                if first is not c and c.n_seeds > first.n_seeds:
                    first.note = "; ".join(p for p in (first.note, (
                        f"{c.n_seeds - first.n_seeds} more seeds ran after look {first.look} (for other comparisons): "
                        f"{c.diff_mean:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}] over all {c.n_seeds}")) if p)
                c = first
            elif not math.isnan(c.p_value):
                # the first look that already had all of its seeds: where more seeds stopped coming
                stop = next(k for k, at in enumerate(by_look, 1)
                            if _name(c) in at and at[_name(c)].n_seeds == c.n_seeds)
                c.conditional_power = by_look[stop - 1][_name(c)].conditional_power
                c.look = stop
                if stop < self.reached:
                    why = (f"conditional power {c.conditional_power:.2f} < compare.futility={self.futility:g}"
                           if c.conditional_power < self.futility else "its variants got no more seeds")
                    c.note = "; ".join(p for p in (c.note, f"stopped after look {stop} of {len(self.looks)} "
                                                           f"({c.n_seeds} seeds): {why}") if p)
            c.resolvable = resolvable(c)
            out.append(c)
        return out


def _name(c: Comparison) -> tuple[str, str]:
    return c.axis, c.option


def resolvable(c: Comparison) -> float:
    """The smallest true difference this comparison's seeds find with 80 % power at its per-test level
    (its look's share of alpha over the tests of that look: Holm's strictest step)."""
    if math.isnan(c.level) or math.isnan(c.spread):
        return math.nan
    n = c.n_seeds if c.paired else min(c.n, c.n_baseline)
    return detectable_difference(c.spread, n, c.level, c.paired)


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
    """Every option of every axis against the axis's baseline, Holm-corrected together; with the
    verdict's seeds in looks (the tuning sweeper's `compare.looks`, each run's `look`), every look is
    tested at its share of alpha (analysis.sequential) and each comparison keeps the look its verdict
    was reached at.

    `context`: swept keys that are not compared but hold cells apart like another axis (a ladder's
    rung: runs pair by seed within a rung, and a difference is averaged over the rungs).
    Returns the comparisons and, per axis, its baseline, where the baseline came from, and the
    noise and power figures (`axis_noise`)."""
    alpha = float(settings.get("alpha", 0.05))
    context = list(context or [])
    runs = df[df["stage"] == "verdict"] if "stage" in df else df
    info: dict[str, dict[str, Any]] = {}
    for axis in axes:
        options = list(dict.fromkeys(runs[axis].astype("string").fillna("?")))
        baseline, source = baseline_of(axis, options, settings)
        info[axis] = {"baseline": baseline, "source": source, "options": options}
    plan = LookPlan.of(settings, runs)
    per_look = [_compare_all(runs_upto(runs, k) if plan.sequential else runs, axes, metric, settings, context,
                             info) for k in range(1, plan.reached + 1)]
    comparisons = plan.decide(per_look)
    n_tests = sum(not math.isnan(c.p_value) for c in comparisons)
    level = plan.levels[plan.reached - 1] if plan.sequential else alpha
    for c in comparisons:
        if c.verdict == UNSTABLE:
            c.advice = instability_advice(c, c.level if not math.isnan(c.level) else alpha / max(n_tests, 1))
    # what more seeds would resolve: in a plan of looks, the seeds and level of its last look
    more_at = (plan.looks[-1], plan.levels[-1]) if plan.sequential else None
    for axis in axes:
        info[axis].update(axis_noise(df, runs, axis, axes + context, metric, [c for c in comparisons if c.axis == axis],
                                     level, n_tests, more_at))
        info[axis]["looks"] = plan.describe() if plan.sequential else None
    return comparisons, info


def _compare_all(runs: pd.DataFrame, axes: list[str], metric: str, settings: dict[str, Any], context: list[str],
                 info: dict[str, dict[str, Any]]) -> list[Comparison]:
    """Every comparison of `runs` (one look's, or all), tested but not yet decided."""
    comparisons: list[Comparison] = []
    for axis in axes:
        values = runs[axis].astype("string").fillna("?")
        baseline = info[axis]["baseline"]
        base_mask = values == baseline
        others = [a for a in axes if a != axis] + context
        for option in info[axis]["options"]:
            if option == baseline:
                continue
            c = Comparison(axis, option, baseline, metric)
            opt_mask = values == option
            opt_runs, base_runs = _clean_cells(runs, opt_mask, base_mask, others, metric, baseline, c)
            if opt_runs is None:
                comparisons.append(c)
                continue
            compare_option(opt_runs, base_runs, metric, others, c)
            if c.unstable:
                side = opt_runs if c.diverged else base_runs
                c.diverged_at = rate_of(side[side["status"] == "diverged"], settings.get("tuned") or [])
                c.tuned = "optim.lr" in (settings.get("tuned") or [])
            excluded = _status_counts(runs[opt_mask], diverged_explained=c.unstable or c.diverged > 0)
            if excluded:
                c.note = "; ".join(p for p in (c.note, f"not in the test: {excluded}") if p)
            comparisons.append(c)
    return comparisons


def rate_of(runs: pd.DataFrame, tuned: list[str]) -> str:
    """The learning rate (and other tuned keys) these runs trained at, e.g. "rate 0.006"; '' unknown."""
    parts = []
    for key in dict.fromkeys(["optim.lr", *tuned]):
        if key not in runs:
            continue
        values = [f"{v:g}" if isinstance(v, float) else str(v) for v in dict.fromkeys(runs[key].dropna())]
        if values:
            parts.append(("rate " if key == "optim.lr" else f"`{key}` ") + ", ".join(values))
    return ", ".join(parts)


def _status_counts(runs: pd.DataFrame, diverged_explained: bool = False) -> str:
    """Runs of an option outside the test, by status (diverged ones when the note does not already
    say where they went: into the rank test, or out where both sides diverged)."""
    left_out = ~runs["status"].isin(["completed", "diverged"] if diverged_explained else ["completed"])
    counts = runs.loc[left_out, "status"].value_counts()
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _blocking_problem(runs: pd.DataFrame, metric: str) -> tuple[str, str]:
    """(short reason, sentence) why a set of runs cannot enter a comparison; ('', '') when it can."""
    n = len(runs)
    if "did_not_learn" in runs and runs["did_not_learn"].any():
        k = int(runs["did_not_learn"].sum())
        return "did not learn", (f"did not learn in {k} of {n} runs (final loss within 2 % of the unigram "
                                 f"baseline): its learning rate or training budget does not suit it, so "
                                 f"a comparison would measure that, not the design")
    if not (_usable(runs, metric) | (runs["status"] == "diverged")).any():
        return "no completed run", "has no completed run with a " + metric
    return "", ""


def _clean_cells(runs: pd.DataFrame, opt_mask: pd.Series, base_mask: pd.Series, others: list[str],
                 metric: str, baseline: str, c: Comparison) -> tuple[Any, Any]:
    """The option's and the baseline's runs, less the cells (values of the other axes) where either
    side did not learn or has no outcome: there the difference would measure the learning rate or
    budget, not the design (a divergence is an outcome: `compare_option` tests it). (None, None)
    with `c.note` set when no cell is left."""
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
               comparisons: list[Comparison], alpha: float, n_tests: int,
               more_at: tuple[int, float] | None = None) -> dict[str, Any]:
    """Seed noise of an axis and the smallest difference resolvable at 80 % power.

    Paired axes: pooled spread of the per-seed differences over the axis's options; otherwise the
    pooled spread of single runs within a configuration. The level is alpha / (number of tests):
    Holm's first, strictest step, so the figure holds for every comparison of the report. `more_at`
    (seeds, alpha) of a plan's last look: what its seeds would resolve there, instead of 5 or 2n seeds at
    this level (a sequential plan's early looks test at a far stricter level than its last)."""
    paired = [c for c in comparisons if len(c.seed_diffs) >= 2]  # set only when the difference paired
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
    more, more_level = (more_at[0], more_at[1] / max(n_tests, 1)) if more_at and n < more_at[0] else \
        (5 if n < 5 else 2 * n, level)
    return {"paired": bool(paired), "noise_sd": sd, "noise_dof": dof, "n_seeds": n, "level": level,
            "detectable": detectable_difference(sd, n, level, bool(paired)),
            "more_seeds": more, "more_level": more_level,
            "detectable_more": detectable_difference(sd, more, more_level, bool(paired))}

