"""Sweep analysis for ablate: reads only files that runs wrote (no torch, no training code),
so a report can be rebuilt from a sweep directory copied off a cluster.

    from analysis import build_report
    build_report("multirun/2026-11-25/10-00-00")   # -> .../report/

The Hydra callback lives in `analysis.callbacks` (not imported here, so this package does not
need hydra at import time).
"""
from analysis.collect import find_runs, load_curves, load_results, swept_axes
from analysis.build import NoRunsError, build_report
from analysis.stats import choose_metric, decide

__all__ = [
    "NoRunsError", "build_report", "choose_metric", "decide", "find_runs", "load_curves",
    "load_results", "swept_axes",
]
