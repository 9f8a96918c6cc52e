"""The report's content as a list of blocks, rendered to report.md (here) and index.html
(`analysis.html`), so the two always show the same tables and verdicts.

Text inside blocks uses a small inline-markdown subset: `code`, **bold**, *emphasis*.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import pandas as pd

from analysis.stats import NO_SPREAD, NOISE_RULE, SIZE_TOLERANCE, Verdict, decide

MAX_ERROR_CHARS = 400  # keep the table readable; results.csv holds the full error

# Figures of a report, in the order they are shown: (file name, caption).
FIGURES = [
    ("loss_curves.png", "validation loss against steps and against wall-clock time, per option"),
    ("final_loss.png", "final metric per option: every seed and mean ± std"),
    ("throughput.png", "training throughput (tokens/s) per option, and final metric against it"),
]


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: list[bool] = field(default_factory=list)  # right-align these columns (HTML)


@dataclass
class Figure:
    src: str
    alt: str


Block = Union[Heading, Para, Bullets, Table, Figure]


def _num(x: Any, fmt: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)) or pd.isna(x):
        return "–"
    return format(x, fmt)


def _cell(x: Any) -> str:
    """One line of text, truncated; renderers escape what their format needs."""
    text = "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "…"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table; `|` inside cells is escaped so it cannot break a column."""
    esc: Callable[[str], str] = lambda s: str(s).replace("|", "\\|")
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def option_label(option: Any, keys: list[str]) -> str:
    if isinstance(option, tuple):
        return ", ".join(f"{k}={v}" for k, v in zip(keys, option))
    return str(option)


RANKED_NUMERIC = [True, False, True, True, True, True, True, True, True, True, True, False]


def ranked_rows(t: pd.DataFrame, label: str, keys: list[str],
                metric: str) -> tuple[list[str], list[list[str]], str]:
    """(header, rows, note) of an `aggregate` table; ⚠ marks size/compute more than 2 % above
    the smallest option, and `note` explains it (empty when nothing is flagged)."""
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
    note = ""
    if t[["flag_params_total", "flag_flops_per_token"]].to_numpy().any():
        note = (f"⚠ params_total or flops_per_token more than {SIZE_TOLERANCE:.0%} above the "
                f"smallest option: part of a difference may come from model size or compute, "
                f"not from the design choice.")
    return header, rows, note


def ranked_table(t: pd.DataFrame, label: str, keys: list[str], metric: str) -> str:
    """Markdown of an `aggregate` table (with the ⚠ note under it when needed)."""
    header, rows, note = ranked_rows(t, label, keys, metric)
    return table(header, rows) + (f"\n\n{note}" if note else "")


def ranked_frame(t: pd.DataFrame, label: str, keys: list[str] | None = None,
                 metric: str = "final_val_loss") -> pd.DataFrame:
    """The ranked table exactly as report.md shows it, as a DataFrame (for notebooks)."""
    header, rows, _ = ranked_rows(t, label, keys if keys is not None else [label], metric)
    frame = pd.DataFrame(rows, columns=header)
    frame[label] = frame[label].str.strip("`")
    return frame


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


def not_in_means_blocks(df: pd.DataFrame, metric: str, axes: list[str]) -> list[Block]:
    curve = {"final_val_loss": "val_loss"}.get(metric, metric)
    bad = df[~((df["status"] == "completed") & df[metric].notna())]
    if bad.empty:
        return [Para("All runs completed and enter the means.")]
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
    header = ["run", "status", *axes, "seed", "error / reason"]
    numeric = [False, False, *[False] * len(axes), True, False]
    return [
        Para("These runs are excluded from every mean above. A diverged run counts as a loss "
             "for its option (it ranks below options that never diverged), not as a missing "
             "value."),
        Table(header, rows, numeric),
    ]


def not_in_means(df: pd.DataFrame, metric: str, axes: list[str]) -> str:
    return to_markdown(not_in_means_blocks(df, metric, axes)).rstrip("\n")


def _ranked_blocks(t: pd.DataFrame, label: str, keys: list[str], metric: str) -> list[Block]:
    header, rows, note = ranked_rows(t, label, keys, metric)
    return [Table(header, rows, RANKED_NUMERIC)] + ([Para(note)] if note else [])


def document(sweep: str, df: pd.DataFrame, axes: list[str], metric: str, metric_reason: str,
             axis_tables: dict[str, pd.DataFrame], configs: pd.DataFrame | None,
             jobs_note: str, figures: list[str] | None = None) -> list[Block]:
    """The whole report as blocks. `figures`: PNG names to show (default: all of FIGURES)."""
    counts = df["status"].value_counts()
    status_text = ", ".join(f"{n} {s}" for s, n in counts.items())
    facts = [
        f"Sweep: `{sweep}`",
        f"Runs: {len(df)} ({status_text})",
        "Swept axes: " + (", ".join(f"`{a}`" for a in axes) or "none (one configuration)"),
    ]
    if jobs_note:
        facts.append(jobs_note)
    blocks: list[Block] = [
        Heading(1, "Sweep report"), Bullets(facts),
        Heading(2, "Rule"), Para(metric_reason),
        Para("Only completed runs enter the means (n completed/runs counts them); diverged, "
             "failed, interrupted and running runs are listed under *Runs not in the means*. "
             "std is over all completed runs of an option (seeds and the other axes' values); "
             "seed std is the spread over seeds with the other axes held fixed (pooled)."),
        Para(f"Noise rule: {NOISE_RULE}."),
    ]
    for axis, t in axis_tables.items():
        blocks += [Heading(2, f"Axis `{axis}`"), *_ranked_blocks(t, axis, [axis], metric),
                   Para(verdict_text(decide(t), metric))]
    if configs is not None:
        blocks += [Heading(2, "Per configuration (all swept axes, aggregated over seeds)"),
                   *_ranked_blocks(configs, "configuration", axes, metric),
                   Para(verdict_text(decide(configs, lambda o: option_label(o, axes)), metric))]
    blocks += [Heading(2, "Runs not in the means"), *not_in_means_blocks(df, metric, axes),
               Heading(2, "Figures")]
    shown = figures if figures is not None else [name for name, _ in FIGURES]
    captions = dict(FIGURES)
    blocks += [Figure(name, captions.get(name, name)) for name in shown]
    return blocks


def to_markdown(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            parts.append(b.text)
        elif isinstance(b, Bullets):
            parts.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, Table):
            parts.append(table(b.header, b.rows))
        elif isinstance(b, Figure):
            parts.append(f"![{b.alt}]({b.src})")
    return "\n\n".join(parts) + "\n"


def render(sweep: str, df: pd.DataFrame, axes: list[str], metric: str, metric_reason: str,
           axis_tables: dict[str, pd.DataFrame], configs: pd.DataFrame | None,
           jobs_note: str) -> str:
    """report.md."""
    return to_markdown(document(sweep, df, axes, metric, metric_reason, axis_tables, configs,
                                jobs_note))
