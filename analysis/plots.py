"""Report figures: validation curves (against steps and wall-clock time), the final metric per
option, and throughput per option.

Each `*_figure` function returns a matplotlib Figure (for notebooks: `to_png(fig)`), each
`plot_*` function writes one PNG atomically. Figures are built without pyplot, so nothing here
selects a backend or keeps global state: it works headless (cluster login nodes, CI) and inside
Jupyter alike.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from ablate.rundir.files import atomic_output
from analysis.collect import RUNNING
from analysis.figure_style import COLOURS, label
from analysis.layout import fit_layout, panel_grid
from analysis.stats import COMPLETED, DIVERGED, usable

MAX_CONFIG_COLOURS = 10  # beyond this, colour by the first axis only: more is unreadable
CURVE_COLUMN = {"final_val_loss": "val_loss", "val_bpb": "val_bpb"}


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (e.g. `IPython.display.Image(to_png(fig))`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


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


def loss_curves_figure(df: pd.DataFrame, curves: pd.DataFrame, axes: list[str],
                       metric: str) -> Figure:
    """Validation metric (top row) and training loss (bottom row) against training step (left) and
    tokens seen (right): one colour per option, each run (seed) a thin line with a marker at every
    logged point, the mean of completed runs thick; the unigram baseline as a grey dashed line."""
    y_val = CURVE_COLUMN.get(metric, "val_loss")
    labels = curve_groups(df, axes)
    fig = Figure(figsize=(14, 9.5))
    panels = fig.subplots(2, 2)
    unigram = pd.to_numeric(df.get("unigram_val_loss"), errors="coerce").dropna() \
        if "unigram_val_loss" in df else pd.Series(dtype=float)
    for row, (y, what) in enumerate([(y_val, label(y_val)), ("train_loss", "training loss (nats/token)")]):
        for panel, (x, xlabel) in zip(panels[row], [("step", "training step"), ("tokens", "tokens seen")]):
            _curve_panel(panel, df, curves, labels, x, y)
            if not unigram.empty and y in ("val_loss", "train_loss"):
                level = float(unigram.median())
                low, high = panel.get_ylim()
                panel.axhline(level, color="grey", ls="--", lw=1, label=f"unigram baseline {level:.3f}")
                panel.set_ylim(min(low, level - 0.05 * (high - low)), max(high, level + 0.05 * (high - low)))
            panel.set_xlabel(xlabel)
            panel.set_ylabel(what)
            panel.set_title(f"{what} vs {xlabel}")
            panel.grid(alpha=0.3)
            if panel.get_legend_handles_labels()[0]:
                panel.legend(fontsize=8, title=", ".join(axes) if axes else None, title_fontsize=8)
    fig.suptitle("Thin line with markers = one run (seed), thick line = mean over completed runs"
                 + ("; colour = configuration of " + ", ".join(axes) if len(axes) > 1 else ""), fontsize=11)
    fit_layout(fig)
    return fig


def _curve_panel(panel, df: pd.DataFrame, curves: pd.DataFrame, labels: pd.Series, x: str, y: str) -> None:
    drawn = False
    diverged = []
    for i, group in enumerate(dict.fromkeys(labels)):
        colour = COLOURS(i % 10)
        completed, partial = [], []
        for _, run in df[labels == group].iterrows():
            cx, cy = _run_curves(curves, run["run"], x, y)
            if cx.size == 0:
                continue
            if run["status"] == DIVERGED:
                diverged.append((cx, cy, colour))
                continue
            panel.plot(cx, cy, color=colour, lw=0.8, alpha=0.45, marker="o", ms=2.5)
            drawn = True
            if run["status"] == COMPLETED:
                completed.append((cx, cy))
            elif run["status"] == RUNNING:
                partial.append((cx, cy))
        # The mean uses finished runs; runs still going only when nothing has finished.
        mean_inputs = completed or partial
        if mean_inputs:
            gx, gy = _mean_curve(mean_inputs)
            kind = "mean" if completed else "mean so far"
            panel.plot(gx, gy, color=colour, lw=2.5, marker="o", ms=4,
                       label=f"{group} ({kind} of {len(mean_inputs)})")
    if drawn:
        limits = panel.get_ylim()  # keep diverged runs from blowing up the scale
        for cx, cy, colour in diverged:
            panel.plot(cx, cy, color=colour, lw=0.8, ls=":")
        panel.set_ylim(limits)
    else:
        panel.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=panel.transAxes)
    if diverged:
        panel.plot([], [], color="grey", ls=":", label="diverged run")


def _other_axes_label(df: pd.DataFrame, axis: str, axes: list[str]) -> tuple[pd.Series | None, str]:
    """Colour key of each run on an axis's panel: the values of the other swept axes (None for a
    one-axis sweep), and a legend title that says what the colours are."""
    others = [a for a in axes if a != axis and a in df]
    if not others:
        return None, ""
    key = df[others].astype("string").fillna("?").apply(
        lambda r: ", ".join(f"{a}={r[a]}" for a in others), axis=1)
    if key.nunique() > MAX_CONFIG_COLOURS:  # colours would repeat: one colour reads better than a legend of dozens
        return None, ""
    return key, "colour: " + ", ".join(others)


def _per_option_panel(panel, df: pd.DataFrame, axis: str, table: pd.DataFrame | None,
                      column: str, ok: pd.Series, rng: np.random.Generator,
                      colour_by: pd.Series | None = None, unreliable: pd.Series | None = None,
                      interval: str = "ci") -> list[str]:
    """Dots per run and mean with 95 % CI (`interval="ci"`) or ± std over `ok` runs of `column`, one
    x position per option. `colour_by`: colour of each run (the other axes' values); `unreliable`:
    runs drawn hollow."""
    options = list(table["option"]) if table is not None else ["all runs"]
    keys = list(dict.fromkeys(colour_by[ok])) if colour_by is not None else []
    labelled = set()
    values = pd.to_numeric(df[column], errors="coerce")
    for i, option in enumerate(options):
        in_option = (pd.Series(True, index=df.index) if table is None
                     else df[axis].astype("string") == str(option))
        runs = df[in_option & ok & values.notna()]
        for key in (keys or [None]):
            subset = runs if key is None else runs[colour_by[runs.index] == key]
            if subset.empty:
                continue
            vals = values[subset.index].to_numpy(float)
            hollow = unreliable[subset.index].fillna(False).to_numpy(bool) if unreliable is not None \
                else np.zeros(vals.size, bool)
            colour = "tab:blue" if key is None else COLOURS(keys.index(key) % 10)
            name = "one run (seed)" if key is None else key
            x = i + rng.uniform(-0.12, 0.12, vals.size)
            panel.scatter(x[~hollow], vals[~hollow], s=18, color=colour, alpha=0.75, zorder=3,
                          label=None if name in labelled else name)
            if hollow.any():
                panel.scatter(x[hollow], vals[hollow], s=22, facecolors="none", edgecolors=colour, zorder=3,
                              label=None if "contended" in labelled else "measured under contention")
                labelled.add("contended")
            labelled.add(name)
        vals = values[runs.index].to_numpy(float)
        if vals.size:
            if interval == "ci" and vals.size >= 2:
                half = float(stats.t.ppf(0.975, vals.size - 1) * vals.std(ddof=1) / math.sqrt(vals.size))
                what = "mean, 95 % CI"
            else:
                half, what = (vals.std(ddof=1) if vals.size >= 2 else 0.0), "mean ± std"
            panel.errorbar(i, vals.mean(), yerr=half, fmt="o", color="black", ms=8, capsize=6,
                           zorder=4, label=None if "mean" in labelled else what)
            labelled.add("mean")
        others = values[in_option & ~ok].dropna().to_numpy(float)
        others = others[np.isfinite(others)]
        if others.size:
            panel.scatter(i + rng.uniform(-0.12, 0.12, others.size), others, s=22, marker="x",
                          color="grey", zorder=2,
                          label=None if "other" in labelled else "not in the mean (did not learn, running)")
            labelled.add("other")
    panel.set_xticks(range(len(options)), [str(o) for o in options])
    panel.set_xlim(-0.6, len(options) - 0.4)
    return options


def panel_width(items: list[tuple[str, pd.DataFrame | None]]) -> float:
    """Inches per panel of a per-option figure: room for every option's name under its tick."""
    return max(5.5, 1.0 * max((len(t) for _, t in items if t is not None), default=1) + 1.5)


def final_figure(df: pd.DataFrame, tables: dict[str, pd.DataFrame], metric: str,
                 axes: list[str] | None = None) -> Figure:
    """Per swept axis a subplot: mean with 95 % CI per option and each run as a dot; in a multi-axis
    sweep the dots are coloured by the other axes' values (the legend says so)."""
    ok = usable(df, metric)
    axes = list(tables) if axes is None else axes
    items = list(tables.items()) or [("all runs", None)]
    fig, panels = panel_grid(len(items), panel_width(items))
    rng = np.random.default_rng(0)  # fixed jitter: the same data gives the same figure
    for panel, (axis, table) in zip(panels, items):
        colour_by, title = _other_axes_label(df, axis, axes) if table is not None else (None, "")
        options = _per_option_panel(panel, df, axis, table, metric, ok, rng, colour_by=colour_by)
        for i, option in enumerate(options):
            n_div = 0 if table is None else int(
                table.loc[table["option"] == option, "n_diverged"].sum())
            if n_div:
                panel.annotate(f"{n_div} diverged", (i, 0.02), xycoords=("data", "axes fraction"),
                               ha="center", color="tab:red", fontsize=8)
        panel.set_xlabel(axis)
        panel.set_ylabel(label(metric))
        panel.set_title(f"{metric} by {axis} (lower is better)")
        panel.grid(alpha=0.3, axis="y")
        if panel.get_legend_handles_labels()[0]:
            panel.legend(fontsize=8, title=title or None, title_fontsize=8)
    fit_layout(fig)
    return fig


def throughput_figure(df: pd.DataFrame, tables: dict[str, pd.DataFrame], axes: list[str],
                      metric: str) -> Figure:
    """Tokens/s per option for each swept axis (dots: runs, black: mean ± std of completed
    runs), and a last panel with the final metric against tokens/s (one colour per option;
    big marker: the option's mean ± std on both axes)."""
    completed = (df["status"] == COMPLETED) & pd.to_numeric(df["tokens_per_s"],
                                                             errors="coerce").notna()
    items = list(tables.items()) or [("all runs", None)]
    fig, panels = panel_grid(len(items) + 1, panel_width(items))
    rng = np.random.default_rng(0)
    unreliable = (df["tokens_per_s_reliable"] == False) if "tokens_per_s_reliable" in df else None  # noqa: E712
    for panel, (axis, table) in zip(panels, items):
        _per_option_panel(panel, df, axis, table, "tokens_per_s", completed, rng, unreliable=unreliable,
                          interval="std")
        panel.set_xlabel(axis)
        panel.set_ylabel(label("tokens_per_s"))
        panel.set_title(f"throughput by {axis} (higher is faster)")
        panel.grid(alpha=0.3, axis="y")
        if panel.get_legend_handles_labels()[0]:
            panel.legend(fontsize=8)

    panel = panels[-1]
    ok = usable(df, metric) & pd.to_numeric(df["tokens_per_s"], errors="coerce").notna()
    groups = curve_groups(df, axes)
    for i, group in enumerate(dict.fromkeys(groups)):
        runs = df[ok & (groups == group)]
        if runs.empty:
            continue
        x = runs["tokens_per_s"].to_numpy(float)
        y = runs[metric].to_numpy(float)
        colour = COLOURS(i % 10)
        panel.scatter(x, y, s=16, color=colour, alpha=0.5, zorder=2)
        sx = x.std(ddof=1) if x.size >= 2 else 0.0
        sy = y.std(ddof=1) if y.size >= 2 else 0.0
        panel.errorbar(x.mean(), y.mean(), xerr=sx, yerr=sy, fmt="o", ms=9, color=colour,
                       mec="black", capsize=4, zorder=3, label=f"{group} (n={len(runs)})")
    if not ok.any():
        panel.text(0.5, 0.5, "no completed runs yet", ha="center", va="center",
                   transform=panel.transAxes)
    panel.set_xlabel(label("tokens_per_s"))
    panel.set_ylabel(label(metric))
    panel.set_title(f"{metric} vs throughput (best: bottom right)")
    panel.grid(alpha=0.3)
    if panel.get_legend_handles_labels()[0]:
        panel.legend(fontsize=8, title="mean ± std per option", title_fontsize=8)
    fit_layout(fig)
    return fig


def report_figures(f, curves: pd.DataFrame) -> dict[str, Any]:
    """Every figure of a report, by file name in report order, each drawn when its function is called."""
    from analysis.verdict_plots import differences_figure, tuning_figure

    per_axis = f.tables if f.axes else {}
    figures = {
        "differences.png": lambda: differences_figure(f),
        "loss_curves.png": lambda: loss_curves_figure(f.runs, curves, f.axes, f.metric),
        "final_loss.png": lambda: final_figure(f.runs, per_axis, f.metric, f.axes),
        "throughput.png": lambda: throughput_figure(f.runs, per_axis, f.axes, f.metric),
    }
    if f.ladder is not None:
        from analysis.ladder_report import scaling_figure

        figures["scaling.png"] = lambda: scaling_figure(f.ladder)
    if f.tuning is not None:
        figures["tuning.png"] = lambda: tuning_figure(f.tuning)
    return figures


def draw_all(f, curves: pd.DataFrame, out: Path) -> list[str]:
    """Every figure of a report into `out`; returns the file names written, in report order."""
    written = []
    for name, make in report_figures(f, curves).items():
        save_figure(make(), out / name)
        written.append(name)
    return written


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically (a report rebuilt mid-sweep never shows half a file)."""
    with atomic_output(path) as handle:
        fig.savefig(handle, format="png", dpi=110)
