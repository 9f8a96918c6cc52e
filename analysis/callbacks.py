"""Hydra callback that writes the sweep report when a multirun ends.

Enabled in conf/config.yaml under `hydra.callbacks.sweep_report`.
"""
from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # The runs are already on disk: a report problem must never fail the sweep, so every
        # error is printed, not raised. The report can be rebuilt with
        # `python -m analysis.report SWEEP_DIR`.
        try:
            from analysis.report import build_report  # lazy: matplotlib only when used

            sweep_dir = Path(str(config.hydra.sweep.dir))
            out = build_report(sweep_dir)
            print(f"[analysis] sweep report: {out / 'report.md'} "
                  f"(in a browser: {out / 'index.html'})")
        except Exception:
            print("[analysis] could not build the sweep report (the sweep itself is fine):")
            traceback.print_exc()
