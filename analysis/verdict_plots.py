"""The verdict's figures: each option's difference from its baseline (differences.png) and, for a
sweep tuned per variant, the metric against the tuned value (tuning.png)."""
from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from analysis.figure_style import COLOURS, label
from analysis.layout import fit_layout, panel_grid


def differences_figure(f) -> Figure:
    """Per swept axis a panel: for each option, option minus baseline in the metric: the mean
    difference with its 95 % CI (black) and the per-seed differences (dots, paired tests only);
    the dashed line at 0 is the baseline. Verdict words under each option."""
    axes = [a for a in f.axes if a in f.info] or ["(no axis)"]
    fig, panels = panel_grid(len(axes), max(6.0, 1.2 * max(len(f.info.get(a, {}).get("options", [])) for a in axes) + 2))
    for panel, axis in zip(panels, axes):
        mine = [c for c in f.comparisons if c.axis == axis]
        if not mine:
            panel.text(0.5, 0.5, "nothing to compare", ha="center", va="center", transform=panel.transAxes)
            continue
        panel.axhline(0.0, color="grey", ls="--", lw=1, label=f"baseline {f.info[axis]['baseline']}")
        labelled = set()
        for i, c in enumerate(mine):
            if c.seed_diffs:
                diffs = np.array(list(c.seed_diffs.values()), dtype=float)
                jitter = np.linspace(-0.12, 0.12, diffs.size) if diffs.size > 1 else np.zeros(1)
                panel.scatter(i + jitter, diffs, s=22, color="tab:blue", alpha=0.75, zorder=3,
                              label=None if "seed" in labelled else "one seed (paired difference)")
                labelled.add("seed")
            if not math.isnan(c.diff_mean) and not math.isnan(c.ci_low):
                panel.errorbar(i, c.diff_mean, yerr=[[c.diff_mean - c.ci_low], [c.ci_high - c.diff_mean]],
                               fmt="o", color="black", ms=7, capsize=6, zorder=4,
                               label=None if "mean" in labelled else "mean difference, 95 % CI")
                labelled.add("mean")
            word = "did not learn" if c.did_not_learn else c.verdict
            colour = {"better": "tab:green", "worse": "tab:red", "unstable": "tab:orange"}.get(word, "dimgrey")
            text = word.replace("no detectable difference", "no detectable\ndifference")
            if c.unstable:  # the divergences are the finding: say whose and how many under the word
                text += (f"\n{c.diverged} of {c.n_outcomes} diverged" if c.diverged else
                         f"\nbaseline: {c.diverged_baseline} of {c.n_outcomes_baseline} diverged")
            panel.annotate(text,
                           (i, 0.02), xycoords=("data", "axes fraction"), ha="center", fontsize=8,
                           color=colour)
        panel.set_xticks(range(len(mine)), [c.option for c in mine])
        panel.set_xlim(-0.6, len(mine) - 0.4)
        panel.set_xlabel(f"{axis} (each option minus baseline {f.info[axis]['baseline']})")
        panel.set_ylabel(f"difference in {label(f.metric)}")
        panel.set_title(f"{axis}: below 0 favours the option (lower {f.metric} is better)")
        panel.grid(alpha=0.3, axis="y")
        panel.legend(fontsize=8, loc="best")  # the corner with the least data under it
    fit_layout(fig)
    return fig


def tuning_figure(tuning) -> Figure:
    """One curve per variant: mean metric over the tuning seeds against the tuned value (log axis
    for positive numbers); a star marks the value the verdict's runs used. Runs that failed or
    diverged score +inf and are drawn as crosses at the top."""
    fig = Figure(figsize=(8, 5))
    panel = fig.subplots()
    table = tuning.table
    def number(v: str) -> float:
        try:
            return float(v.split(",")[0])
        except ValueError:
            return math.nan
    values = sorted(dict.fromkeys(table["value"]), key=lambda v: (number(v), v))
    numeric = all(not math.isnan(number(v)) and number(v) > 0 for v in values)
    position = {v: (number(v) if numeric else i) for i, v in enumerate(values)}
    every = tuning.budgets if tuning.halved else table.assign(budget=np.nan)
    finite = every["mean"][np.isfinite(every["mean"])]
    top = float(finite.max()) if len(finite) else 1.0
    budgets = sorted(every["budget"].dropna().unique()) if tuning.halved else [None]
    styles = {b: ("-" if b == budgets[-1] else ":" if k == 0 else "--") for k, b in enumerate(budgets)}
    for i, (variant, rows) in enumerate(every.groupby("variant", sort=False)):
        colour = COLOURS(i % 10)
        for budget in budgets:  # with halving: one curve per budget, the last solid
            group = rows if budget is None else rows[rows["budget"] == budget]
            group = group.assign(x=group["value"].map(position)).sort_values("x")
            ok = np.isfinite(group["mean"])
            last = budget == budgets[-1]
            panel.plot(group["x"][ok], group["mean"][ok], marker="o" if last else ".", color=colour,
                       linestyle=styles[budget], alpha=1.0 if last else 0.6, label=str(variant) if last else None)
            if (~ok).any():
                panel.scatter(group["x"][~ok], [top] * int((~ok).sum()), marker="x", color=colour, s=40)
        group = table[table["variant"] == variant].assign(x=lambda f: f["value"].map(position))
        chosen = tuning.chosen.loc[tuning.chosen["variant"] == variant, "chosen"]
        if len(chosen) and chosen.iloc[0] is not None:
            hit = group[group["value"] == chosen.iloc[0]]
            panel.scatter(hit["x"], hit["mean"], marker="*", s=220, color=colour, edgecolors="black", zorder=5)
    if numeric:
        panel.set_xscale("log")
    else:
        panel.set_xticks(range(len(values)), values)
    panel.set_xlabel("/".join(tuning.keys) + " (tuned value)")
    panel.set_ylabel(label(tuning.metric) + " on the tuning seeds")
    title = "Tuning: one curve per variant; star = the value its verdict runs used; x = failed"
    if tuning.halved:
        title += "; successive halving: " + ", ".join(
            f"{'solid' if b == budgets[-1] else 'dotted' if k == 0 else 'dashed'} = after {int(b)} steps"
            for k, b in enumerate(budgets))
    panel.set_title(title)
    panel.grid(alpha=0.3)
    panel.legend(fontsize=8)
    fit_layout(fig)
    return fig
