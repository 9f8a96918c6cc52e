"""Sweep analysis for ablate: reads only files that runs wrote (no torch, no training code),
so a report can be rebuilt from a sweep directory copied off a cluster.

    from analysis import build_report
    build_report("multirun/2026-11-25/10-00-00")   # -> .../report/

Interactive use (see analysis/compare.ipynb): load_results / load_curves / swept_axes give
DataFrames, gather(DIR) everything the report says (tables, comparisons with the baseline, tuning),
ranked_tables + ranked_frame the per-option tables (numeric), analysis.plots the figures.

The Hydra callback lives in `analysis.callbacks` (not imported here, so this package does not
need hydra at import time).
"""
from __future__ import annotations

import importlib
from typing import Any

# Names resolve on first use (PEP 562): importing `analysis.callbacks` at Hydra start-up must not
# pull in pandas, which costs about 0.4 s before every run's first step.
_HOME = {
    "find_runs": "collect", "load_curves": "collect", "load_results": "collect", "swept_axes": "collect",
    "NoRunsError": "build", "build_report": "build", "gather": "build",
    "ranked_frame": "markdown",
    "choose_metric": "stats", "config_table": "stats", "ranked_tables": "stats",
    "compare_axes": "family", "comparisons_frame": "verdict", "holm": "sequential",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(f"analysis.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
