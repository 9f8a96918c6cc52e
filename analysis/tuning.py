"""Per-variant tuning as the runs recorded it: the tuning runs (`compare.stage=tune`, on seeds the
verdict never uses) score each tuned value per variant; the value with the lowest mean is the one
the verdict's runs were launched with (hydra_plugins/ablate_tuning_sweeper picks it by the same rule).
The sweeper extends a variant's grid past an edge its best value lands on (`hydra.sweeper.extend`
steps per side); the grid as written and that limit are read from the sweeps' multirun.yaml. With
successive halving (`hydra.sweeper.halving`) a value is judged at each budget it reached, after a
cooldown branched from its constant-rate trunk; it counts at the last one, the choice is made among the
values judged at the variant's last budget (the sweeper's rule)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

TUNE_STAGE = "tune"


def _as_number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class Tuning:
    keys: list[str]
    metric: str
    table: pd.DataFrame   # variant, value, mean, n, n_runs, budget (one row per variant x tuned value: its last budget)
    chosen: pd.DataFrame  # variant, chosen (from the tuning runs), used (by the verdict's runs), edge
    seeds: list[Any]
    n_runs: int
    grid: dict[str, list[float]] = field(default_factory=dict)  # the grid as written (multirun.yaml)
    extend: int = 0                                             # steps past its edge the sweeper may take
    budgets: pd.DataFrame | None = None  # with halving: variant, value, budget, mean, n for every budget judged at

    @property
    def halved(self) -> bool:
        return self.budgets is not None and self.budgets["budget"].nunique() > 1

    @property
    def extended(self) -> list[str]:
        """The variants that tried values beyond the grid as written."""
        if not self.grid or any(k not in self.grid for k in self.keys):
            return []
        def in_grid(value: str) -> bool:
            return all(any(math.isclose(_as_number(v), g, rel_tol=1e-9) for g in self.grid[k])
                       for k, v in zip(self.keys, value.split(",")))
        beyond = self.table[~self.table["value"].map(in_grid)]
        return list(dict.fromkeys(beyond["variant"]))

    @property
    def seeds_text(self) -> str:
        return ", ".join(str(s) for s in self.seeds)

    def blocks(self, para: Callable, table: Callable) -> list[Any]:
        values = sorted(dict.fromkeys(self.table["value"]), key=lambda v: (_as_number(v.split(",")[0]), v))
        extended = self.extended
        rows = []
        for _, c in self.chosen.iterrows():
            cells = []
            for v in values:  # blank: a value this variant did not try (another's extension)
                hit = self.table[(self.table["variant"] == c["variant"]) & (self.table["value"] == v)]
                mean = hit["mean"].iloc[0] if len(hit) else math.nan
                at = f" ({int(hit['budget'].iloc[0])})" if self.halved and len(hit) else ""
                cells.append("" if math.isnan(mean) else f"{mean:.4f}{at}" + (" ◀" if v == c["chosen"] else ""))
            edge = "no"
            if c["edge"]:
                edge = ("yes, after extending: widen the grid" if c["variant"] in extended
                        else "yes: widen the grid")
            rows.append([f"`{c['variant']}`", *cells, f"`{c['chosen']}`", f"`{c['used']}`", edge])
        header = ["variant", *[f"{'/'.join(self.keys)}={v}" for v in values], "chosen", "verdict runs at",
                  "at the grid's edge"]
        text = (f"Each variant was trained at every value of {', '.join(f'`{k}`' for k in self.keys)} on "
                f"the tuning seeds ({self.seeds_text}); its verdict runs then ran fresh, on the verdict's "
                f"own seeds, at the value with the lowest mean `{self.metric}` (◀). Choosing on other "
                f"seeds keeps the selection's luck out of the verdict. A run that failed or diverged "
                f"scores +inf. A choice at the grid's edge means the best value may lie outside it"
                + self._extension_text() + "." + self._halving_text())
        return [para(text), table(header, rows, [False] + [True] * len(values) + [False] * 3)]

    def _halving_text(self) -> str:
        if not self.halved:
            return ""
        budgets = sorted(int(b) for b in self.budgets["budget"].dropna().unique())
        return (f" The values were compared by successive halving: every value trained {budgets[0]} steps at its "
                f"constant rate (after warmup) and was judged after a short cooldown to 0 branched from there; "
                f"the best of each variant's values (1 in hydra.sweeper.halving.eta, at least 2) went on from those states to "
                f"{', then '.join(str(b) for b in budgets[1:])} steps, so no step at the constant rate was trained "
                f"twice. A score is from the last budget the value reached (its steps in brackets), and the "
                f"choice is the best at the variant's last budget; tuning.png draws every budget.")

    def _extension_text(self) -> str:
        if self.extend <= 0:
            return ""
        steps = f"{self.extend} grid step{'s' if self.extend > 1 else ''}"
        done = self.extended
        which = (f"it was extended for {', '.join(f'`{v}`' for v in done)} (the extra columns; blank: not "
                 f"tried)" if done else "no variant's choice needed it")
        return (f"; so the grid is extended automatically: a variant whose best value lies at an edge tries "
                f"up to {steps} further beyond it, on the same tuning seeds, while its best stays at the new "
                f"edge; {which}. A choice still at the edge after that is flagged below")


def sweep_grid(sweep: Path) -> tuple[dict[str, list[float]], int]:
    """The tuning grid as written ({key: numbers}, numeric values only) and `hydra.sweeper.extend`,
    from the multirun.yaml of every tuning sweep under `sweep` (empty, 0 when there is none)."""
    from omegaconf import OmegaConf

    from hydra_plugins.ablate_tuning_sweeper.tuning_sweeper import grid_axes

    grid: dict[str, list[float]] = {}
    extend = 0
    files = [sweep / "multirun.yaml"] if (sweep / "multirun.yaml").is_file() else sorted(sweep.rglob("multirun.yaml"))
    for path in files:
        try:
            sweeper = OmegaConf.load(path).hydra.sweeper
            if "TuningSweeper" not in str(sweeper.get("_target_", "")) or not sweeper.get("tune"):
                continue
            axes = grid_axes({str(k): str(v) for k, v in sweeper.tune.items()})
        except Exception:  # not a tuning sweep's, or unreadable: it says nothing about the grid
            continue
        extend = max(extend, int(sweeper.get("extend", 0) or 0))  # absent: written before extension existed
        for key, values in axes.items():
            grid.setdefault(key, [])
            grid[key] += [n for n in map(_as_number, values) if not math.isnan(n) and n not in grid[key]]
    return grid, extend


def _variant_label(frame: pd.DataFrame, axes: list[str]) -> pd.Series:
    if not axes:
        return pd.Series("all runs", index=frame.index)
    return frame[axes].astype("string").fillna("?").apply(
        lambda r: ", ".join(f"{a}={r[a]}" for a in axes) if len(axes) > 1 else str(r[axes[0]]), axis=1)


def tuning_of(df: pd.DataFrame, axes: list[str], metric: str, keys: list[str],
              sweep: Path | None = None) -> Tuning | None:
    """The tuning of a sweep, or None when it has no tuning runs; `sweep` (its folder) tells the
    grid as written from the values an extension added."""
    if "stage" not in df or not keys:
        return None
    tune = df[df["stage"] == TUNE_STAGE]
    keys = [k for k in keys if k in df]
    if tune.empty or not keys:
        return None
    value = tune[keys].astype("string").fillna("?").agg(",".join, axis=1)
    score = pd.to_numeric(tune[metric], errors="coerce").where(tune["status"] == "completed", np.inf)
    score = score.fillna(np.inf)
    frame = pd.DataFrame({"variant": _variant_label(tune, axes), "value": value, "score": score,
                          "budget": budget_of(tune)})
    every = (frame.groupby(["variant", "value", "budget"], sort=False, dropna=False)["score"]
             .agg(mean="mean", n=lambda s: int(np.isfinite(s).sum()), n_runs="size").reset_index())
    # a value counts at the last budget it reached; the choice is among the values at the variant's last
    last = every.groupby(["variant", "value"], sort=False)["budget"].transform("max")
    table = every[(every["budget"] == last) | last.isna()].reset_index(drop=True)
    verdict = df[df["stage"] != TUNE_STAGE]
    used_by_variant = dict(zip(_variant_label(verdict, axes),
                               verdict[keys].astype("string").fillna("?").agg(",".join, axis=1)))
    chosen_rows = []
    for variant, group in table.groupby("variant", sort=False):
        order = sorted(group["value"], key=lambda v: (_as_number(v.split(",")[0]), v))
        final = group[group["budget"] == group["budget"].max()] if group["budget"].notna().any() else group
        best = final.loc[final["mean"].idxmin(), "value"] if np.isfinite(final["mean"]).any() else None
        chosen_rows.append({"variant": variant, "chosen": best, "used": used_by_variant.get(variant, "–"),
                            "edge": best is not None and len(order) > 2 and best in (order[0], order[-1])})
    seeds = sorted(pd.to_numeric(tune["seed"], errors="coerce").dropna().astype(int).unique().tolist())
    grid, extend = sweep_grid(sweep) if sweep is not None else ({}, 0)
    return Tuning(keys, metric, table, pd.DataFrame(chosen_rows), seeds, len(tune), grid, extend, every)


def budget_of(tune: pd.DataFrame) -> pd.Series:
    """Steps each tuning run trained at its constant rate before it was judged: a halving rung's trunk
    (train.max_steps less its wsd cooldown, train.save_trunk set by the sweeper), else its train.max_steps
    (NaN where the runs did not record it)."""
    def column(name: str) -> pd.Series:
        return pd.to_numeric(tune[name], errors="coerce") if name in tune else pd.Series(np.nan, index=tune.index)
    steps = column("train.max_steps").fillna(column("steps"))
    trunk = (tune["train.save_trunk"].astype("string").str.lower().eq("true").fillna(False)
             if "train.save_trunk" in tune else pd.Series(False, index=tune.index))
    cooldown = (column("schedule.decay_fraction") * steps).round()
    return steps.where(~trunk, steps - cooldown)
