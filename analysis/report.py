"""CLI: `python -m analysis.report DIR` writes DIR/report/ and prints report.md.

DIR/report/ holds results.csv (one row per run), comparisons.csv (each option against its axis's
baseline: difference, 95 % CI, p, Holm-adjusted p, verdict), report.md, index.html (the same report
for a browser, with the figures) and the figures differences.png, loss_curves.png, final_loss.png,
throughput.png (and tuning.png when keys were tuned per variant); for a scale ladder (+ladder=NAME)
scaling.csv, multipliers.csv, transfer.csv and scaling.png.

    python -m analysis.report DIR              # the whole report
    python -m analysis.report DIR --no-plots   # tables and text only (no matplotlib: fast)
    python -m analysis.report DIR --speed      # also time every option interleaved in one process
    python -m analysis.report DIR --baseline ffn=gelu   # compare with another baseline than the runs named

DIR is a Hydra multirun dir (multirun/DATE/TIME) or a single run dir. Exit status 2 when DIR
holds no runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.build import NoRunsError, build_report, expected_jobs

__all__ = ["NoRunsError", "build_report", "expected_jobs", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Build DIR/report/ (results.csv, comparisons.csv, report.md, index.html and "
                    "figures) from a Hydra multirun dir or a single run dir; works while a sweep is "
                    "still running or after some runs failed.")
    parser.add_argument("dir", type=Path, help="sweep dir (multirun/DATE/TIME) or run dir")
    parser.add_argument("--no-plots", action="store_true",
                        help="write the tables and report text only, no figures (fast)")
    parser.add_argument("--speed", action="store_true",
                        help="time one training step of every option interleaved in one process on "
                             "this machine (imports torch) and write report/speed.csv; tokens/s "
                             "recorded by runs that shared a busy machine measure its load")
    parser.add_argument("--speed-steps", type=int, default=20, help="timed steps per option (--speed)")
    parser.add_argument("--baseline", action="append", default=[], metavar="AXIS=OPTION",
                        help="compare every option of AXIS with OPTION (repeatable), whatever compare.baseline "
                             "the runs recorded; e.g. --baseline ffn=gelu")
    args = parser.parse_args(argv)
    baseline = {}
    for item in args.baseline:
        axis, sep, option = item.partition("=")
        if not sep or not axis or not option:
            print(f"error: --baseline {item!r}: expected AXIS=OPTION, e.g. --baseline ffn=gelu", file=sys.stderr)
            return 2
        baseline[axis.strip()] = option.strip()
    if not args.dir.is_dir():
        print(f"error: {args.dir} is not a directory", file=sys.stderr)
        return 2
    try:
        out = build_report(args.dir, plots=not args.no_plots, baseline=baseline)
    except NoRunsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.speed:
        from analysis.speed import write_speed  # torch and the benchmark: only when asked

        write_speed(args.dir, out, steps=args.speed_steps)
    print(f"report: {out}")
    print()
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"open in a browser: {(out / 'index.html').resolve().as_uri()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
