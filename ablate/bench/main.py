"""Throughput benchmark: our presets against peers at identical shapes, interleaved in one process.

    python -m ablate.bench                                  # shapes A and B, presets gpt2 and llama, all peers
    python -m ablate.bench --shapes A --steps 30 --json bench.json
    python -m ablate.bench --dtype fp32,bf16                # bf16 autocast next to fp32, with the loss difference
    python -m ablate.bench --components                     # every option of every axis vs the default (shape A)
    python -m ablate.bench --tokenizer                      # our BPE trainer/encoder vs Hugging Face tokenizers
    python -m ablate.bench --data                           # input pipeline (memmap batches) vs step time
    python -m ablate.bench --startup                        # `run.py --cfg job` time, launch to first step
    python -m ablate.bench --shapes B --compile             # presets also under torch.compile, vs eager
    python -m ablate.bench --sweep                          # a small sweep: basic vs batched launcher, fp32 vs auto
    python -m ablate.bench --verdict block                  # a predefined sweep's looks vs the fixed 3-seed plan

What one step is: see ablate/bench/core.py (the same for every model; peers start from our weights).

Timing: first the machine's matmul peak (a large matmul timed for about a second), then for each shape
every model runs its warm-up steps and the timed steps go round-robin over the models (the order rotates
every round), so load from elsewhere on the machine hits all models alike. Reported: the median step.
MFU = flops_per_token (ablate.accounting: 6 x matmul weights + 3 x attention scores over the full T x T,
the same formula for a peer as for the preset of the same shape) x tokens/s / measured matmul peak of
the dtype the matmuls ran in.

Peak memory: see ablate/bench/memory.py.

`transformers` and `tokenizers` are optional (`pip install -e ".[hf]"`): without them the peers or the
tokenizer comparison are skipped with a note.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ablate.bench.candidate import DTYPES, GRAD_CLIP
from ablate.bench.configs import SHAPES
from ablate.bench.core import PEER_OF, PEERS, PRESETS, SEED, compiled, make_batches, make_candidate, row_of, run_interleaved
from ablate.bench.machine import CpuLoad, machine_info, matmul_peak
from ablate.bench.memory import MEMORY_NOTE


# ------------------------------------------------------------------------------------------------
# sections
def available_peers(peers: list[str], notes: list[str]) -> list[str]:
    if any(p.startswith("hf_") for p in peers) and importlib.util.find_spec("transformers") is None:
        notes.append("transformers is not installed: hf_gpt2 and hf_llama skipped "
                     "(pip install -e '.[hf]' or pip install transformers)")
        return [p for p in peers if not p.startswith("hf_")]
    return list(peers)


def bench_models(args, device, peaks, notes) -> tuple[list[dict], list[dict]]:
    peers = available_peers(args.peers, notes)
    rows, ratios = [], []
    for shape_name in args.shapes:
        shape = SHAPES[shape_name]
        candidates = []
        for dtype in args.dtype:
            candidates += [make_candidate(p, "ours", shape_name, shape, dtype, device, preset=p) for p in args.presets]
            candidates += [make_candidate(p, "peer", shape_name, shape, dtype, device) for p in peers]
        batches = make_batches(shape, max(args.warmup + args.steps, 2), device)
        eval_batch = make_batches(shape, 1, device, seed=SEED + 1)[0]
        if args.compile:
            candidates += [compiled(make_candidate(f"{p}+compile", "ours", shape_name, shape, dtype, device, preset=p,
                                                   extra={"eager": p}), batches[0])
                           for dtype in args.dtype for p in args.presets]
        run_interleaved(candidates, batches, args.warmup, args.steps, args.memory, eval_batch)
        shape_rows = [row_of(c, peaks) for c in candidates]
        by_key = {(r["model"], r["dtype"]): r for r in shape_rows}
        for r in shape_rows:
            fp32 = by_key.get((r["model"], "fp32"))
            r["loss_diff_vs_fp32"] = (r["final_loss"] - fp32["final_loss"]
                                      if r["dtype"] != "fp32" and fp32 and fp32["final_loss"] is not None else None)
            r["vs"], r["ours_over_peer"] = None, None
            if r["kind"] == "peer" and (PEER_OF[r["model"]], r["dtype"]) in by_key:
                ours = by_key[(PEER_OF[r["model"]], r["dtype"])]
                r["vs"] = ours["model"]
                r["ours_over_peer"] = ours["tokens_per_s"] / r["tokens_per_s"]
                ratios.append({
                    "shape": shape_name, "dtype": r["dtype"], "ours": ours["model"], "peer": r["model"],
                    "tokens_per_s_ratio": r["ours_over_peer"],
                    "peak_mib_ratio": (ours["peak_mib"] / r["peak_mib"]) if ours["peak_mib"] and r["peak_mib"] else None,
                    "loss_diff": ours["final_loss"] - r["final_loss"],
                })
        for r in shape_rows:
            if "eager" in r:  # a compiled preset: its speed-up over the same preset in eager mode
                r["over_eager"] = r["tokens_per_s"] / by_key[(r["eager"], r["dtype"])]["tokens_per_s"]
        rows += shape_rows
        del candidates
    return rows, ratios


# ------------------------------------------------------------------------------------------------
def comma_list(allowed: tuple[str, ...] | None):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if allowed is not None and t not in allowed]
        if bad or (allowed is not None and not items):
            raise argparse.ArgumentTypeError(f"{','.join(bad) or text!r}: choose from {', '.join(allowed)}")
        return items
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    shapes = ", ".join(f"{k}: {v.n_layers} layers, {v.n_heads} heads, d_model {v.d_model}, context {v.context}, "
                       f"batch {v.batch}, vocab {v.vocab}" for k, v in SHAPES.items())
    p = argparse.ArgumentParser(prog="python -m ablate.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"shapes: {shapes}")
    p.add_argument("--shapes", type=comma_list(tuple(SHAPES)), default=None, help="comma list (default A,B)")
    p.add_argument("--presets", type=comma_list(PRESETS), default=list(PRESETS), help="our presets (default gpt2,llama)")
    p.add_argument("--peers", type=comma_list(PEERS), default=list(PEERS),
                   help="default nanogpt,hf_gpt2,hf_llama; hf_* need transformers")
    p.add_argument("--no-peers", action="store_true", help="time our presets only")
    p.add_argument("--steps", type=int, default=20, help="timed steps per model (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model before timing (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--dtype", type=comma_list(tuple(DTYPES)), default=None,
                   help="fp32, bf16 (autocast) or fp32,bf16 (default fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--components", action="store_true", help="every option of each axis vs the default (shape A)")
    p.add_argument("--tokenizer", action="store_true", help="our BPE vs Hugging Face tokenizers (vocab 4096)")
    p.add_argument("--tokenizer-vocab", type=int, default=4096)
    p.add_argument("--data", action="store_true", help="input pipeline time vs step time")
    p.add_argument("--startup", action="store_true", help="`run.py --cfg job` time and a run's launch-to-first-step time")
    p.add_argument("--repeats", type=int, default=3,
                   help="fresh processes per --startup figure, rounds of --sweep (default 3)")
    p.add_argument("--sweep", action="store_true",
                   help="a small multirun under hydra/launcher=basic and batched, train.dtype=fp32 and auto, side by side")
    p.add_argument("--sweep-grid", type=lambda text: text.split(), default=None, metavar="'K=V,V ...'",
                   help="the --sweep grid (default 'norm=rms,ln train.seed=0,1,2')")
    p.add_argument("--sweep-steps", type=int, default=30, help="train.max_steps of each --sweep job (default 30)")
    p.add_argument("--run-overrides", type=lambda text: text.split(), default=[], metavar="'K=V ...'",
                   help="extra run.py overrides for --startup and --verdict (e.g. a small corpus)")
    p.add_argument("--verdict", type=lambda text: [t for t in text.split(",") if t], default=None, metavar="SWEEPS",
                   help="predefined sweeps (comma list): their verdict plan against the fixed 3-seed plan "
                        "(analysis/bench_verdict.py; real sweeps, minutes each)")
    p.add_argument("--noise", action="store_true",
                   help="the paired noise of a run's final loss under each reading (analysis/bench_noise.py; ~25 min)")
    p.add_argument("--verdict-dir", type=Path, default=Path("bench-verdict"),
                   help="where --verdict's sweeps run (default ./bench-verdict; a finished one is read, not re-run)")
    p.add_argument("--models", action="store_true", help="the preset/peer table (the default when no section is named)")
    p.add_argument("--compile", action="store_true",
                   help="also time each preset under torch.compile (train.compile=true); reports the compile time")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory probe")
    p.add_argument("--peak-seconds", type=float, default=1.0, help="seconds per matmul-peak measurement")
    args = p.parse_args(argv)
    args.shapes_given = args.shapes is not None
    args.shapes = args.shapes or ["A", "B"]
    if args.no_peers:
        args.peers = []
    if args.steps < 1 or args.warmup < 0 or args.threads < 1 or args.repeats < 1 or args.sweep_steps < 1:
        p.error("--steps must be >= 1, --warmup >= 0, --threads >= 1, --repeats >= 1, --sweep-steps >= 1")
    if not (args.components or args.tokenizer or args.data or args.startup or args.sweep or args.verdict or args.noise):
        args.models = True
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from ablate.bench.sections import bench_components, bench_data, bench_tokenizer
    from ablate.bench.startup import bench_startup
    from ablate.bench.sweep import bench_sweep
    from ablate.bench.tables import report  # lazily: only the sections asked for are imported

    args = parse_args(argv)
    if args.verdict or args.noise:  # whole sweeps, read by the report's code: its own process (a layer above)
        import subprocess
        import sys

        command = ([sys.executable, "-m", "analysis.bench_verdict", *args.verdict, "--dir", str(args.verdict_dir),
                    "--overrides", " ".join(args.run_overrides)] if args.verdict else
                   [sys.executable, "-m", "analysis.bench_noise"])
        command += ["--json", str(args.json)] if args.json else []
        raise SystemExit(subprocess.run(command, cwd=Path(__file__).resolve().parents[2]).returncode)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              "cpu" if args.device == "auto" else args.device)
        args.dtype = args.dtype or (["bf16"] if device.type == "cuda" else ["fp32"])

        def peak_of(dtype: str) -> float:
            return matmul_peak(DTYPES[dtype] or torch.float32, device, args.peak_seconds)

        notes: list[str] = []
        load = CpuLoad()
        result: dict[str, Any] = {
            "machine": machine_info(device),
            "config": {"shapes": {s: asdict(SHAPES[s]) for s in args.shapes}, "presets": args.presets,
                       "peers": args.peers, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
                       "dtypes": args.dtype, "memory": args.memory, "grad_clip": GRAD_CLIP, "seed": SEED},
            "notes": notes,
        }
        if args.models or args.components:
            result["peak_gflops"] = {d: peak_of(d) for d in DTYPES}
        peaks = result.get("peak_gflops", {})
        if peaks and "bf16" in args.dtype and peaks["bf16"] < peaks["fp32"]:
            notes.append(f"bf16 matmuls run at {peaks['bf16']:,.1f} GFLOP/s here against {peaks['fp32']:,.1f} in fp32 "
                         f"(no native bf16 units on this {device.type}): bf16 autocast costs throughput on this machine")
        if args.models:
            result["rows"], result["ratios"] = bench_models(args, device, result["peak_gflops"], notes)
            # A shared machine's speed drifts over minutes: measure the peak again after the table and
            # take the higher of the two, so MFU is never flattered by a slow first measurement.
            after = {d: peak_of(d) for d in args.dtype}
            result["peak_gflops_before"] = dict(peaks)
            for d, gflops in after.items():
                peaks[d] = max(peaks[d], gflops)
            for row in result["rows"]:
                if row["tokens_per_s"]:
                    row["mfu"] = row["flops_per_token"] * row["tokens_per_s"] / (peaks[row["dtype"]] * 1e9)
            notes.append("matmul peak: " + ", ".join(f"{d} {result['peak_gflops_before'][d]:,.1f} before the model "
                                                     f"table and {after[d]:,.1f} after" for d in after)
                         + " GFLOP/s; MFU uses the higher")
        if args.components:
            result["components"] = bench_components(args, device, notes)
        if args.tokenizer:
            result["tokenizer"] = bench_tokenizer(args, notes)
        if args.data:
            result["data"] = bench_data(args, device, notes)
        if args.startup:
            result["startup"] = bench_startup(args, notes)
        if args.sweep:
            result["sweep"] = bench_sweep(args, notes)
        result["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        result["cpu_load"] = load.result()
        if args.memory and (args.models or args.components):
            result["memory_definition"] = MEMORY_NOTE
        print(report(result))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")
            print(f"wrote {args.json}")
        return result
    finally:
        torch.set_num_threads(threads_before)


if __name__ == "__main__":
    main()
