"""The interim analysis the tuning sweeper asks for after each look of a sequential verdict
(`compare.looks`): which comparisons are decided, which are futile, which get the next look's seeds.

It reads the sweep directory as the report does and decides with the report's own code
(analysis.family.compare_axes on the runs of looks 1..k), so what the sweeper did and what the report
says can never disagree. The sweeper names it in `hydra.sweeper.judge` (a Hydra config string, as
conf/config.yaml names the report's callback), so the launcher layer does not import analysis.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.collect import load_results, swept_axes
from analysis.family import LookPlan, compare_axes, runs_upto
from analysis.stats import choose_metric
from analysis.tuning import TUNE_STAGE
from analysis.verdict import BETTER, WORSE

DECIDED, FUTILE, OPEN, NOT_TESTED = "decided", "futile", "open", "not tested"


def judge(sweep_dir: str, look: int) -> dict[str, Any]:
    """After look `look`: every comparison as {axis, option, baseline, state, conditional_power, verdict}
    (state: decided, futile, open or not tested), the verdict runs so far and their summed wall time."""
    df = load_results(Path(sweep_dir))
    runs = df[df["stage"] != TUNE_STAGE]
    runs = runs_upto(runs, look)
    runs.attrs.update(df.attrs)
    wall = pd.to_numeric(runs.get("wall_time_s", pd.Series(dtype=float)), errors="coerce").fillna(0.0).sum()
    return {"comparisons": states(runs, df.attrs["compare"]), "runs": len(runs), "wall_s": float(wall)}


def states(runs: pd.DataFrame, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Each comparison of these verdict runs (one look's and those before) with its state."""
    axes = swept_axes(runs, settings["tuned"]) if len(runs) else []
    if not axes:
        return []
    metric, _ = choose_metric(runs)
    futility = LookPlan.of(settings, runs).futility
    rows = []
    for c in compare_axes(runs, axes, metric, settings)[0]:
        if c.verdict in (BETTER, WORSE):
            state = DECIDED
        elif math.isnan(c.p_value):
            state = NOT_TESTED  # not compared (did not learn, no runs): more seeds of the same would not help
        elif not math.isnan(c.conditional_power) and c.conditional_power < futility:
            state = FUTILE
        else:
            state = OPEN
        rows.append({"axis": c.axis, "option": c.option, "baseline": c.baseline, "state": state,
                     "conditional_power": c.conditional_power, "verdict": c.verdict})
    return rows
