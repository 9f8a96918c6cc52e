"""Figures of a sweep report: loss curves and final metric per option."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are built on cluster login nodes and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.atomic import save_figure  # noqa: E402
from analysis.collect import RUNNING  # noqa: E402
from analysis.stats import COMPLETED, DIVERGED, usable  # noqa: E402

MAX_CONFIG_COLOURS = 10  # beyond this, colour by the first axis only: more is unreadable
CURVE_COLUMN = {"final_val_loss": "val_loss", "val_bpb": "val_bpb"}


def curve_groups(df: pd.DataFrame, axes: list[str]) -> pd.Series:
    """Colour label per run: the configuration (all swept axes), or the first axis' option."""
    if not axes:
        return pd.Series("all runs", index=df.index)
    keys = axes
    if len(axes) > 1 and df[axes].astype("string").drop_duplicates().shape[0] > MAX_CONFIG_COLOURS:
        keys = axes[:1]
    return df[keys].astype("string").fillna("?").apply(
        lambda r: ", ".join(f"{k}={r[k]}" for k in keys), axis=1)


def _mean_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over runs on the x range that every run covers (interpolated: wall-clock times of
    different seeds never coincide)."""
    lo = max(x.min() for x, _ in curves)
    hi = min(x.max() for x, _ in curves)
    grid = np.unique(np.concatenate([x for x, _ in curves]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    if grid.size == 0:
        return grid, grid
    return grid, np.mean([np.interp(grid, x, y) for x, y in curves], axis=0)


def _run_curves(curves: pd.DataFrame, run: str, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    if curves.empty or x not in curves or y not in curves:
        return np.array([]), np.array([])
    c = curves[curves["run"] == run][[x, y]].apply(pd.to_numeric, errors="coerce")
    c = c[np.isfinite(c[x]) & np.isfinite(c[y])].sort_values(x)
    return c[x].to_numpy(float), c[y].to_numpy(float)


def plot_loss_curves(df: pd.DataFrame, curves: pd.DataFrame, axes: list[str], metric: str,
                     path: Path) -> None:
    y = CURVE_COLUMN.get(metric, "val_loss")
    labels = curve_groups(df, axes)
    colours = plt.get_cmap("tab10")
    fig, panels = plt.subplots(1, 2, figsize=(13, 5))
    for panel, (x, xlabel) in zip(panels, [("step", "step"), ("elapsed_s", "wall-clock (s)")]):
        drawn = False
        diverged = []
        for i, label in enumerate(dict.fromkeys(labels)):
            colour = colours(i % 10)
            runs = df[labels == label]
            completed, partial = [], []
            for _, run in runs.iterrows():
                cx, cy = _run_curves(curves, run["run"], x, y)
                if cx.size == 0:
                    continue
                if run["status"] == DIVERGED:
                    diverged.append((cx, cy, colour))
                    continue
                panel.plot(cx, cy, color=colour, lw=0.8, alpha=0.45)
                drawn = True
                if run["status"] == COMPLETED:
                    completed.append((cx, cy))
                elif run["status"] == RUNNING:
                    partial.append((cx, cy))
            # The mean uses finished runs; runs still going only when nothing has finished.
            mean_inputs = completed or partial
            if mean_inputs:
                gx, gy = _mean_curve(mean_inputs)
                panel.plot(gx, gy, color=colour, lw=2.5,
                           label=f"{label} (mean of {len(mean_inputs)})")
        if drawn:
            limits = panel.get_ylim()  # keep diverged runs from blowing up the scale
            for cx, cy, colour in diverged:
                panel.plot(cx, cy, color=colour, lw=0.8, ls=":")
            panel.set_ylim(limits)
        else:
            panel.text(0.5, 0.5, "no validation data yet", ha="center", va="center",
                       transform=panel.transAxes)
        if diverged:
            panel.plot([], [], color="grey", ls=":", label="diverged run")
        panel.set_xlabel(xlabel)
        panel.set_ylabel(y.replace("_", " "))
        panel.set_title(f"{y} vs {xlabel} (thin: one seed, thick: mean)")
        panel.grid(alpha=0.3)
        if panel.get_legend_handles_labels()[0]:
            panel.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_final(df: pd.DataFrame, tables: dict[str, pd.DataFrame], metric: str, path: Path) -> None:
    """Per swept axis a subplot: mean ± std per option and each seed as a dot."""
    ok = usable(df, metric)
    items = list(tables.items()) or [("all runs", None)]
    fig, panels = plt.subplots(1, len(items), figsize=(max(5.0, 4.5 * len(items)), 4.5),
                               squeeze=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same data gives the same figure
    for panel, (axis, table) in zip(panels[0], items):
        labelled = False
        options = list(table["option"]) if table is not None else ["all runs"]
        for i, option in enumerate(options):
            mask = ok if table is None else ok & (df[axis].astype("string") == str(option))
            vals = df.loc[mask, metric].to_numpy(float)
            if vals.size:
                panel.scatter(i + rng.uniform(-0.12, 0.12, vals.size), vals, s=18,
                              color="tab:blue", alpha=0.7, zorder=3,
                              label=None if labelled else "one run (seed)")
                std = vals.std(ddof=1) if vals.size >= 2 else 0.0
                panel.errorbar(i, vals.mean(), yerr=std, fmt="o", color="black", ms=8,
                               capsize=6, zorder=4, label=None if labelled else "mean ± std")
                labelled = True
            n_div = 0 if table is None else int(
                table.loc[table["option"] == option, "n_diverged"].sum())
            if n_div:
                panel.annotate(f"{n_div} diverged", (i, 0.02), xycoords=("data", "axes fraction"),
                               ha="center", color="tab:red", fontsize=8)
        panel.set_xticks(range(len(options)), [str(o) for o in options])
        panel.set_xlim(-0.6, len(options) - 0.4)
        panel.set_xlabel(axis + (" (ranked best first)" if table is not None else ""))
        panel.set_ylabel(metric)
        panel.set_title(f"{metric} by {axis}")
        panel.grid(alpha=0.3, axis="y")
        if panel.get_legend_handles_labels()[0]:
            panel.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
