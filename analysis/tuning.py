"""Per-variant tuning as the runs recorded it: the tuning runs (`compare.stage=tune`, on seeds the
verdict never uses) score each tuned value per variant; the value with the lowest mean is the one
the verdict's runs were launched with (hydra_plugins/ablate_tuning picks it by the same rule)."""
from __future__ import annotations

import math
from dataclasses import dataclass
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
    table: pd.DataFrame   # variant, value, mean, n, n_runs (one row per variant x tuned value)
    chosen: pd.DataFrame  # variant, chosen (from the tuning runs), used (by the verdict's runs), edge
    seeds: list[Any]
    n_runs: int

    @property
    def seeds_text(self) -> str:
        return ", ".join(str(s) for s in self.seeds)

    def blocks(self, para: Callable, table: Callable) -> list[Any]:
        values = list(dict.fromkeys(self.table["value"]))
        rows = []
        for _, c in self.chosen.iterrows():
            cells = []
            for v in values:
                hit = self.table[(self.table["variant"] == c["variant"]) & (self.table["value"] == v)]
                mean = hit["mean"].iloc[0] if len(hit) else math.nan
                cells.append("–" if math.isnan(mean) else f"{mean:.4f}" + (" ◀" if v == c["chosen"] else ""))
            rows.append([f"`{c['variant']}`", *cells, f"`{c['chosen']}`", f"`{c['used']}`",
                         "yes: widen the grid" if c["edge"] else "no"])
        header = ["variant", *[f"{'/'.join(self.keys)}={v}" for v in values], "chosen", "verdict runs at",
                  "at the grid's edge"]
        text = (f"Each variant was trained at every value of {', '.join(f'`{k}`' for k in self.keys)} on "
                f"the tuning seeds ({self.seeds_text}); its verdict runs then ran fresh, on the verdict's "
                f"own seeds, at the value with the lowest mean `{self.metric}` (◀). Choosing on other "
                f"seeds keeps the selection's luck out of the verdict. A run that failed or diverged "
                f"scores +inf. A choice at the grid's edge means the best value may lie outside it.")
        return [para(text), table(header, rows, [False] + [True] * len(values) + [False] * 3)]


def _variant_label(frame: pd.DataFrame, axes: list[str]) -> pd.Series:
    if not axes:
        return pd.Series("all runs", index=frame.index)
    return frame[axes].astype("string").fillna("?").apply(
        lambda r: ", ".join(f"{a}={r[a]}" for a in axes) if len(axes) > 1 else str(r[axes[0]]), axis=1)


def tuning_of(df: pd.DataFrame, axes: list[str], metric: str, keys: list[str]) -> Tuning | None:
    """The tuning of a sweep, or None when it has no tuning runs."""
    if "stage" not in df or not keys:
        return None
    tune = df[df["stage"] == TUNE_STAGE]
    keys = [k for k in keys if k in df]
    if tune.empty or not keys:
        return None
    value = tune[keys].astype("string").fillna("?").agg(",".join, axis=1)
    score = pd.to_numeric(tune[metric], errors="coerce").where(tune["status"] == "completed", np.inf)
    score = score.fillna(np.inf)
    frame = pd.DataFrame({"variant": _variant_label(tune, axes), "value": value, "score": score})
    table = (frame.groupby(["variant", "value"], sort=False)["score"]
             .agg(mean="mean", n=lambda s: int(np.isfinite(s).sum()), n_runs="size").reset_index())
    verdict = df[df["stage"] != TUNE_STAGE]
    used_by_variant = dict(zip(_variant_label(verdict, axes),
                               verdict[keys].astype("string").fillna("?").agg(",".join, axis=1)))
    chosen_rows = []
    for variant, group in table.groupby("variant", sort=False):
        order = sorted(group["value"], key=lambda v: (_as_number(v.split(",")[0]), v))
        best = group.loc[group["mean"].idxmin(), "value"] if np.isfinite(group["mean"]).any() else None
        chosen_rows.append({"variant": variant, "chosen": best, "used": used_by_variant.get(variant, "–"),
                            "edge": best is not None and len(order) > 2 and best in (order[0], order[-1])})
    seeds = sorted(pd.to_numeric(tune["seed"], errors="coerce").dropna().astype(int).unique().tolist())
    return Tuning(keys, metric, table, pd.DataFrame(chosen_rows), seeds, len(tune))
