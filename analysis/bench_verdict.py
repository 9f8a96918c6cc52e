"""`python -m ablate.bench --verdict block,norm` (or `python -m analysis.bench_verdict block norm`): a predefined sweep's verdict plan against the fixed 3-seed
plan it replaced: wall time, runs, and per comparison the verdict, its interval and the smallest difference
its seeds resolve (80 % power, `resolvable`).

Both plans are read off one sweep, so they are measured side by side on one machine: the sweep runs as
its file says (seeds in looks, `compare.looks`), and its first look is the fixed plan's runs exactly (the
same tuning, the same rates, seeds 0-2), tested as the fixed plan tests them (one look at the whole
`compare.alpha`). The fixed plan's wall time is the sweep's, less the later looks' (looks.json). A sweep
without looks in its file runs as it is and is its own fixed plan. A folder that already holds the
finished sweep is read, not re-run (delete it to measure again).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ablate.bench.multirun import run_multirun
from analysis.collect import load_results, swept_axes
from analysis.family import compare_axes, runs_upto
from analysis.stats import choose_metric
from analysis.tuning import TUNE_STAGE, tuning_of

FIXED_SEEDS = 3  # the plan every predefined sweep had before its seeds came in looks


def run_sweep(sweep: str, folder: Path, overrides: list[str]) -> float:
    """`python ablate/run.py -m +sweep=SWEEP` into `folder` (its wall seconds; NaN when it was there)."""
    if (folder / "report" / "comparisons.csv").is_file():
        return math.nan
    return run_multirun([f"+sweep={sweep}", "logger=none", *overrides], folder)


def plans(folder: Path) -> dict[str, Any]:
    """Both plans' figures from the finished sweep in `folder`."""
    df = load_results(folder)
    settings = df.attrs["compare"]
    verdict = df[df["stage"] != TUNE_STAGE]
    verdict.attrs.update(df.attrs)
    axes = swept_axes(verdict, settings["tuned"])
    metric, _ = choose_metric(verdict)
    record = folder / "looks.json"
    rounds = json.loads(record.read_text())["rounds"] if record.is_file() else []
    later_s = sum(float(r["wall_s"]) for r in rounds[1:])
    first = runs_upto(verdict, 1)
    first = first[first["seed"].astype(int) < FIXED_SEEDS] if "seed" in first else first
    first.attrs.update(df.attrs)
    fixed, _ = compare_axes(first, axes, metric, {**settings, "looks": []})
    sequential, _ = compare_axes(verdict, axes, metric, settings)
    n_tuning = int((df["stage"] == TUNE_STAGE).sum())
    tuning = tuning_of(df, axes, metric, settings["tuned"], folder)  # the report's reading of the tuning runs
    chosen = dict(zip(tuning.chosen["variant"], tuning.chosen["used"])) if tuning is not None else {}
    return {"chosen": chosen,
            "fixed": {"runs": n_tuning + len(first), "later_looks_s": later_s, "comparisons": rows(fixed)},
            "looks": {"runs": len(df), "looks": settings.get("looks") or [], "comparisons": rows(sequential)}}


def rows(comparisons: list) -> list[dict[str, Any]]:
    """comparisons.csv's row of each, with the sd of its per-seed differences (`paired_sd`, what the
    resolvable difference scales with; the pooled sd of one run where unpaired)."""
    return [{**c.row(), "paired_sd": c.spread} for c in comparisons]


def bench_verdict(sweeps: list[str], root: Path, overrides: list[str]) -> dict[str, Any]:
    result = {}
    for sweep in sweeps:
        folder = root.resolve() / sweep
        wall = run_sweep(sweep, folder, overrides)
        found = plans(folder)
        timing = folder / "wall_s.json"  # the wall time of the run that made the folder, kept beside it
        if not math.isnan(wall):
            timing.write_text(json.dumps({"wall_s": wall}) + "\n")
        wall = json.loads(timing.read_text())["wall_s"] if timing.is_file() else math.nan
        found["looks"]["wall_s"] = wall
        found["fixed"]["wall_s"] = wall - found["fixed"]["later_looks_s"]
        result[sweep] = found
    print(report(result))
    return result


def report(result: dict[str, Any]) -> str:
    lines = ["Verdict plans, side by side (the fixed plan: the sweep's first look, seeds 0-2, tested at the whole alpha):"]
    for sweep, found in result.items():
        fixed, looks = found["fixed"], found["looks"]
        lines.append(f"\n+sweep={sweep}: fixed {FIXED_SEEDS} seeds: {fixed['runs']} runs, {fixed['wall_s'] / 60:.1f} min; "
                     f"looks {looks['looks'] or '(none: the sweep is a fixed plan)'}: {looks['runs']} runs, "
                     f"{looks['wall_s'] / 60:.1f} min")
        if found.get("chosen"):
            lines.append("  verdict runs at the tuned " + ", ".join(f"{variant}: {value}" for variant, value
                                                                  in found["chosen"].items()))
        lines.append(f"  {'comparison':28} {'plan':6} {'seeds':>5} {'look':>4} {'diff':>8} {'95% interval':>20} "
                     f"{'sd':>7} {'resolvable':>10}  verdict")
        by_name = {(c["axis"], c["option"]): c for c in fixed["comparisons"]}
        for c in looks["comparisons"]:
            name = f"{c['axis']}={c['option']} vs {c['baseline']}"
            for plan, row in (("fixed", by_name.get((c["axis"], c["option"]))), ("looks", c)):
                if row is None:
                    continue
                lines.append(f"  {name:28} {plan:6} {row['n_seeds']:>5} {row['look']:>4} {row['diff_mean']:>+8.4f} "
                             f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] {row['paired_sd']:>7.4f} {row['resolvable']:>10.4f}  "
                             f"{row['verdict']}")
                name = ""
        ratios = [by_name[(c["axis"], c["option"])]["resolvable"] / c["resolvable"] for c in looks["comparisons"]
                  if (c["axis"], c["option"]) in by_name and c["resolvable"] > 0]
        if ratios:
            lines.append(f"  resolvable, fixed / looks: {', '.join(f'{r:.2f}x' for r in ratios)}; wall time "
                         f"{looks['wall_s'] / max(fixed['wall_s'], 1e-9):.2f}x the fixed plan's")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import argparse

    p = argparse.ArgumentParser(prog="python -m analysis.bench_verdict", description=__doc__.split("\n\n")[0])
    p.add_argument("sweeps", nargs="+", help="predefined sweeps (sweeps/NAME.yaml)")
    p.add_argument("--dir", type=Path, default=Path("bench-verdict"), help="where the sweeps run (default ./bench-verdict)")
    p.add_argument("--overrides", type=lambda text: text.split(), default=[], help="'K=V ...' for every run")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)
    result = bench_verdict(args.sweeps, args.dir, args.overrides)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
