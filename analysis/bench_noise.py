"""`python -m ablate.bench --noise` (or `python -m analysis.bench_noise`): the noise of one run's final loss, per seed and per pair, under each way
of reading it, measured on real runs of two comparisons (norm: rms vs ln; ffn: swiglu vs gelu).

The verdict's paired t-test sees the per-seed difference of two variants; its sd sets what a sweep
resolves (`analysis.verdict.detectable_difference`). Three sources of noise in it are measured here:
  - the evaluation's windows: `final_val_loss` over the whole held-out split (train.final_eval_tokens)
    against the curve's last point on train.eval_batches random windows (the final loss before);
  - the initialisation: each weight seeded by its name (model.init_by_name=true), so weights two variants
    share start equal, against one stream for the whole model (false), where an extra or resized matrix
    shifts every later draw (ffn: a GLU's matrices are not an MLP's; norm: no weights drawn, equal anyway);
  - the metric: the mean of the last 3 evaluations on the curve's windows, against the last one alone.
Each comparison trains seeds 0..S-1 at one shared rate (no tuning: the pairs' noise alone), into
DIR/NAME (a folder that already holds a finished sweep is read, not re-run).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ablate.bench.multirun import ROOT, run_multirun
from analysis.verdict import detectable_difference

# (name, axis, baseline, option, extra overrides): each trained at a shared rate, seeds 0..S-1
CASES = (("norm", "norm", "rms", "ln", ["model.init_by_name=true"]),
         ("ffn_by_name", "ffn", "swiglu", "gelu", ["model.init_by_name=true"]),
         ("ffn_stream", "ffn", "swiglu", "gelu", ["model.init_by_name=false"]))
READINGS = {  # how one run's final loss is read: from summary.json and metrics.jsonl
    "whole split": lambda summary, curve: summary["final_val_loss"],
    "8 windows": lambda summary, curve: curve[-1],
    "last 3, 8 windows": lambda summary, curve: float(np.mean(curve[-3:])),
}


def train_case(folder: Path, axis: str, options: list[str], seeds: int, overrides: list[str]) -> float:
    """The sweep into `folder` (nothing when it finished before); its wall time in seconds."""
    if (folder / "multirun.yaml").is_file() and len(list(folder.glob("*/summary.json"))) == len(options) * seeds:
        return math.nan
    return run_multirun([f"{axis}={','.join(options)}", f"train.seed=range(0,{seeds})", "hydra/launcher=batched",
                         "logger=none", *overrides], folder)


def losses(folder: Path, axis: str) -> dict[tuple[str, int], dict[str, float]]:
    """(option, seed) -> each reading of its final loss, for the completed runs in `folder`."""
    found = {}
    for path in folder.glob("*/summary.json"):
        summary = json.loads(path.read_text())
        if summary["status"] != "completed":
            continue
        rows = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
        curve = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
        option = summary["choices"][axis]
        found[(option, int(summary["seed"]))] = {name: read(summary, curve) for name, read in READINGS.items()}
    return found


def figures(found: dict[tuple[str, int], dict[str, float]], baseline: str, option: str) -> list[dict[str, Any]]:
    seeds = sorted(s for o, s in found if o == baseline and (option, s) in found)
    rows = []
    for reading in READINGS:
        a = np.array([found[(baseline, s)][reading] for s in seeds])
        b = np.array([found[(option, s)][reading] for s in seeds])
        d = b - a
        sd = float(d.std(ddof=1))
        rows.append({"reading": reading, "seeds": len(seeds), "mean_diff": float(d.mean()), "paired_sd": sd,
                     "sd_baseline": float(a.std(ddof=1)), "sd_option": float(b.std(ddof=1)),
                     "correlation": float(np.corrcoef(a, b)[0, 1]),
                     "resolvable_10_seeds": detectable_difference(sd, 10, 0.05, True)})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m analysis.bench_noise", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=6, help="seeds per option (default 6)")
    p.add_argument("--dir", type=Path, default=Path("bench-noise"), help="where the runs go (default ./bench-noise)")
    p.add_argument("--overrides", type=lambda text: text.split(),
                   default=["train.max_steps=300", "train.eval_interval=50", "optim.lr=0.003"],
                   help="'K=V ...' for every run (default: the predefined sweeps' 300 steps at one rate, 0.003)")
    p.add_argument("--cases", type=lambda text: text.split(","), default=[c[0] for c in CASES])
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the table as JSON")
    args = p.parse_args(argv)
    result = {"overrides": args.overrides, "cases": []}
    for name, axis, baseline, option, extra in (c for c in CASES if c[0] in args.cases):
        folder = args.dir.resolve() / name
        wall = train_case(folder, axis, [baseline, option], args.seeds, [*args.overrides, *extra])
        rows = figures(losses(folder, axis), baseline, option)
        result["cases"].append({"case": name, "comparison": f"{axis}={option} vs {baseline}", "overrides": extra,
                                "wall_s": wall, "rows": rows})
    print(f"Per-seed noise of the final loss ({' '.join(args.overrides)}; nats):")
    print(f"{'case':12} {'comparison':20} {'reading':18} {'seeds':>5} {'diff':>8} {'paired sd':>9} "
          f"{'sd base':>8} {'sd opt':>8} {'corr':>5} {'resolvable@10':>13}")
    for case in result["cases"]:
        for r in case["rows"]:
            print(f"{case['case']:12} {case['comparison']:20} {r['reading']:18} {r['seeds']:>5} {r['mean_diff']:>+8.4f} "
                  f"{r['paired_sd']:>9.4f} {r['sd_baseline']:>8.4f} {r['sd_option']:>8.4f} {r['correlation']:>5.2f} "
                  f"{r['resolvable_10_seeds']:>13.4f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
