"""CLI: `python -m analysis.report DIR` writes DIR/report/ and prints report.md.

DIR/report/ holds results.csv, report.md, index.html (the same report for a browser, with the
figures) and loss_curves.png, final_loss.png, throughput.png.

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
        description="Build DIR/report/ (results.csv, report.md, index.html, loss_curves.png, "
                    "final_loss.png, throughput.png) from a Hydra multirun dir or a single run "
                    "dir; works while a sweep is still running or after some runs failed.")
    parser.add_argument("dir", type=Path, help="sweep dir (multirun/DATE/TIME) or run dir")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        print(f"error: {args.dir} is not a directory", file=sys.stderr)
        return 2
    try:
        out = build_report(args.dir)
    except NoRunsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {out}")
    print()
    print((out / "report.md").read_text(encoding="utf-8"))
    print(f"open in a browser: {(out / 'index.html').resolve().as_uri()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
