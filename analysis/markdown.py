"""Render report.md from results and ranked tables."""
from __future__ import annotations

import math
from typing import Any, Callable

import pandas as pd

from analysis.stats import NO_SPREAD, NOISE_RULE, SIZE_TOLERANCE, Verdict, decide

MAX_ERROR_CHARS = 400  # keep the table readable; results.csv holds the full error


def _num(x: Any, fmt: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)) or pd.isna(x):
        return "–"
    return format(x, fmt)


def _cell(x: Any) -> str:
    """Markdown-table-safe text: one line, no column breaks."""
    text = "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "…"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def option_label(option: Any, keys: list[str]) -> str:
    if isinstance(option, tuple):
        return ", ".join(f"{k}={v}" for k, v in zip(keys, option))
    return str(option)


def ranked_table(t: pd.DataFrame, label: str, keys: list[str], metric: str) -> str:
    """Markdown of an `aggregate` table; ⚠ marks size/compute more than 2 % above smallest."""
    flag: Callable[[pd.Series, str], str] = lambda r, c: " ⚠" if r.get(f"flag_{c}") else ""
    rows = []
    rank = 0
    for _, r in t.iterrows():
        rank += 1
        rows.append([
            str(rank) if r["n"] > 0 else "–",
            f"`{option_label(r['option'], keys)}`",
            f"{r['n']}/{r['n_runs']}",
            f"{_num(r['mean'])} ± {_num(r['std'])}",
            _num(r["seed_std"]),
            _num(r["min"]),
            _num(r["max"]),
            _num(r["params_total"], ",.0f") + flag(r, "params_total"),
            _num(r["params_non_embedding"], ",.0f"),
            _num(r["flops_per_token"], ".4g") + flag(r, "flops_per_token"),
            _num(r["tokens_per_s"], ",.0f"),
            _cell(r["other"]) or "–",
        ])
    header = ["rank", label, "n completed/runs", f"{metric} mean ± std", "seed std", "min",
              "max", "params_total", "params_non_embedding", "flops_per_token", "tokens/s",
              "not in means"]
    out = table(header, rows)
    if t[["flag_params_total", "flag_flops_per_token"]].to_numpy().any():
        out += (f"\n\n⚠ params_total or flops_per_token more than {SIZE_TOLERANCE:.0%} above the "
                f"smallest option: part of a difference may come from model size or compute, "
                f"not from the design choice.")
    return out


def verdict_text(v: Verdict, metric: str) -> str:
    if v.winner is None:
        return "No winner: no completed runs."
    if v.runner_up is None:
        return f"**Winner: `{v.winner}`** ({v.verdict})."
    if v.verdict == NO_SPREAD:
        detail = f"margin {_num(v.margin)} over `{v.runner_up}`"
    else:
        detail = (f"margin {_num(v.margin)} in {metric} over runner-up `{v.runner_up}` vs "
                  f"max seed std {_num(v.threshold)}")
    text = f"**Winner: `{v.winner}`** — {detail}: **{v.verdict}**."
    return text + (f" Note: {v.note}." if v.note else "")


def not_in_means(df: pd.DataFrame, metric: str, axes: list[str]) -> str:
    curve = {"final_val_loss": "val_loss"}.get(metric, metric)
    bad = df[~((df["status"] == "completed") & df[metric].notna())]
    if bad.empty:
        return "All runs completed and enter the means."
    rows = []
    for _, r in bad.iterrows():
        error = r["error"]
        if r["status"] == "completed":
            error = f"no {metric} recorded"
        elif r["status"] == "running" and not _cell(error):
            error = ("no summary.json: still running, or killed before it finished "
                     f"(last step {_num(r['steps'], '.0f')}, last {curve} {_num(r[metric])})")
        rows.append([f"`{r['run']}`", r["status"], *[_cell(r[a]) for a in axes],
                     _num(r["seed"], ".0f"), _cell(error) or "–"])
    return (
        "These runs are excluded from every mean above. A diverged run counts as a loss for "
        "its option (it ranks below options that never diverged), not as a missing value.\n\n"
        + table(["run", "status", *axes, "seed", "error / reason"], rows))


def render(sweep: str, df: pd.DataFrame, axes: list[str], metric: str, metric_reason: str,
           axis_tables: dict[str, pd.DataFrame], configs: pd.DataFrame | None,
           jobs_note: str) -> str:
    counts = df["status"].value_counts()
    status_text = ", ".join(f"{n} {s}" for s, n in counts.items())
    lines = [
        "# Sweep report", "",
        f"- Sweep: `{sweep}`",
        f"- Runs: {len(df)} ({status_text})",
        "- Swept axes: " + (", ".join(f"`{a}`" for a in axes) or "none (one configuration)"),
    ]
    if jobs_note:
        lines.append(f"- {jobs_note}")
    lines += [
        "", "## Rule", "",
        metric_reason, "",
        "Only completed runs enter the means (n completed/runs counts them); diverged, failed, "
        "interrupted and running runs are listed under *Runs not in the means*. std is over all "
        "completed runs of an option (seeds and the other axes' values); seed std is the spread "
        "over seeds with the other axes held fixed (pooled).", "",
        f"Noise rule: {NOISE_RULE}.", "",
    ]
    for axis, t in axis_tables.items():
        lines += [f"## Axis `{axis}`", "", ranked_table(t, axis, [axis], metric), "",
                  verdict_text(decide(t), metric), ""]
    if configs is not None:
        lines += ["## Per configuration (all swept axes, aggregated over seeds)", "",
                  ranked_table(configs, "configuration", axes, metric), "",
                  verdict_text(decide(configs, lambda o: option_label(o, axes)), metric), ""]
    lines += ["## Runs not in the means", "", not_in_means(df, metric, axes), "",
              "## Figures", "", "![loss curves](loss_curves.png)", "",
              "![final metric per option](final_loss.png)", ""]
    return "\n".join(lines)
