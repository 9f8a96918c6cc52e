"""Aggregate per-run results into per-option tables (mean, 95 % CI of the mean, spread, cost).

The verdict (each option against its axis's baseline) is `analysis.verdict`."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd
from scipy import stats

COMPLETED = "completed"
DIVERGED = "diverged"
# Options whose size/compute differ from the axis's smallest by more than this are flagged:
# a lower loss may then come from a bigger model rather than the design choice.
SIZE_TOLERANCE = 0.02
COST_COLUMNS = ["params_total", "params_non_embedding", "flops_per_token"]


def choose_metric(df: pd.DataFrame) -> tuple[str, str]:
    """(metric column, sentence explaining the choice). Lower is better for both metrics."""
    tokenizers = df["choice.tokenizer"].dropna().unique() if "choice.tokenizer" in df else []
    # Running runs only have the configured vocab size, which may differ from the trained one.
    finished = df[df["status"] != "running"]
    vocabs = finished["vocab_size"].dropna().unique() if "vocab_size" in df else []
    if len(tokenizers) > 1 or len(vocabs) > 1:
        what = ", ".join(map(str, tokenizers)) if len(tokenizers) > 1 else (
            "vocab sizes " + ", ".join(str(int(v)) for v in sorted(vocabs)))
        return "val_bpb", (
            f"Metric: `val_bpb` (validation bits per byte), because runs use different "
            f"tokenizers ({what}): loss per token is not comparable across tokenizers, "
            f"bits per byte is. Lower is better.")
    return "final_val_loss", (
        "Metric: `final_val_loss` (validation loss in nats per token at the end of training). "
        "Lower is better.")


def usable(df: pd.DataFrame, metric: str) -> pd.Series:
    """Runs that enter the means: completed, with a recorded metric, and learned something (a run
    that did not learn is listed, never averaged in as a plain loser)."""
    ok = (df["status"] == COMPLETED) & df[metric].notna()
    if "did_not_learn" in df:
        ok &= ~df["did_not_learn"].astype(bool)
    return ok


def mean_interval(values: pd.Series, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of a mean (NaN with fewer than 2 values)."""
    if len(values) < 2:
        return math.nan, math.nan
    sem = float(values.std(ddof=1)) / math.sqrt(len(values))
    if sem == 0:
        return float(values.mean()), float(values.mean())
    low, high = stats.t.interval(confidence, len(values) - 1, loc=float(values.mean()), scale=sem)
    return float(low), float(high)


def _pooled_seed_std(values: pd.Series, groups: list[pd.Series] | None) -> float:
    """Std over seeds: pooled within-configuration std, so that variation caused by the other
    swept axes is not mistaken for seed noise. NaN if no configuration has >= 2 seeds."""
    if not groups:
        return float(values.std(ddof=1)) if len(values) >= 2 else math.nan
    num = den = 0.0
    for _, g in values.groupby(groups, dropna=False):
        if len(g) >= 2:
            num += (len(g) - 1) * float(g.var(ddof=1))
            den += len(g) - 1
    return math.sqrt(num / den) if den else math.nan


def _status_note(statuses: pd.Series, metric_missing: int) -> str:
    counts = statuses[statuses != COMPLETED].value_counts()
    parts = [f"{n} {s}" for s, n in counts.items()]
    if metric_missing:
        parts.append(f"{metric_missing} without metric")
    return ", ".join(parts)


AGGREGATE_COLUMNS = ["option", "n", "n_runs", "n_diverged", "n_did_not_learn", "other", "mean", "ci_low", "ci_high",
                     "std", "seed_std", "min", "max", "tokens_per_s", "tokens_per_s_reliable", *COST_COLUMNS]


def aggregate(df: pd.DataFrame, by: list[str], metric: str, seed_groups: list[str]) -> pd.DataFrame:
    """One row per value of `by` (an axis, or all axes = a configuration), ranked best first.

    `seed_groups`: the other axes, whose values are held fixed when measuring seed spread.
    """
    ok = usable(df, metric)
    rows = []
    for key, g in df.groupby(by, dropna=False, sort=False):
        good = g[ok.loc[g.index]]
        vals = good[metric]
        row = {"option": key if len(by) > 1 else key[0] if isinstance(key, tuple) else key}
        ci_low, ci_high = mean_interval(vals)
        row.update(
            n=len(vals), n_runs=len(g),
            n_diverged=int((g["status"] == DIVERGED).sum()),
            n_did_not_learn=int(g["did_not_learn"].astype(bool).sum()) if "did_not_learn" in g else 0,
            other=_status_note(g["status"], int((g["status"] == COMPLETED).sum()) - len(vals)
                               - (int(g["did_not_learn"].astype(bool).sum()) if "did_not_learn" in g else 0)),
            mean=vals.mean() if len(vals) else math.nan, ci_low=ci_low, ci_high=ci_high,
            std=float(vals.std(ddof=1)) if len(vals) >= 2 else math.nan,
            seed_std=_pooled_seed_std(vals, [good[c].astype("string") for c in seed_groups]),
            min=vals.min() if len(vals) else math.nan,
            max=vals.max() if len(vals) else math.nan,
            tokens_per_s=good["tokens_per_s"].mean() if len(good) else math.nan,
            tokens_per_s_reliable=_all_reliable(good),
        )
        # Size and compute are properties of the config, so any run that reports them counts.
        for col in COST_COLUMNS:
            row[col] = g[col].mean() if col in g else math.nan
        rows.append(row)
    table = pd.DataFrame(rows, columns=None if rows else AGGREGATE_COLUMNS)  # none: a sweep of tuning runs alone
    # Diverged runs count as losses, not as missing values: an option that diverged at all
    # ranks below every option that did not; options with no completed run come last.
    # Options that did not learn or diverged come after those that trained, never interleaved with
    # them by a mean over whatever runs survived.
    table["_key1"] = table["n"] == 0
    table["_key2"] = (table["n_diverged"] > 0) | (table["n_did_not_learn"] > 0)
    table = table.sort_values(["_key1", "_key2", "mean"], na_position="last", kind="stable")
    table = table.drop(columns=["_key1", "_key2"]).reset_index(drop=True)
    for col in ("params_total", "flops_per_token"):
        smallest = table[col].min()
        table[f"flag_{col}"] = (table[col] - smallest) / smallest > SIZE_TOLERANCE if smallest > 0 \
            else False
    return table


def _all_reliable(runs: pd.DataFrame) -> Any:
    """True when every run's tokens/s was measured without contention, False when one was not,
    None when the runs did not record it."""
    if "tokens_per_s_reliable" not in runs or runs["tokens_per_s_reliable"].isna().all():
        return None
    return bool(runs["tokens_per_s_reliable"].fillna(False).all())


def axis_table(df: pd.DataFrame, axis: str, axes: list[str], metric: str) -> pd.DataFrame:
    return aggregate(df, [axis], metric, [a for a in axes if a != axis])


def config_table(df: pd.DataFrame, axes: list[str], metric: str) -> pd.DataFrame:
    return aggregate(df, axes, metric, [])


def ranked_tables(df: pd.DataFrame, axes: list[str], metric: str) -> dict[str, pd.DataFrame]:
    """The report's ranked tables: one per swept axis; with no swept axis (one run, or a
    seed-only sweep) a single table `configuration` that still aggregates the seeds."""
    if axes:
        return {a: axis_table(df, a, axes, metric) for a in axes}
    df_all = df.assign(configuration="all runs")
    return {"configuration": axis_table(df_all, "configuration", [], metric)}
