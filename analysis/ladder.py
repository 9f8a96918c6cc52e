"""The scale ladder of a sweep (`+ladder=NAME`, swept over `ladder.rung`): loss against compute per
variant, compute multipliers against the baseline with bootstrap intervals, and whether the verdict
at the smallest rung still holds at the largest (the transfer table).

Compute of a run = flops_per_token x tokens_seen (both in summary.json). Fits in `analysis.scaling`.
A fit is *used* for a verdict only with at least MIN_RUNGS rungs and R^2 >= R2_MIN; others are
reported, greyed, and say why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.scaling import (Bootstrap, Cell, JointFit, PowerLaw, bootstrap, cell_arrays, fit_joint,
                              fit_power_law, huber_scale, r_squared, run_arrays)
from analysis.stats import usable
from analysis.family import compare_axes
from analysis.verdict import BETTER, NOT_COMPARED, WORSE

RUNG_KEY = "ladder.rung"   # the sweep key of a ladder (ablate/config/rungs.py)
R2_MIN = 0.95              # below: the power law does not describe the points, so no verdict from it
MIN_RUNGS = 3              # a 3-parameter curve needs at least 3 sizes
CONFIDENCE = 0.90
N_BOOTSTRAP = 400
SCALING_COLUMNS = ["variant", "fit", "E", "A", "alpha", "r2", "n_points", "n_rungs", "used", "note"]
MULTIPLIER_COLUMNS = ["variant", "baseline", "compute_multiplier", "ci_low", "ci_high", "at_flops", "confidence",
                      "alpha", "E", "r2", "n_rungs", "alpha_variant", "alpha_baseline", "alpha_diff_ci_low",
                      "alpha_diff_ci_high", "multiplier_separate_fits", "n_bootstrap", "used", "note"]
TRANSFER_COLUMNS = ["rung", "d_model", "compute", "variant", "n", "mean", "rank", "diff_mean", "ci_low", "ci_high",
                    "p_adjusted", "verdict"]


# Exponents closer than this are one exponent: over the 100x compute span of a ladder the multiplier
# moves by under 0.5 % (a noise-free bootstrap's interval is a rounding error wide, not evidence).
ALPHA_SAME = 1e-3


@dataclass
class Multiplier:
    variant: str
    baseline: str
    compute_multiplier: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    at_flops: float = math.nan
    confidence: float = CONFIDENCE
    alpha: float = math.nan
    E: float = math.nan
    r2: float = math.nan
    n_rungs: int = 0
    alpha_variant: float = math.nan
    alpha_baseline: float = math.nan
    alpha_diff_ci_low: float = math.nan
    alpha_diff_ci_high: float = math.nan
    multiplier_separate_fits: float = math.nan
    n_bootstrap: int = 0
    used: bool = False
    note: str = ""

    def row(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in MULTIPLIER_COLUMNS}

    @property
    def trend(self) -> str:
        """How the multiplier moves with compute, from the separate fits' exponents: `rises`, `falls`,
        or `steady` (the 90 % interval of the exponents' difference reaches within ALPHA_SAME of 0, or is unknown)."""
        if not (self.alpha_diff_ci_low > ALPHA_SAME or self.alpha_diff_ci_high < -ALPHA_SAME):
            return "steady"
        return "rises" if self.alpha_diff_ci_low > 0 else "falls"


@dataclass
class Ladder:
    rung_key: str
    metric: str
    baseline: str | None
    variants: list[str]
    rungs: pd.DataFrame                       # one row per rung: shape, parameters, tokens, compute, rate
    points: pd.DataFrame                      # one row per usable run: variant, rung, seed, compute, loss
    separate: dict[str, PowerLaw]
    separate_notes: dict[str, str]
    joint: JointFit | None
    multipliers: list[Multiplier]
    transfer: pd.DataFrame
    boot: Bootstrap | None = None
    left_out: dict[str, int] = field(default_factory=dict)  # variant -> runs not in the fits

    def used(self, variant: str) -> bool:
        return variant in self.separate and not self.separate_notes.get(variant)

    def scaling_frame(self) -> pd.DataFrame:
        rows = []
        for v in self.variants:
            law = self.separate.get(v)
            rows.append({"variant": v, "fit": "separate", "E": law.E if law else math.nan, "A": law.A if law else math.nan,
                         "alpha": law.alpha if law else math.nan, "r2": law.r2 if law else math.nan,
                         "n_points": law.n_points if law else int((self.points["variant"] == v).sum()),
                         "n_rungs": law.n_rungs if law else int(self.points.loc[self.points["variant"] == v, "rung"].nunique()),
                         "used": self.used(v), "note": self.separate_notes.get(v, "")})
        if self.joint is not None:
            for v in self.joint.A:
                law = self.joint.curve(v)
                m = next((m for m in self.multipliers if m.variant == v), None)
                rows.append({"variant": v, "fit": "joint", "E": law.E, "A": law.A, "alpha": law.alpha, "r2": law.r2,
                             "n_points": law.n_points, "n_rungs": law.n_rungs,
                             "used": m.used if m else any(m.used for m in self.multipliers),
                             "note": "E and alpha shared by every variant"
                             + ("" if m is None else (f"; {m.note}" if m.note else ""))})
        return pd.DataFrame(rows, columns=SCALING_COLUMNS)

    def multipliers_frame(self) -> pd.DataFrame:
        return pd.DataFrame([m.row() for m in self.multipliers], columns=MULTIPLIER_COLUMNS)


def is_ladder(df: pd.DataFrame, axes: list[str]) -> bool:
    return RUNG_KEY in axes and RUNG_KEY in df


def variant_labels(runs: pd.DataFrame, axes: list[str]) -> pd.Series:
    if not axes:
        return pd.Series("all runs", index=runs.index)
    if len(axes) == 1:
        return runs[axes[0]].astype("string").fillna("?").astype(str)
    return runs[axes].astype("string").fillna("?").apply(lambda r: ", ".join(f"{a}={r[a]}" for a in axes), axis=1)


def _rung_order(values: pd.Series) -> list[str]:
    def key(v: str) -> tuple[float, str]:
        try:
            return float(v), v
        except ValueError:
            return math.inf, v
    return sorted(dict.fromkeys(values.astype(str)), key=key)


def _number(frame: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(frame[column], errors="coerce") if column in frame else pd.Series(np.nan, index=frame.index)


def rung_table(runs: pd.DataFrame, rung_key: str, order: list[str]) -> pd.DataFrame:
    rows = []
    rung = runs[rung_key].astype(str)
    for r in order:
        here = runs[rung == r]
        compute = _number(here, "flops_per_token") * _number(here, "tokens_seen")
        lr = _number(here, "lr_at_rung") if "lr_at_rung" in here else _number(here, "optim.lr")
        rows.append({"rung": r, "d_model": _number(here, "model.d_model").median(),
                     "n_layers": _number(here, "model.n_layers").median(), "n_heads": _number(here, "model.n_heads").median(),
                     "params_non_embedding": _number(here, "params_non_embedding").median(),
                     "tokens": _number(here, "tokens_seen").median(), "steps": _number(here, "steps").median(),
                     "compute": compute.median(), "lr_min": lr.min(), "lr_max": lr.max(), "runs": len(here)})
    return pd.DataFrame(rows)


def _cells(points: pd.DataFrame) -> list[Cell]:
    cells = []
    for (variant, rung), g in points.groupby(["variant", "rung"], sort=False):
        losses = g.groupby(g["seed"].astype(str))["loss"].mean()
        cells.append(Cell(str(variant), str(rung), float(g["compute"].mean()), losses.to_dict()))
    return cells


def _separate_fits(cells: list[Cell], variants: list[str], delta: float) -> tuple[dict[str, PowerLaw], dict[str, str]]:
    fits, notes = {}, {}
    for v in variants:
        compute, loss = cell_arrays(cells, v)
        if len(compute) < MIN_RUNGS:
            notes[v] = f"only {len(compute)} rung(s) with usable runs: a 3-parameter curve needs at least {MIN_RUNGS}"
            continue
        try:
            fits[v] = fit_power_law(compute, loss, points=run_arrays(cells, v), delta=delta)
        except FloatingPointError as error:
            notes[v] = f"the fit failed ({error})"
            continue
        if not fits[v].r2 >= R2_MIN:
            notes[v] = f"R² {fits[v].r2:.3f} < {R2_MIN}: the power law does not describe these points"
    return fits, notes


def _multipliers(cells: list[Cell], variants: list[str], baseline: str | None, separate: dict[str, PowerLaw],
                 notes: dict[str, str], delta: float, n_boot: int) -> tuple[JointFit | None, list[Multiplier], Bootstrap | None]:
    if baseline is None or len(variants) < 2:
        return None, [], None
    rungs_of = {v: len(cell_arrays(cells, v)[0]) for v in variants}
    members = [v for v in variants if rungs_of[v] >= MIN_RUNGS]
    out = [Multiplier(v, baseline, n_rungs=rungs_of[v]) for v in variants if v != baseline]
    if baseline not in members or len(members) < 2:
        for m in out:
            m.note = (f"the baseline `{baseline}` has {rungs_of[baseline]} rung(s) with usable runs" if baseline not in members
                      else f"only {m.n_rungs} rung(s) with usable runs") + f": at least {MIN_RUNGS} needed"
        return None, out, None
    pairs = {v: cell_arrays(cells, v) for v in members}
    joint = fit_joint(pairs, points={v: run_arrays(cells, v) for v in members}, delta=delta)
    boot = bootstrap(cells, baseline, joint, {v: separate[v] for v in members if v in separate}, n=n_boot,
                     confidence=CONFIDENCE, delta=delta)
    top = float(max(pairs[baseline][0]))
    base_points = run_arrays(cells, baseline)
    for m in out:
        if m.variant not in members:
            m.note = f"only {m.n_rungs} rung(s) with usable runs: at least {MIN_RUNGS} needed"
            continue
        v = m.variant
        m.compute_multiplier = joint.multiplier(v, baseline)
        m.ci_low, m.ci_high = boot.multiplier.get(v, (math.nan, math.nan))
        m.at_flops, m.alpha, m.E, m.n_bootstrap = top, joint.alpha, joint.E, boot.n
        own = run_arrays(cells, v)
        m.r2 = r_squared(np.concatenate([base_points[1], own[1]]),
                         np.concatenate([joint.curve(baseline)(base_points[0]), joint.curve(v)(own[0])]))
        if v in separate and baseline in separate:
            m.alpha_variant, m.alpha_baseline = separate[v].alpha, separate[baseline].alpha
            m.alpha_diff_ci_low, m.alpha_diff_ci_high = boot.alpha_difference.get(v, (math.nan, math.nan))
            reached = separate[v](top)
            m.multiplier_separate_fits = float(separate[baseline].compute_for(reached) / top)
        reasons = [f"R² {m.r2:.3f} < {R2_MIN}" if not m.r2 >= R2_MIN else ""]
        reasons += [f"separate fit of `{w}` not used ({notes[w]})" for w in (baseline, v) if notes.get(w)]
        reasons = [r for r in reasons if r]
        m.used = not reasons
        m.note = "; ".join(reasons)
    return joint, out, boot


def _transfer(runs: pd.DataFrame, rung_key: str, order: list[str], axes: list[str], metric: str,
              settings: dict[str, Any], labels: pd.Series, baseline: str | None) -> pd.DataFrame:
    """Per rung: each variant's mean, its rank, and its paired verdict against the baseline at that rung
    (the rung tested as a sweep of its own: Holm within the rung)."""
    rows = []
    ok = usable(runs, metric)
    for r in order:
        at = runs[runs[rung_key].astype(str) == r]
        comparisons = {}
        if axes and baseline is not None and len(axes) == 1:
            found, _ = compare_axes(at, axes, metric, settings)
            comparisons = {c.option: c for c in found}
        means = at[ok.loc[at.index]].groupby(labels.loc[at.index][ok.loc[at.index]])[metric].agg(["mean", "count"])
        ranks = means["mean"].rank(method="min")
        compute = (_number(at, "flops_per_token") * _number(at, "tokens_seen")).median()
        d_model = _number(at, "model.d_model").median()
        for variant in dict.fromkeys(labels.loc[at.index]):
            c = comparisons.get(variant)
            has = variant in means.index
            rows.append({"rung": r, "d_model": d_model, "compute": compute, "variant": variant,
                         "n": int(means.loc[variant, "count"]) if has else 0,
                         "mean": float(means.loc[variant, "mean"]) if has else math.nan,
                         "rank": int(ranks.loc[variant]) if has else None,
                         "diff_mean": c.diff_mean if c else math.nan, "ci_low": c.ci_low if c else math.nan,
                         "ci_high": c.ci_high if c else math.nan, "p_adjusted": c.p_adjusted if c else math.nan,
                         "verdict": (c.verdict if c else ("baseline" if variant == baseline else NOT_COMPARED))})
    return pd.DataFrame(rows, columns=TRANSFER_COLUMNS)


def ladder_of(runs: pd.DataFrame, axes: list[str], metric: str, settings: dict[str, Any],
              info: dict[str, dict[str, Any]], n_boot: int = N_BOOTSTRAP) -> Ladder:
    """The ladder of the verdict's runs `runs`; `axes` are the compared axes (the rung key not among
    them), `info` each axis's baseline (analysis.family.compare_axes)."""
    labels = variant_labels(runs, axes)
    variants = list(dict.fromkeys(labels))
    baseline = None
    if axes and all(a in info for a in axes):
        wanted = {a: info[a]["baseline"] for a in axes}
        baseline = wanted[axes[0]] if len(axes) == 1 else ", ".join(f"{a}={wanted[a]}" for a in axes)
        baseline = baseline if baseline in variants else None
    order = _rung_order(runs[RUNG_KEY])
    ok = usable(runs, metric) & (_number(runs, "flops_per_token") > 0) & (_number(runs, "tokens_seen") > 0)
    points = pd.DataFrame({"variant": labels[ok], "rung": runs.loc[ok, RUNG_KEY].astype(str),
                           "seed": runs.loc[ok, "seed"].astype("string").fillna("?"),
                           "compute": (_number(runs, "flops_per_token") * _number(runs, "tokens_seen"))[ok],
                           "loss": _number(runs, metric)[ok]})
    left_out = {v: int(((labels == v) & ~ok).sum()) for v in variants if ((labels == v) & ~ok).any()}
    cells = _cells(points)
    delta = huber_scale(cells)
    separate, notes = _separate_fits(cells, variants, delta)
    joint, multipliers, boot = _multipliers(cells, variants, baseline, separate, notes, delta, n_boot)
    transfer = _transfer(runs, RUNG_KEY, order, axes, metric, settings, labels, baseline)
    return Ladder(RUNG_KEY, metric, baseline, variants, rung_table(runs, RUNG_KEY, order), points, separate, notes,
                  joint, multipliers, transfer, boot, left_out)


# -- sentences -----------------------------------------------------------------------------------
def _times(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.2f}×"


def multiplier_sentence(m: Multiplier) -> str:
    """One number only where one number is the answer: "`swiglu` is worth 1.30× compute (90 % CI
    1.10-1.52×) over `gelu`; no detectable change with scale (α ...)". When the separate fits' exponents
    differ (their difference's interval excludes 0) the multiplier depends on the compute it is read at,
    and the shared-α number is only an average over the ladder: say so, and give the largest rung's."""
    if not m.used:
        why = m.note or "not fitted"
        return f"`{m.variant}`: no compute multiplier over `{m.baseline}` ({why})"
    interval = f"{m.confidence:.0%} CI {m.ci_low:.2f}-{m.ci_high:.2f}×".replace("%", " %")
    alphas = f"α {m.alpha_variant:.2f} vs {m.alpha_baseline:.2f}" if math.isfinite(m.alpha_variant) else ""
    if m.trend == "steady":
        text = f"`{m.variant}` is worth {_times(m.compute_multiplier)} compute ({interval}) over `{m.baseline}`"
        return text + (f"; no detectable change with scale ({alphas})" if alphas else "")
    difference = (f"{m.confidence:.0%} CI of the difference {m.alpha_diff_ci_low:+.2f} to "
                  f"{m.alpha_diff_ci_high:+.2f}").replace("%", " %")
    gains = "gains on" if m.trend == "rises" else "loses ground to"
    return (f"`{m.variant}` {gains} `{m.baseline}` as compute grows ({alphas}, {difference}), so no single "
            f"multiplier holds: at the largest rung ({m.at_flops:.2g} FLOPs) the separate fits give "
            f"{_times(m.multiplier_separate_fits)}; the shared-α fit's {_times(m.compute_multiplier)} ({interval}) "
            f"averages over the ladder")


def transfer_sentence(ladder: Ladder) -> str:
    """Does the smallest rung's verdict hold at the largest? Paired verdicts, not lowest means: a rank
    decided by seed noise is no winner."""
    t = ladder.transfer.dropna(subset=["mean"])
    rungs = list(dict.fromkeys(t["rung"]))
    if len(rungs) < 2 or t["variant"].nunique() < 2:
        return ""
    first, last = t[t["rung"] == rungs[0]], t[t["rung"] == rungs[-1]]
    if ladder.baseline is None:
        small, large = first.loc[first["mean"].idxmin(), "variant"], last.loc[last["mean"].idxmin(), "variant"]
        return (f"Lowest mean at the smallest rung: `{small}`; at the largest: `{large}` (no baseline, so no "
                f"paired verdict says whether either lead is more than seed noise).")
    words = lambda frame, v: frame.loc[frame["variant"] == v, "verdict"].iloc[0] if (frame["variant"] == v).any() else "not run"
    parts = []
    for variant in dict.fromkeys(t["variant"]):
        if variant == ladder.baseline:
            continue
        before, after = words(first, variant), words(last, variant)
        if before not in (BETTER, WORSE):
            outcome = "the smallest rung gives no verdict to transfer"
        elif after == before:
            outcome = "the verdict holds"
        elif after in (BETTER, WORSE):
            outcome = "the verdict reverses"
        else:
            outcome = "the largest rung does not confirm it"
        parts.append(f"`{variant}` {verdict_words(before)} at rung {rungs[0]}, {verdict_words(after)} at rung "
                     f"{rungs[-1]}: {outcome}")
    return f"Paired verdicts against `{ladder.baseline}`, smallest rung to largest: " + "; ".join(parts) + "."


def opening_sentences(ladder: Ladder) -> str:
    parts = [multiplier_sentence(m) for m in ladder.multipliers]
    text = "**Scale** (ladder over " + f"{len(ladder.rungs)} sizes, compute = FLOPs per token × tokens): "
    text += ("; ".join(parts) + "." if parts else "no variant to compare with a baseline.")
    transfer = transfer_sentence(ladder)
    return text + (" " + transfer if transfer else "")


def verdict_words(verdict: str) -> str:
    return f"**{verdict}**" if verdict in (BETTER, WORSE) else verdict
