"""`python -m analysis.report DIR --speed`: a trustworthy speed column for a sweep.

The tokens/s a run records measures the machine while it ran: on a shared machine another job's
load shows up as an option's "cost". Here every configuration of the sweep (its runs' own
.hydra/config.yaml) is built once in this process and timed with the benchmark's interleaved loop
(`ablate.bench`: warm-up, then round-robin steps with a rotating order, median step), so load hits
all options alike. Imports torch and the training code, which the rest of `analysis` never does.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ablate.rundir.files import atomic_write_text as write_text
from analysis.collect import load_results, swept_axes
from analysis.tuning import TUNE_STAGE


def _bench() -> Any:
    """The benchmark's public pieces (`ablate.bench`), imported in this one place."""
    from types import SimpleNamespace

    from ablate.bench.configs import Shape
    from ablate.bench.core import make_batches, make_candidate, run_interleaved
    from ablate.bench.machine import CpuLoad
    from ablate.config.schema import structured

    return SimpleNamespace(make_candidate=make_candidate, make_batches=make_batches, run_interleaved=run_interleaved,
                           Shape=Shape, CpuLoad=CpuLoad, structured=structured)


def configurations(sweep: Path) -> pd.DataFrame:
    """One row per configuration of the verdict's runs: its label, axis values and one run dir."""
    df = load_results(sweep)
    runs = df[df["stage"] != TUNE_STAGE]
    runs.attrs.update(df.attrs)
    axes = swept_axes(runs)
    keyed = runs.assign(configuration=runs[axes].astype("string").fillna("?").agg(
        lambda r: ", ".join(f"{a}={r[a]}" for a in axes), axis=1) if axes else "all runs")
    firsts = keyed.drop_duplicates("configuration")
    return firsts[["configuration", *axes, "run", "vocab_size"]].reset_index(drop=True)


def write_speed(sweep: Path, out: Path, steps: int = 20, warmup: int = 3) -> pd.DataFrame:
    """Time every configuration interleaved; write `out/speed.csv` and return it."""
    import torch
    from omegaconf import OmegaConf

    b = _bench()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    table = configurations(sweep)
    candidates = []
    for row in table.itertuples():
        cfg = b.structured(OmegaConf.load(sweep / row.run / ".hydra" / "config.yaml"))
        vocab = int(row.vocab_size) if not math.isnan(row.vocab_size) else int(cfg.tokenizer.get("vocab_size", 257))
        shape = b.Shape(n_layers=cfg.model.n_layers, n_heads=cfg.model.n_heads, d_model=cfg.model.d_model,
                        context=cfg.model.context_length, batch=cfg.train.batch_size, vocab=vocab)
        dtype = "bf16" if device.type == "cuda" else "fp32"
        candidates.append((b.make_candidate(row.configuration, "option", "sweep", shape, dtype, device, cfg=cfg),
                           shape))
    shapes = {s for _, s in candidates}
    load = b.CpuLoad()
    if len(shapes) == 1:  # one batch stream for all: the usual case (the axes change no shape)
        shape = shapes.pop()
        batches = b.make_batches(shape, warmup + steps, device)
        b.run_interleaved([c for c, _ in candidates], batches, warmup, steps, False,
                          b.make_batches(shape, 1, device, seed=1)[0])
    else:  # shapes differ (e.g. a d_model axis): interleave step by step, each with its own batches
        for candidate, shape in candidates:
            candidate.extra["batches"] = b.make_batches(shape, warmup + steps, device)
        for i in range(warmup + steps):
            order = candidates[i % len(candidates):] + candidates[:i % len(candidates)]
            for candidate, _ in order:
                elapsed = candidate.step(*candidate.extra["batches"][i])
                if i >= warmup:
                    candidate.step_s.append(elapsed)
    machine = load.result() or {}
    table["step_ms"] = [1e3 * c.median_step_s for c, _ in candidates]
    table["tokens_per_s"] = [c.tokens_per_s for c, _ in candidates]
    table["relative_to_first"] = table["tokens_per_s"] / table["tokens_per_s"].iloc[0]
    table["others_cpu_share"] = machine.get("others_cpu_share")
    table["steps_timed"] = steps
    table["device"] = str(device)
    write_text(out / "speed.csv", table.drop(columns=["run", "vocab_size"]).to_csv(index=False))
    print(f"speed (interleaved, {steps} steps each, median step; other processes took "
          f"{100 * machine.get('others_cpu_share', math.nan):.0f} % of the CPU meanwhile):")
    print(table[["configuration", "step_ms", "tokens_per_s", "relative_to_first"]].to_string(index=False))
    if machine.get("others_cpu_share", 0.0) > 0.10:
        print("warning: other processes took more than 10 % of the CPU while timing: even interleaved, "
              "differences of a few tens of percent are within the machine's noise; re-run on an idle machine "
              "or with more --speed-steps")
    return table
