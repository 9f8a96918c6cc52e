"""`python -m ablate.bench.tuning_cost block norm ffn pos`: what successive halving saves in a predefined
sweep's tuning stage, and whether it chooses what full-length tuning chooses.

Each sweep's tuning stage runs twice into DIR/SWEEP/{full,halved} (`hydra.sweeper.tune_only=true`: no
verdict runs), once with every value at full length (`hydra.sweeper.halving=null`, the rule before
halving) and once halved; the table gives per variant both choices, how many grid steps apart they are,
and the steps each trained (tuning.json's `tuning_steps`, cooldowns included). It also scores a second
rule on the halved runs: a quadratic fit of the first budget's scores against log(rate), its minimum
taken inside the tried range and rounded to the nearest tried value, to see which rule agrees better
with full-length tuning. A sweep directory that already holds a finished stage is read, not re-run.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ablate.bench.multirun import run_multirun

# the rules scored against full-length tuning: the halving's (best at the last budget), the best at the
# first budget alone (what one budget would choose), a quadratic fit over the first budget's scores
RULES = ("halved", "first", "fit")


def run_stage(sweep: str, folder: Path, halved: bool, extra: list[str]) -> dict[str, Any]:
    """The sweep's tuning stage into `folder` (skipped when its tuning.json is there); its tuning.json and wall time."""
    record = folder / "tuning.json"
    started = time.perf_counter()
    if not record.is_file():
        run_multirun([f"+sweep={sweep}", "hydra.sweeper.tune_only=true", *extra,
                      *([] if halved else ["hydra.sweeper.halving=null"])], folder)
    found = json.loads(record.read_text())
    found["wall_s"] = time.perf_counter() - started
    return found


def rate(point: list[str] | None) -> float:
    return float(point[0].split("=", 1)[1]) if point else math.nan


def fit_choice(rung: dict[str, Any]) -> float:
    """The rate a quadratic in log(rate) through the first budget's finite scores puts its minimum at,
    inside the tried range, rounded to the nearest tried rate (the lowest score where it opens downwards)."""
    pairs = sorted((float(k.split("=", 1)[1]), v) for k, v in rung["scores"].items() if math.isfinite(v))
    if len(pairs) < 3:
        return min(pairs, key=lambda p: p[1])[0] if pairs else math.nan
    x, y = np.log([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    quadratic = np.polynomial.Polynomial.fit(x, y, 2).convert()
    c = quadratic.coef
    best = -c[1] / (2 * c[2]) if len(c) == 3 and c[2] > 0 else x[int(np.argmin(y))]
    best = float(np.clip(best, x.min(), x.max()))
    return pairs[int(np.argmin(np.abs(x - best)))][0]


def grid_steps(a: float, b: float, ratio: float = 2.0) -> float:
    return abs(math.log(a / b) / math.log(ratio)) if a > 0 and b > 0 else math.nan


def compare(sweep: str, full: dict[str, Any], halved: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    shared = set.intersection(*(set(c["variant"]) for c in full["choices"])) if full["choices"] else set()
    for f, h in zip(full["choices"], halved["choices"]):
        own = [o for o in f["variant"] if o not in shared]
        first = h.get("rungs", [{}])[0] if h.get("rungs") else None
        at_first = min(first["scores"].items(), key=lambda kv: kv[1])[0] if first and first["scores"] else None
        rows.append({"sweep": sweep, "variant": " ".join(own[-1:]) or "all",
                     "full": rate(f["chosen"]), "halved": rate(h["chosen"]),
                     "first": float(at_first.split("=", 1)[1]) if at_first else math.nan,
                     "fit": fit_choice(first) if first else math.nan})
    for row in rows:
        for rule in RULES:
            row[f"{rule}_off"] = grid_steps(row[rule], row["full"])
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m ablate.bench.tuning_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("sweeps", nargs="+", help="predefined sweeps (sweeps/NAME.yaml) with tuning")
    p.add_argument("--dir", type=Path, default=Path("bench-tuning"), help="where both stages run (default ./bench-tuning)")
    p.add_argument("--overrides", type=lambda text: text.split(), default=[], help="'K=V ...' for every run")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the table as JSON")
    args = p.parse_args(argv)
    rows, costs = [], []
    for sweep in args.sweeps:
        full = run_stage(sweep, args.dir.resolve() / sweep / "full", False, args.overrides)
        halved = run_stage(sweep, args.dir.resolve() / sweep / "halved", True, args.overrides)
        rows += compare(sweep, full, halved)
        costs.append({"sweep": sweep, "full_steps": full["tuning_steps"], "halved_steps": halved["tuning_steps"],
                      "ratio": halved["tuning_steps"] / full["tuning_steps"],
                      "full_runs": len(full["scores"]), "halved_runs": len(halved["scores"]),
                      "rungs": [(r["steps"], r["cooldown"]) for r in halved["halving"]["rungs"]],
                      "full_wall_s": round(full["wall_s"], 1), "halved_wall_s": round(halved["wall_s"], 1)})
    print("Tuning steps (sum over tuning runs, cooldowns included):")
    print(f"{'sweep':8} {'full':>7} {'halved':>7} {'ratio':>6}  runs full/halved  budgets (steps + cooldown)")
    for c in costs:
        print(f"{c['sweep']:8} {c['full_steps']:>7} {c['halved_steps']:>7} {c['ratio']:>6.3f}  "
              f"{c['full_runs']:>4}/{c['halved_runs']:<4}         {', '.join(f'{s}+{d}' for s, d in c['rungs'])}")
    print("\nChosen rate per variant (grid steps from full-length tuning's choice):")
    print(f"{'sweep':8} {'variant':22} {'full':>8}" + "".join(f" {rule:>8} {'off':>4}" for rule in RULES))
    for r in rows:
        print(f"{r['sweep']:8} {r['variant']:22} {r['full']:>8.4g}"
              + "".join(f" {r[rule]:>8.4g} {r[rule + '_off']:>4.1f}" for rule in RULES))
    agree = {rule: sum(r[f"{rule}_off"] < 0.5 for r in rows) for rule in RULES}
    within = {rule: sum(r[f"{rule}_off"] < 1.5 for r in rows) for rule in RULES}
    print(f"\nOf {len(rows)} variants, the same rate as full-length tuning: "
          + ", ".join(f"{rule} {agree[rule]}" for rule in RULES)
          + "; within one grid step: " + ", ".join(f"{rule} {within[rule]}" for rule in RULES))
    result = {"costs": costs, "choices": rows, "agree": agree, "within_one_step": within}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
