"""Sweep analysis for ablate: reads only files that runs wrote (no torch, no training code),
so a report can be rebuilt from a sweep directory copied off a cluster.

    from analysis import build_report
    build_report("multirun/2026-11-25/10-00-00")   # -> .../report/

Interactive use (see analysis/compare.ipynb): load_results / load_curves / swept_axes give
DataFrames, ranked_tables + ranked_frame the report's tables, analysis.plots its figures.

The Hydra callback lives in `analysis.callbacks` (not imported here, so this package does not
need hydra at import time).
"""
from analysis.collect import find_runs, load_curves, load_results, swept_axes
from analysis.build import NoRunsError, build_report
from analysis.markdown import ranked_frame, verdict_text
from analysis.stats import choose_metric, config_table, decide, ranked_tables

__all__ = [
    "NoRunsError", "build_report", "choose_metric", "config_table", "decide", "find_runs",
    "load_curves", "load_results", "ranked_frame", "ranked_tables", "swept_axes",
    "verdict_text",
]
