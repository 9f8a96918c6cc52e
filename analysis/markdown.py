"""The report's content as a list of blocks, rendered to report.md (here) and index.html
(`analysis.html`), so the two always show the same tables and verdicts.

Text inside blocks uses a small inline-markdown subset: `code`, **bold**, *emphasis*.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import pandas as pd

from analysis.findings import Findings, opening_paragraph, power_sentence
from analysis.stats import SIZE_TOLERANCE
from analysis.verdict import BETTER, NOT_COMPARED, UNSTABLE, WORSE, Comparison

MAX_ERROR_CHARS = 400  # keep the table readable; results.csv holds the full error

# Figures of a report, in the order they are shown: (file name, caption).
FIGURES = [
    ("differences.png", "each option minus its axis's baseline: mean difference with its 95 % CI "
                        "(black) and the per-seed differences (dots); left of 0 favours the option"),
    ("loss_curves.png", "validation loss (top) and training loss (bottom) against steps and "
                        "tokens, per option; grey dashes: the unigram baseline"),
    ("final_loss.png", "final metric per option: every run as a dot, mean with 95 % CI"),
    ("throughput.png", "training throughput (tokens/s) per option, and final metric against it; "
                       "hollow: measured while other processes took the CPU (unreliable)"),
    ("scaling.png", "scale ladder: loss against compute on log axes (dots: runs; bars: each rung's seed range; "
                    "lines: separate fits, dashed beyond the largest rung; grey: not used for a verdict), and each "
                    "variant's compute multiplier against the baseline"),
    ("tuning.png", "per variant: the metric on the tuning seeds against the tuned value; star: the "
                   "value chosen for the verdict's runs"),
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
    text = "" if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA else str(x)
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


def _speed(r: pd.Series) -> str:
    text = _num(r["tokens_per_s"], ",.0f")
    return text + " †" if r.get("tokens_per_s_reliable") is False else text


OPTION_NUMERIC = [False, True, True, True, True, True, True, True, True, True, False]


def option_rows(t: pd.DataFrame, label: str, keys: list[str],
                metric: str) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, notes) of an `aggregate` table. ⚠ marks size/compute more than 2 % above the
    smallest option; † tokens/s measured under contention."""
    flag: Callable[[pd.Series, str], str] = lambda r, c: " ⚠" if r.get(f"flag_{c}") else ""
    rows = []
    for _, r in t.iterrows():
        other = _cell(r["other"])
        if r.get("n_did_not_learn"):
            other = ", ".join(p for p in (f"{int(r['n_did_not_learn'])} did not learn", other) if p)
        rows.append([
            f"`{option_label(r['option'], keys)}`",
            f"{r['n']}/{r['n_runs']}",
            _num(r["mean"]),
            f"{_num(r['ci_low'])} to {_num(r['ci_high'])}" if r["n"] >= 2 else "–",
            _num(r["std"]),
            _num(r["seed_std"]),
            _num(r["params_total"], ",.0f") + flag(r, "params_total"),
            _num(r["params_non_embedding"], ",.0f"),
            _num(r["flops_per_token"], ".4g") + flag(r, "flops_per_token"),
            _speed(r),
            other or "–",
        ])
    header = [label, "n used/runs", f"{metric} mean", "95 % CI of mean", "std", "seed std",
              "params_total", "params_non_embedding", "flops_per_token", "tokens/s", "not in means"]
    notes = []
    if t[["flag_params_total", "flag_flops_per_token"]].to_numpy().any():
        notes.append(f"⚠ params_total or flops_per_token more than {SIZE_TOLERANCE:.0%} above the "
                     f"smallest option: part of a difference may come from model size or compute, "
                     f"not from the design choice.")
    if (t["tokens_per_s_reliable"] == False).any():  # noqa: E712 (None means not recorded)
        notes.append("† tokens/s measured while other processes took more than 10 % of the CPU (or "
                     "the hypervisor stole it): the machine's load, not the option's cost. "
                     "`python -m analysis.report DIR --speed` times every option interleaved in one "
                     "process.")
    return header, rows, notes


def ranked_frame(t: pd.DataFrame, label: str, keys: list[str] | None = None,
                 metric: str = "final_val_loss") -> pd.DataFrame:
    """An `aggregate` table for notebooks: numbers stay numbers (mean and CI bounds in their own
    columns), one row per option in the report's order."""
    keys = keys if keys is not None else [label]
    columns = ["n", "n_runs", "mean", "ci_low", "ci_high", "std", "seed_std", "min", "max",
               "n_diverged", "n_did_not_learn", "params_total", "params_non_embedding",
               "flops_per_token", "tokens_per_s", "tokens_per_s_reliable"]
    frame = t[[c for c in columns if c in t]].copy()
    frame.insert(0, label, [option_label(o, keys) for o in t["option"]])
    return frame.rename(columns={"mean": f"{metric} mean"}).reset_index(drop=True)


def _signed(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:+.4f}"


def comparison_rows(comparisons: list[Comparison], looks: bool = False) -> tuple[list[str], list[list[str]], list[bool]]:
    """The comparisons table: header, rows and which columns are numeric; `looks` adds the look each
    verdict was reached at (a sequential verdict, compare.looks)."""
    rows = []
    for c in comparisons:
        verdict = f"**{c.verdict}**" if c.verdict in (BETTER, WORSE, UNSTABLE) else c.verdict
        if c.did_not_learn:
            verdict = "**did not learn**"
        rows.append([f"`{c.option}`", f"`{c.baseline}`", f"{c.n}/{c.n_baseline}",
                     c.test or "–", _signed(c.diff_mean),
                     f"{_signed(c.ci_low)} to {_signed(c.ci_high)}" if not math.isnan(c.ci_low) else "–",
                     _num(c.p_value, ".3g"), _num(c.p_adjusted, ".3g"), _num(c.resolvable),
                     *([str(c.look)] if looks else []), verdict, _cell(c.note) or "–"])
    header = ["option", "baseline", "n option/baseline", "test", "difference", "95 % CI", "p",
              "p (Holm)", "resolvable (80 %)", *(["look"] if looks else []), "verdict", "note"]
    numeric = [False, False, True, False, True, True, True, True, True, *([True] if looks else []), False, False]
    return header, rows, numeric


def not_in_means_blocks(df: pd.DataFrame, metric: str, axes: list[str], tuned: bool = False) -> list[Block]:
    curve = {"final_val_loss": "val_loss"}.get(metric, metric)
    learned = ~df["did_not_learn"].astype(bool) if "did_not_learn" in df else True
    bad = df[~((df["status"] == "completed") & df[metric].notna() & learned)]
    if bad.empty:
        return [Para("All runs completed, learned, and enter the means.")]
    rows = []
    for _, r in bad.iterrows():
        error, status = r["error"], r["status"]
        if status == "completed" and r.get("did_not_learn"):
            status = "did not learn"
            hint = ("even at its tuned learning rate: give it more steps (train.max_steps) or widen the "
                    "tuning grid" if tuned else
                    "its learning rate or training budget does not suit it (tune it per variant: "
                    "compare.tuned=[optim.lr] with hydra/sweeper=ablate_tuned)")
            error = (f"final {_num(r['final_val_loss'])} vs unigram baseline "
                     f"{_num(r['unigram_val_loss'])}: within 2 %; {hint}")
        elif status == "completed":
            error = f"no {metric} recorded"
        elif status == "running" and not _cell(error):
            error = ("no summary.json: still running, or killed before it finished "
                     f"(last step {_num(r['steps'], '.0f')}, last {curve} {_num(r[metric])})")
        rows.append([f"`{r['run']}`", status, *[_cell(r[a]) for a in axes],
                     _num(r["seed"], ".0f"), _cell(error) or "–"])
    header = ["run", "status", *axes, "seed", "error / reason"]
    numeric = [False, False, *[False] * len(axes), True, False]
    return [
        Para("These runs are excluded from every mean above. A diverged run still counts in its "
             "comparison's test where the other side trained in that seed (ranked worst: the verdict "
             "`unstable`, or `better`/`worse` when the ranks decide it); where both sides diverged it "
             "counts in neither. An option with a run that did not learn is *not compared*: its verdict "
             "would measure the learning rate or budget, not the design."),
        Table(header, rows, numeric),
    ]


def problem_blocks(problems: list[Any]) -> list[Block]:
    """The result files the report could not take as written: which, what is wrong, what it did instead."""
    if not problems:
        return []
    rows = [[f"`{p.path}`", _cell(p.why), _cell(p.action)] for p in problems]
    return [Heading(2, "Damaged or foreign result files"),
            Para("The report read these files defensively: nothing in the sweep directory was changed; restore a "
                 "damaged file from a copy, or rerun its job, and rebuild the report."),
            Table(["file", "problem", "what the report did"], rows, [False, False, False])]


def _option_blocks(t: pd.DataFrame, label: str, keys: list[str], metric: str) -> list[Block]:
    header, rows, notes = option_rows(t, label, keys, metric)
    return [Table(header, rows, OPTION_NUMERIC)] + [Para(n) for n in notes]


def document(f: Findings, figures: list[str] | None = None) -> list[Block]:
    """The whole report as blocks. `figures`: PNG names to show (default: all of FIGURES)."""
    df = f.df
    counts = df["status"].value_counts()
    facts = [
        f"Sweep: `{f.sweep}`",
        f"Runs: {len(df)} ({', '.join(f'{n} {s}' for s, n in counts.items())})",
        "Swept axes: " + (", ".join(f"`{a}`" for a in f.axes) or "none (one configuration)"),
    ]
    if f.tuning is not None:
        facts.append(f"Tuned per variant: {', '.join(f'`{k}`' for k in f.tuning.keys)} "
                     f"({f.tuning.n_runs} tuning runs on seeds {f.tuning.seeds_text}, not used in the tests)")
    if f.jobs_note:
        facts.append(f.jobs_note)
    problems = df.attrs.get("problems") or []
    if problems:
        n_files = len({p.path for p in problems})
        facts.append(f"**{n_files} result file{'s' if n_files > 1 else ''} not read as written** (damaged, or another "
                     f"version's): see *Damaged or foreign result files*")
    blocks: list[Block] = [Heading(1, "Sweep report"), Para(opening_paragraph(f)), Bullets(facts),
                           Heading(2, "How to read the verdict"), Para(f.metric_reason),
                           Para(_rule_text(f))]
    for axis, t in f.tables.items():
        info = f.info.get(axis)
        title = f"Axis `{axis}`" + (f" (baseline `{info['baseline']}`: {info['source']})" if info else "")
        blocks.append(Heading(2, title))
        mine = [c for c in f.comparisons if c.axis == axis]
        if mine:
            header, rows, numeric = comparison_rows(mine, looks=len(f.settings.get("looks") or []) >= 2)
            blocks.append(Table(header, rows, numeric))
            blocks += [Para(f"**`{c.option}` {UNSTABLE}:** {c.advice}") for c in mine if c.advice]
        if info:
            blocks.append(Para(power_sentence(info, f.metric)))
        blocks += _option_blocks(t, axis, [axis], f.metric)
    keys = f.axes + ([f.ladder.rung_key] if f.ladder is not None else [])  # a ladder's rung holds cells apart too
    if f.configs is not None:
        blocks += [Heading(2, "Per configuration (all swept axes, over seeds)"),
                   *_option_blocks(f.configs, "configuration", keys, f.metric)]
    if f.ladder is not None:
        from analysis.ladder_report import ladder_blocks

        blocks += [Heading(2, "Scale ladder"), *ladder_blocks(f.ladder, Para, Table)]
    if f.tuning is not None:
        blocks += [Heading(2, "Tuning"), *f.tuning.blocks(Para, Table)]
    blocks += [Heading(2, "Runs not in the means"),
               *not_in_means_blocks(f.runs, f.metric, keys, tuned=bool(f.settings.get("tuned"))),
               *problem_blocks(problems), Heading(2, "Figures")]
    shown = figures if figures is not None else []
    captions = dict(FIGURES)
    blocks += [Figure(name, captions.get(name, name)) for name in shown]
    return blocks


def _rule_text(f: Findings) -> str:
    alpha = f.settings.get("alpha", 0.05)
    return (f"Each option is compared with its axis's baseline on `{f.metric}` (difference = option "
            f"minus baseline; lower is better, so a negative difference favours the option). When every "
            f"run of the option has a baseline run with the same seed (and the same values of the other "
            f"axes), the test is a paired t-test on the per-seed differences: the same seed means the "
            f"same batches in the same order and the same validation windows, so the pairing removes "
            f"most seed noise. Otherwise Welch's t-test. p-values are corrected with Holm's method "
            f"across all {sum(not math.isnan(c.p_value) for c in f.comparisons)} tests of this report; "
            f"`better`/`worse` means the corrected p is below α = {alpha}; otherwise "
            f"`no detectable difference`, which is not evidence of equality (see the smallest "
            f"resolvable difference under each table). The 95 % CIs are per comparison, uncorrected. "
            f"Where one side diverged in a seed and the other did not, the test is by ranks instead "
            f"(Wilcoxon's signed-rank test over the seeds, Mann-Whitney's rank-sum test when they do not "
            f"pair), each diverged run ranked worst, exact by permutation; it enters Holm's correction "
            f"like the others, and when it is not significant the verdict is `{UNSTABLE}`, with the "
            f"counts and the difference over the seeds where both trained. Only completed runs that "
            f"learned enter the differences; `{NOT_COMPARED}` says why an option has none."
            + _looks_text(f))


def _looks_text(f: Findings) -> str:
    """How a sequential verdict (compare.looks) was tested, for the rule paragraph; '' for a fixed plan."""
    from analysis.sequential import look_levels

    looks = [int(n) for n in f.settings.get("looks") or []]
    if len(looks) < 2:
        return ""
    alpha, spending = float(f.settings.get("alpha", 0.05)), str(f.settings.get("spending", "obrien_fleming"))
    levels = ", ".join(f"{n} seeds {level:.3g}" for n, level in zip(looks, look_levels(looks, alpha, spending)))
    return (f" The verdict's seeds came in looks (`compare.looks={looks}`): every variant trained the first "
            f"{looks[0]} seeds, and after each look only the variants of comparisons still open (not yet "
            f"`better`/`worse`, and with conditional power at least `compare.futility`="
            f"{float(f.settings.get('futility', 0.05)):g} under the trend so far) trained the next look's. Each look "
            f"is tested at its share of α ({spending.replace('_', '-')} spending: {levels}) with Holm over the "
            f"comparisons not yet settled, so the error rate holds over every look and comparison together; "
            f"`p (Holm)` is scaled to the whole α, `look` is the look a verdict was reached at (or its last "
            f"look with seeds), and `resolvable (80 %)` is the smallest true difference its seeds find with 80 % "
            f"power at its level.")


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
