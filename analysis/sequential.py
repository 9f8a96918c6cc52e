"""Verdict seeds in looks (`compare.looks`, e.g. [3, 6, 10]): the error rate over every look and every
comparison together, and whether more seeds are worth their runs.

Levels. The report's level alpha (`compare.alpha`) is spent over the looks by a Lan-DeMets spending
function of the information fraction t = planned seeds at this look / planned seeds at the last (Lan &
DeMets 1983): `obrien_fleming`, alpha(t) = 2 - 2 Phi(z_{alpha/2} / sqrt(t)), spends almost nothing early
and keeps most of the last look's power; `pocock`, alpha ln(1 + (e - 1) t), spends early, so a large
effect stops sooner. Look k tests at its increment alpha_k = alpha(t_k) - alpha(t_{k-1}), by Holm's
step-down over the comparisons not rejected at an earlier look.

Why that holds the family-wise error at alpha: at the look where the first true null is rejected, every
earlier rejection was of a false null, so at most m - m0 hypotheses (m0 true nulls) were rejected before
it and Holm's threshold there is at most alpha_k / m0; a true null is rejected at look k only if the
smallest true-null p is below alpha_k / m0, probability at most alpha_k (Bonferroni over the m0). The
union over the looks gives at most sum alpha_k = alpha, whatever the correlation between looks and
whatever the test (the t-test at any seed count, the rank tests of unstable comparisons). Exact
group-sequential boundaries (Jennison & Turnbull 2000) would use the correlation of a comparison's
statistics across looks and be a little less strict; they assume normal statistics, which a t-test on 3
seeds is not. Stopping a comparison (resolved or futile) only removes chances to reject, so futility
rules are non-binding: they cannot raise the error rate.

Futility. A comparison still open after a look gets the next look's seeds only if its conditional power
(the chance that the last look rejects, if the difference and spread seen so far are the truth: "current
trend", Lan & Wittes 1988) is at least `compare.futility`; the last look's level for that is Holm's
strictest, alpha_K / (comparisons still open).

Distributions from scipy.stats; Holm's procedure is a sort and a running maximum.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats

SPENDING = ("obrien_fleming", "pocock")


def spent(t: float, alpha: float, kind: str = "obrien_fleming") -> float:
    """Alpha spent by information fraction `t` (0 at t = 0, alpha at t = 1; Lan & DeMets 1983)."""
    t = min(max(float(t), 0.0), 1.0)
    if t == 0.0:
        return 0.0
    if kind == "obrien_fleming":
        return float(2.0 * stats.norm.sf(stats.norm.isf(alpha / 2.0) / math.sqrt(t)))
    if kind == "pocock":
        return float(alpha * math.log1p((math.e - 1.0) * t))
    raise ValueError(f"compare.spending={kind!r}: choose one of {', '.join(SPENDING)}")


def look_levels(looks: Sequence[int], alpha: float, kind: str = "obrien_fleming") -> list[float]:
    """Each look's share of alpha: the increments of the spending function at t_k = looks[k] / looks[-1]
    (they sum to alpha). One look: [alpha], the fixed plan."""
    if not looks:
        return [float(alpha)]
    total = looks[-1]
    cumulative = [spent(n / total, alpha, kind) for n in looks]
    cumulative[-1] = float(alpha)  # exactly, not alpha up to rounding
    return [c - p for c, p in zip(cumulative, [0.0, *cumulative[:-1]])]


def holm(p_values: Sequence[float]) -> list[float]:
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


def conditional_power(diffs: Sequence[float], n_final: int, level: float) -> float:
    """P(a two-sided paired t-test at `level` on `n_final` seeds rejects | the first seeds' differences
    `diffs`), if their mean and standard deviation are the truth (current trend). The seeds still to come
    average to a normal of that mean with variance sd^2 / (seeds to come); the critical value is the
    final t-test's. NaN when it cannot be told (fewer than 2 seeds, or no seed to come)."""
    d = np.asarray(diffs, dtype=float)
    n, to_come = d.size, n_final - d.size
    if n < 2 or to_come <= 0:
        return math.nan
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        return 0.0 if mean == 0.0 else 1.0
    bound = stats.t.isf(level / 2.0, n_final - 1) * sd / math.sqrt(n_final)  # |final mean| beyond: reject
    # final mean = (n mean + to_come * future mean) / n_final, future mean ~ N(mean, sd^2 / to_come)
    spread = sd * math.sqrt(to_come) / n_final
    return float(stats.norm.sf(bound, mean, spread) + stats.norm.cdf(-bound, mean, spread))
