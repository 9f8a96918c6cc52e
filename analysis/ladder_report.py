"""The report's *Scale ladder* section (tables and text, `ladder_blocks`) and its figure, scaling.png
(`scaling_figure`): loss against compute on log axes, each run a dot, each rung's seed spread, the
fitted curves (dashed where they extrapolate), and each variant's compute multiplier against the
baseline. Fits not used for a verdict are drawn grey."""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from analysis.ladder import CONFIDENCE, MIN_RUNGS, N_BOOTSTRAP, R2_MIN, Ladder, transfer_sentence, verdict_words
from analysis.layout import fit_layout
from analysis.scaling import HUBER_DELTA, INITIAL_ALPHA, INITIAL_E

COLOURS = colormaps["tab10"]
EXTRAPOLATE = 10.0  # the curves run this factor beyond the largest rung's compute, dashed


def _g(x: Any, fmt: str = ".3g") -> str:
    try:
        return "–" if x is None or not math.isfinite(float(x)) else format(float(x), fmt)
    except (TypeError, ValueError):
        return "–"


def _grey(cells: list[str], used: bool) -> list[str]:
    """A row of a fit not used for a verdict, in italics (greyed)."""
    return cells if used else [f"*{c}*" if c not in ("", "–") else c for c in cells]


def method_text(ladder: Ladder) -> str:
    return (f"Compute of a run = `flops_per_token` × `tokens_seen`. Per variant, L(C) = E + A·C^-α is fitted to "
            f"the mean `{ladder.metric}` of each rung (*separate* fits); a *joint* fit shares E and α across the "
            f"variants, so each variant's compute multiplier against the baseline `{ladder.baseline or '–'}` is one "
            f"number, m = (A_baseline / A_variant)^(1/α): the variant reaches any loss with 1/m of the baseline's "
            f"compute (m > 1: it is worth more compute; m < 1: it needs more). Fits: residuals in log space under a "
            f"Huber loss (scale max({HUBER_DELTA}, 1.345 × the seed noise of a rung's mean)), "
            f"`scipy.optimize.least_squares` from {len(INITIAL_E) * len(INITIAL_ALPHA)} initial values. Intervals "
            f"({CONFIDENCE:.0%}): {N_BOOTSTRAP} bootstrap resamples of the seeds within each rung (the same seeds for "
            f"every variant, since a seed fixes the data order), estimate ± Student's t × the replicates' standard "
            f"deviation (of log m for the multiplier). A fit with fewer than "
            f"{MIN_RUNGS} rungs or R² below {R2_MIN} is shown in italics and not used for a verdict. "
            f"α variant vs baseline comes from the separate fits: a larger α means the variant's loss falls faster "
            f"with compute, so its multiplier rises with scale.").replace("%", " %")


def rung_rows(ladder: Ladder) -> tuple[list[str], list[list[str]]]:
    rows = []
    for _, r in ladder.rungs.iterrows():
        lr = _g(r["lr_min"]) if r["lr_min"] == r["lr_max"] else f"{_g(r['lr_min'])} to {_g(r['lr_max'])}"
        rows.append([f"{r['rung']}", _g(r["d_model"], ".0f"), _g(r["n_layers"], ".0f"), _g(r["n_heads"], ".0f"),
                     _g(r["params_non_embedding"], ",.0f"), _g(r["tokens"], ",.0f"), _g(r["steps"], ",.0f"),
                     _g(r["compute"], ".3g"), lr, str(int(r["runs"]))])
    return ["rung", "d_model", "layers", "heads", "params_non_embedding", "tokens", "steps", "compute (FLOPs)",
            "learning rate", "runs"], rows


def fit_rows(ladder: Ladder) -> tuple[list[str], list[list[str]]]:
    rows = []
    for _, r in ladder.scaling_frame().iterrows():
        rows.append(_grey([f"`{r['variant']}`", r["fit"], _g(r["E"], ".4f"), _g(r["A"]), _g(r["alpha"], ".3f"),
                           _g(r["r2"], ".4f"), str(r["n_points"]), str(r["n_rungs"]),
                           "yes" if r["used"] else "no", r["note"] or "–"], bool(r["used"])))
    return ["variant", "fit", "E", "A", "α", "R²", "runs", "rungs", "used", "note"], rows


def multiplier_rows(ladder: Ladder) -> tuple[list[str], list[list[str]]]:
    rows = []
    for m in ladder.multipliers:
        ci = f"{_g(m.ci_low, '.2f')} to {_g(m.ci_high, '.2f')}" if math.isfinite(m.ci_low) else "–"
        dalpha = (f"{_g(m.alpha_variant, '.3f')} vs {_g(m.alpha_baseline, '.3f')} (difference {_g(m.alpha_diff_ci_low, '+.3f')} "
                  f"to {_g(m.alpha_diff_ci_high, '+.3f')})" if math.isfinite(m.alpha_variant) else "–")
        rows.append(_grey([f"`{m.variant}`", f"`{m.baseline}`", _g(m.compute_multiplier, ".3f"), ci, _g(m.at_flops),
                           _g(m.alpha, ".3f"), _g(m.r2, ".4f"), dalpha, _g(m.multiplier_separate_fits, ".3f"),
                           "yes" if m.used else "no", m.note or "–"], m.used))
    header = ["variant", "baseline", "compute multiplier", f"{CONFIDENCE:.0%} CI".replace("%", " %"), "at FLOPs",
              "α (shared)", "R²", "α variant vs baseline (90 % CI of difference)", "m at the largest rung (separate fits)",
              "used", "note"]
    return header, rows


def transfer_rows(ladder: Ladder) -> tuple[list[str], list[list[str]]]:
    t = ladder.transfer
    others = [v for v in ladder.variants if v != ladder.baseline]
    rows = []
    for rung in dict.fromkeys(t["rung"]):
        here = t[t["rung"] == rung]
        ranked = here.dropna(subset=["mean"]).sort_values("mean")
        ranking = " < ".join(f"`{r['variant']}` {r['mean']:.4f}" for _, r in ranked.iterrows()) or "–"
        cells = []
        for v in others:
            row = here[here["variant"] == v]
            if row.empty:
                cells.append("–")
                continue
            r = row.iloc[0]
            diff = (f"{r['diff_mean']:+.4f} ({r['ci_low']:+.4f} to {r['ci_high']:+.4f}) " if math.isfinite(r["diff_mean"])
                    and math.isfinite(r["ci_low"]) else "")
            cells.append(diff + verdict_words(r["verdict"]))
        rows.append([str(rung), _g(here["d_model"].iloc[0], ".0f"), _g(here["compute"].iloc[0]), ranking, *cells])
    header = ["rung", "d_model", "compute", "ranking (lowest loss first)",
              *[f"`{v}` − `{ladder.baseline}` (95 % CI), verdict" for v in others]]
    return header, rows


def ladder_blocks(ladder: Ladder, para: Callable, table: Callable) -> list[Any]:
    """The section's blocks, built with the report's block types (analysis.markdown.Para / Table)."""
    blocks = [para(method_text(ladder))]
    header, rows = rung_rows(ladder)
    blocks += [table(header, rows, [False] + [True] * 7 + [False, True])]
    header, rows = fit_rows(ladder)
    blocks += [para("**Fits** (scaling.csv)"), table(header, rows, [False, False] + [True] * 6 + [False, False])]
    if ladder.multipliers:
        header, rows = multiplier_rows(ladder)
        blocks += [para("**Compute multipliers** (multipliers.csv)"),
                   table(header, rows, [False, False] + [True] * 5 + [False, True, False, False])]
    header, rows = transfer_rows(ladder)
    blocks += [para("**Transfer** (transfer.csv): the ranking and the paired verdict against the baseline at each "
                    "rung, each rung tested as a sweep of its own (paired t-test by seed, Holm within the rung). "
                    + transfer_sentence(ladder)),
               table(header, rows, [False, True, True, False] + [False] * (len(header) - 4))]
    if ladder.left_out:
        blocks.append(para("Not in the fits (did not complete, diverged, did not learn, or no compute recorded): "
                           + ", ".join(f"`{v}` {n} run(s)" for v, n in ladder.left_out.items()) + "."))
    return blocks


# -- figure --------------------------------------------------------------------------------------
def scaling_figure(ladder: Ladder) -> Figure:
    """Left: loss against compute, log axes; dots = runs, bars = each rung's seed range around its mean,
    lines = separate fits (solid over the rungs, dashed beyond), grey = not used. Right: each variant's
    compute multiplier against the baseline from the separate fits as compute grows, and the joint fit's
    multiplier with its interval as a band."""
    fig = Figure(figsize=(13, 5.2))
    left, right = fig.subplots(1, 2)
    points = ladder.points
    top = float(points["compute"].max()) if len(points) else 1.0
    low = float(points["compute"].min()) if len(points) else 1.0
    grid = np.geomspace(low, top, 100)
    beyond = np.geomspace(top, top * EXTRAPOLATE, 40)
    for i, v in enumerate(ladder.variants):
        colour = COLOURS(i % 10)
        mine = points[points["variant"] == v]
        used = ladder.used(v)
        shade = colour if used else "grey"
        left.scatter(mine["compute"], mine["loss"], s=12, color=shade, alpha=0.45, zorder=2)
        cells = mine.groupby("rung").agg(compute=("compute", "mean"), mean=("loss", "mean"), lo=("loss", "min"),
                                         hi=("loss", "max"))
        left.errorbar(cells["compute"], cells["mean"], yerr=[cells["mean"] - cells["lo"], cells["hi"] - cells["mean"]],
                      fmt="o", ms=5, color=shade, capsize=3, zorder=3,
                      label=f"{v} (rung mean, seed range)" + ("" if used else ": fit not used"))
        law = ladder.separate.get(v)
        if law is not None:
            left.plot(grid, law(grid), color=shade, lw=1.6, alpha=1 if used else 0.6,
                      label=f"{v}: E={law.E:.3f}, α={law.alpha:.3f}, R²={law.r2:.3f}")
            left.plot(beyond, law(beyond), color=shade, lw=1.6, ls="--", alpha=1 if used else 0.6)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("compute (FLOPs = flops_per_token × tokens_seen)")
    left.set_ylabel(f"{ladder.metric} (log scale)")
    left.set_title("loss against compute: separate fits, dashed beyond the largest rung")
    left.grid(alpha=0.3, which="both")
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=7)
    _multiplier_panel(right, ladder, np.geomspace(low, top * EXTRAPOLATE, 120), top)
    fit_layout(fig)
    return fig


def _multiplier_panel(panel, ladder: Ladder, grid: np.ndarray, top: float) -> None:
    base = ladder.separate.get(ladder.baseline) if ladder.baseline else None
    drawn = False
    for i, v in enumerate(ladder.variants):
        m = next((m for m in ladder.multipliers if m.variant == v), None)
        if m is None:
            continue
        colour = COLOURS(i % 10) if m.used else "grey"
        law = ladder.separate.get(v)
        if law is not None and base is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                curve = base.compute_for(law(grid)) / grid
            ok = np.isfinite(curve) & (curve > 0)
            inside = ok & (grid <= top)
            panel.plot(grid[inside], curve[inside], color=colour, lw=1.6, label=f"{v}: separate fits")
            panel.plot(grid[ok & (grid >= top)], curve[ok & (grid >= top)], color=colour, lw=1.6, ls="--")
            drawn = True
        if math.isfinite(m.compute_multiplier):
            panel.axhline(m.compute_multiplier, color=colour, lw=1, ls=":",
                          label=f"{v}: joint fit {m.compute_multiplier:.2f}× "
                                f"({CONFIDENCE:.0%} CI {m.ci_low:.2f}-{m.ci_high:.2f})".replace("%", " %"))
            if math.isfinite(m.ci_low):
                panel.axhspan(m.ci_low, m.ci_high, color=colour, alpha=0.12)
            drawn = True
    panel.axhline(1.0, color="black", lw=0.8)
    panel.set_xscale("log")
    panel.set_yscale("log")
    panel.set_xlabel("compute (FLOPs)")
    panel.set_ylabel(f"compute multiplier vs {ladder.baseline or 'the baseline'}")
    panel.set_title("compute multiplier: above 1 the variant needs less compute")
    panel.grid(alpha=0.3, which="both")
    if drawn:
        panel.legend(fontsize=7)
    else:
        panel.text(0.5, 0.5, "no multiplier: see the report", ha="center", va="center", transform=panel.transAxes)


def rung_frame(ladder: Ladder) -> pd.DataFrame:
    """The rung table as numbers (notebooks)."""
    return ladder.rungs.copy()
