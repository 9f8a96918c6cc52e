"""The benchmark's printed report: one table per section, with what each column means."""
from __future__ import annotations

import math
import textwrap
from typing import Any

from ablate.bench.memory import MEMORY_NOTE


def fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec) if spec else str(value)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Fixed-width text table; columns are (header, key, format spec)."""
    cells = [[header for header, _, _ in columns]]
    cells += [[fmt(row.get(key), spec) for _, key, spec in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def human(n) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


MODEL_COLUMNS = [("shape", "shape", ""), ("model", "model", ""), ("kind", "kind", ""), ("dtype", "dtype", ""),
                 ("params", "params_h", ""), ("step ms", "step_ms", ".1f"), ("tok/s", "tokens_per_s", ",.0f"),
                 ("MFU", "mfu", ".1%"), ("peak MiB", "peak_mib", ".1f"), ("loss", "final_loss", ".4f"),
                 ("Δloss vs fp32", "loss_diff_vs_fp32", "+.4f"), ("ours/peer", "ratio_h", "")]
COMPONENT_COLUMNS = [("axis", "axis", ""), ("option", "option_h", ""), ("params", "params_h", ""),
                     ("step ms", "step_ms", ".1f"), ("tok/s", "tokens_per_s", ",.0f"),
                     ("tok/s ×", "tokens_per_s_ratio", ".2f"), ("peak MiB", "peak_mib", ".1f"),
                     ("mem ×", "peak_mib_ratio", ".2f"), ("note", "status_h", "")]
TOKENIZER_COLUMNS = [("tokenizer", "tokenizer", ""), ("vocab", "vocab_size", ""), ("train s", "train_s", ".2f"),
                     ("train ×", "train_s_ratio", ".2f"), ("encode MB/s", "encode_mb_per_s", ".2f"),
                     ("encode ×", "encode_mb_per_s_ratio", ".2f"), ("tok/s", "encode_tokens_per_s", ",.0f"),
                     ("bytes/token", "bytes_per_token", ".3f")]
SWEEP_COLUMNS = [("launcher", "launcher", ""), ("train.dtype", "dtype", ""), ("computed in", "computed_in", ""),
                 ("jobs", "jobs", ""), ("completed", "completed", ""), ("wall s", "wall_s", ".1f"),
                 ("speed-up", "speedup", ".2f"), ("loss rel diff", "loss_rel_diff_same_dtype", ".1e"),
                 ("Δfinal vs fp32", "final_loss_diff_vs_fp32", ".4f"), ("verdicts", "verdicts_h", "")]
DATA_COLUMNS = [("shape", "shape", ""), ("model", "model", ""), ("dtype", "dtype", ""), ("batch ms", "batch_ms", ".3f"),
                ("step ms", "step_ms", ".1f"), ("input share", "input_share", ".2%"), ("prepare s", "prepare_s", ".2f")]


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    peaks = result.get("peak_gflops", {})
    out = [f"machine: {m['cpu']} ({m['cpu_count']} cores), device {m['device']}"
           + (f" ({m['gpu']})" if m.get("gpu") else "") + f", {m['torch_threads']} torch threads, torch {m['torch']}"
           + f", load average {', '.join(f'{x:.2f}' for x in m['load_average'] or [])}"
           + (f" -> {', '.join(f'{x:.2f}' for x in result['load_average_after'])}" if result.get("load_average_after") else "")]
    load = result.get("cpu_load")
    if load:
        out.append(f"during the run ({load['wall_s']:.0f} s): this process used {load['own_cpu_share']:.0%} of the "
                   f"{load['cpus']} CPUs, other processes {load['others_cpu_share']:.0%}, hypervisor steal "
                   f"{load['steal_share']:.0%}" + ("  <- BUSY MACHINE: absolute numbers are unreliable; the "
                                                  "interleaved ratios less so" if load["others_cpu_share"] > 0.1
                                                  or load["steal_share"] > 0.1 else ""))
        if load["others_cpu_share"] > 0.1 and m["torch_threads"] >= (load["cpus"] or 1):
            out.append("  with as many torch threads as cores and another process running, every parallel region "
                       "waits for a descheduled thread (steps can get 10x slower): compare with --threads 1")
    if peaks:
        out.append("matmul peak: " + ", ".join(f"{k} {v:,.1f} GFLOP/s" for k, v in peaks.items()))
    if result.get("rows"):
        rows = [{**r, "params_h": human(r["params"]),
                 "ratio_h": f"{r['ours_over_peer']:.2f} ({r['vs']})" if r.get("ours_over_peer") else
                 f"{r['over_eager']:.2f} (eager; compile {r['compile_s']:.0f} s)" if r.get("over_eager") else None}
                for r in result["rows"]]
        out += ["", table(rows, MODEL_COLUMNS),
                f"step = zero_grad + forward + loss + backward + clip + AdamW; median of {result['config']['steps']} "
                f"interleaved steps; tok/s = batch x context / median step; MFU = flops_per_token x tok/s / matmul "
                f"peak of the dtype; loss = fp32 cross-entropy on a held-out random batch after the run (a peer starts "
                f"from a copy of its preset's weights and sees the same batches: equal first-step losses (JSON "
                f"first_loss) show it computes the same function; over the run rounding differences may grow); "
                f"ours/peer = tok/s of our preset / tok/s of the peer.", MEMORY_NOTE]
    if result.get("components"):
        rows = [{**r, "params_h": human(r["params"]),
                 "option_h": r["option"] + (" (default)" if r["default"] else ""),
                 "status_h": None if r["status"] == "ok" else f"{r['status']}: {r.get('error', '')[:60]}"}
                for r in result["components"]]
        out += ["", table(rows, COMPONENT_COLUMNS), "tok/s × and mem × are option / default. " + MEMORY_NOTE]
    if result.get("tokenizer"):
        out += ["", table(result["tokenizer"], TOKENIZER_COLUMNS)]
    if result.get("data"):
        out += ["", table(result["data"], DATA_COLUMNS)]
    if result.get("startup"):
        s = result["startup"]
        out += ["", f"start-up: `python ablate/run.py --cfg job` {s['cfg_job_s']:.2f} s; launch to first training step "
                    f"done {s['first_step_s_wandb']:.2f} s with W&B (offline), {s['first_step_s_none']:.2f} s with "
                    f"logger=none"]
    if result.get("sweep"):
        rows = [{**r, "verdicts_h": "same as basic fp32" if r["verdicts_match"] else "; ".join(r["verdicts"])}
                for r in result["sweep"]["rows"]]
        out += ["", table(rows, SWEEP_COLUMNS), "verdicts of basic fp32: "
                + ("; ".join(result["sweep"]["rows"][0]["verdicts"]) or "none (no report)")]
    out += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(line if line.startswith(("-", " ")) or "  " in line.strip() else
                     textwrap.fill(line, width=118, subsequent_indent="  ") for line in "\n".join(out).split("\n"))
