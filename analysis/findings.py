"""What a report says, gathered once (`Findings`), and the sentences that open it: the question,
the verdict per axis in the contract's words, and the settings every run shared."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.verdict import BETTER, NO_DIFFERENCE, NOT_COMPARED, UNSTABLE, WORSE, Comparison

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


@dataclass
class Findings:
    sweep: str
    df: pd.DataFrame                  # every run
    runs: pd.DataFrame                # the verdict's runs (tuning runs left out)
    axes: list[str]
    metric: str
    metric_reason: str
    tables: dict[str, pd.DataFrame]
    configs: pd.DataFrame | None
    comparisons: list[Comparison]
    info: dict[str, dict[str, Any]]   # per axis: baseline, its source, noise and power
    settings: dict[str, Any]          # compare.baseline / tuned / alpha
    jobs_note: str = ""
    tuning: Any = None                # analysis.tuning.Tuning when keys were tuned per variant
    ladder: Any = None                # analysis.ladder.Ladder when the runs climb a scale ladder
    extra: dict[str, Any] = field(default_factory=dict)


def sweep_question(df: pd.DataFrame) -> str | None:
    """The `# Question:` line of sweeps/NAME.yaml when the runs were launched with +sweep=NAME."""
    names = {o.split("=", 1)[1] for overrides in df["overrides"] for o in overrides
             if o.lstrip("+").startswith("sweep=")}
    if len(names) != 1:
        return None
    path = SWEEPS / f"{names.pop()}.yaml"
    try:
        found = re.search(r"^# Question: (.+)$", path.read_text(encoding="utf-8"), re.M)
    except OSError:
        return None
    return found.group(1).strip() if found else None


def _fmt(x: float) -> str:
    return f"{x:+.3f}"


def _instability_clause(c: Comparison) -> str:
    """`none` diverged in 1 of 3 seeds at its tuned rate 0.006 and was 0.430 nats worse in the others."""
    who, k, n = (c.option, c.diverged, c.n_outcomes) if c.diverged else (c.baseline, c.diverged_baseline,
                                                                          c.n_outcomes_baseline)
    subject = "" if c.diverged else f"the baseline `{who}` "
    text = f"{subject}diverged in {k} of {n} {c.unit}{c.diverged_where()}"
    text += (f" (the baseline `{c.baseline}` in {c.diverged_baseline} of {c.n_outcomes_baseline})" if c.diverged
             else f" (`{c.option}` in 0 of {c.n_outcomes})")
    if c.n_both and not math.isnan(c.diff_mean):
        unit = "nats" if c.metric == "final_val_loss" else "bits per byte"
        way = "worse" if c.diff_mean > 0 else "better"
        text += (f" and {'was' if c.diverged else f'`{c.option}` was'} {abs(c.diff_mean):.3f} {unit} {way} "
                 f"in the {'seeds' if c.seed_diffs else 'runs'} where both trained")
        if not math.isnan(c.ci_low):
            text += f" (95 % CI {_fmt(c.ci_low)} to {_fmt(c.ci_high)})"
    else:
        text += "; no run where both trained"
    return text


def axis_verdict(axis: str, baseline: str, comparisons: list[Comparison]) -> str:
    """One clause per axis, strongest finding first: detectable differences with their CI, options
    that diverged on one side only (`unstable`, with the counts and the difference where both trained),
    those not compared and why, then the options with no detectable difference. "Nothing detectable"
    only when every option was compared and none differed."""
    if not comparisons:
        return f"`{axis}`: only the baseline `{baseline}` has runs, nothing to compare"
    parts = []
    for c in (c for c in comparisons if c.verdict in (BETTER, WORSE)):
        if c.unstable:  # a rank verdict: the divergences themselves are the evidence
            parts.append(f"`{c.option}` **{c.verdict}** ({c.test} p {c.p_adjusted:.3g} after Holm: "
                         + _instability_clause(c) + ")")
        else:
            parts.append(f"`{c.option}` **{c.verdict}** ({_fmt(c.diff_mean)}, 95 % CI {_fmt(c.ci_low)} to "
                         f"{_fmt(c.ci_high)})")
    for c in (c for c in comparisons if c.verdict == UNSTABLE):
        parts.append(f"`{c.option}` **{UNSTABLE}**: " + _instability_clause(c))
    for c in (c for c in comparisons if c.verdict == NOT_COMPARED):
        why = c.reason or ("one seed" if c.n_seeds < 2 else "no spread")
        parts.append(f"`{c.option}`: {NOT_COMPARED} ({why})")
    same = [f"`{c.option}`" for c in comparisons if c.verdict == NO_DIFFERENCE]
    if same:
        parts.append(", ".join(same) + ": " + NO_DIFFERENCE)
    lead = "nothing detectable: " if all(c.verdict == NO_DIFFERENCE for c in comparisons) else ""
    return f"`{axis}` (baseline `{baseline}`): " + lead + "; ".join(parts)


def _values(series: pd.Series, fmt: str = "{}") -> str:
    vals = [v for v in dict.fromkeys(series.dropna().tolist())]
    if not vals:
        return "?"
    if len(vals) == 1:
        return fmt.format(vals[0])
    try:
        lo, hi = min(map(float, vals)), max(map(float, vals))
        return f"{fmt.format(lo)} to {fmt.format(hi)}"
    except (TypeError, ValueError):
        return ", ".join(map(str, vals)) + " (varies)"


def held_fixed(f: Findings) -> str:
    """The settings the verdict's runs shared (a range where they varied); unknown ones are left out."""
    runs = f.runs[f.runs["status"] != "running"] if (f.runs["status"] != "running").any() else f.runs

    def value(column: str, fmt: str = "{}", numeric: bool = True, of: pd.Series | None = None) -> str | None:
        if column not in runs:
            return None
        chosen = runs[column] if of is None or not of.any() else runs.loc[of, column]
        series = pd.to_numeric(chosen, errors="coerce") if numeric else chosen
        return _values(series, fmt) if series.notna().any() else None

    shape = [(value("model.d_model", "{:g}"), "d_model {}"), (value("model.n_layers", "{:g}"), "{} layers"),
             (value("model.n_heads", "{:g}"), "{} heads"), (value("model.context_length", "{:g}"), "context {}")]
    shape_text = ", ".join(fmt.format(v) for v, fmt in shape if v)
    model = value("choice.model", numeric=False)
    parts = []
    ladder = value("choice.ladder", numeric=False)
    if ladder:
        parts.append(f"ladder `{ladder}` (the model's size set by `ladder.rung`)")
    if model:
        parts.append(f"model `{model}`" + (f" ({shape_text})" if shape_text else ""))
    params, non_embedding = value("params_total", "{:,.0f}"), value("params_non_embedding", "{:,.0f}")
    if params:
        parts.append(f"{params} parameters" + (f" ({non_embedding} non-embedding)" if non_embedding else ""))
    # the planned length (a diverged or stopped run trained fewer steps: that is its outcome, not a setting)
    planned = "train.max_steps" if "train.max_steps" in runs else "steps"
    for column, fmt in ((planned, "{:,.0f} steps"), ("tokens_seen", "{:,.0f} training tokens per run")):
        text = value(column, "{:,.0f}", of=runs["status"] == "completed" if column == "tokens_seen" else None)
        if text:
            parts.append(fmt.replace("{:,.0f}", text))
    if "optim.lr" in (f.settings.get("tuned") or []):
        parts.append("learning rate tuned per variant (see *Tuning*)")
    elif value("optim.lr", "{:g}"):
        parts.append(f"learning rate {value('optim.lr', '{:g}')}")
    seeds = pd.to_numeric(runs["seed"], errors="coerce").dropna().unique() if "seed" in runs else []
    if len(seeds):
        parts.append("seeds " + ", ".join(str(int(s)) for s in sorted(seeds)))
    if value("dtype", numeric=False):
        parts.append(f"dtype {value('dtype', numeric=False)}")
    text = "**Held fixed:** " + ", ".join(parts) if parts else "**Held fixed:** (not recorded)"
    unigram = value("unigram_val_loss", "{:.3f}")
    if unigram:
        text += (f"; the unigram baseline (token frequencies alone) scores {unigram} nats, and a run "
                 f"within 2 % of it is marked *did not learn*")
    dtypes = runs["dtype"].dropna().unique() if "dtype" in runs else []
    if len(dtypes) > 1:  # a sweep's jobs share one dtype; runs of several sweeps or machines may not
        text += (f". **Precision differs between these runs** ({', '.join(sorted(map(str, dtypes)))}): a gap "
                 f"between variants may come from the dtype as much as from the choice; for a clean comparison "
                 f"run them all with one `train.dtype`")
    return text + "."


def opening_paragraph(f: Findings) -> str:
    question = sweep_question(f.df)
    if question is None:
        question = ("Does the choice of " + " or ".join(f"`{a}`" for a in f.axes) + f" change `{f.metric}`?"
                    if f.axes else f"How do these runs score on `{f.metric}`?")
    if f.comparisons or f.info:
        clauses = [axis_verdict(a, f.info[a]["baseline"], [c for c in f.comparisons if c.axis == a])
                   for a in f.axes if a in f.info]
        verdict = (f"**Verdict** (`{f.metric}`, option minus baseline, Holm-corrected at "
                   f"α = {f.settings.get('alpha', 0.05)}): " + "; ".join(clauses) + ".")
    else:
        verdict = "**Verdict:** no axis was swept, so there is nothing to compare; the runs are summarized below."
    scale = ""
    if f.ladder is not None:
        from analysis.ladder import opening_sentences

        scale = " " + opening_sentences(f.ladder)
    return f"**Question:** {question} {verdict}{scale} {held_fixed(f)}"


def power_sentence(info: dict[str, Any], metric: str) -> str:
    unit = "nats" if metric == "final_val_loss" else "bits per byte"
    n, det, more = info.get("n_seeds", 0), info.get("detectable", math.nan), info.get("more_seeds")
    if math.isnan(det):
        return (f"Smallest resolvable difference: unknown (needs at least 2 seeds per option with a "
                f"spread; this axis has {n}).")
    kind = "paired per-seed differences" if info.get("paired") else "single runs (unpaired)"
    level, more_level = info["level"], info.get("more_level", info["level"])
    later = (f"; {more} seeds, the plan's last look, would resolve {info['detectable_more']:.3f} there (level "
             f"{more_level:.3g})" if more_level != level else f"; {more} seeds would resolve {info['detectable_more']:.3f}")
    return (f"Differences smaller than {det:.3f} {unit} cannot be resolved with {n} seeds{later} (80 % power, "
            f"two-sided t-test at level {level:.3g} = α{' of this look' if more_level != level else ''} over the "
            f"report's tests, Holm's strictest step; noise sd {info['noise_sd']:.4f} of {kind}).")
