"""Collect what runs wrote to disk into pandas tables.

Reads only files (`summary.json`, `metrics.jsonl`, `.hydra/*.yaml`), never imports torch or the
training code, so a report can be rebuilt from a sweep directory copied off a cluster.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from ablate.rundir.summary import FIELDS as RUN_SUMMARY_FIELDS
from ablate.rundir.summary import NUMERIC_FIELDS
from analysis.evidence import UNREADABLE, Problem, metric_rows, read_json, read_yaml, summary_record
from analysis.evidence import sweep_file_problems

# Fields of summary.json, in the order they go into results.csv.
# (from the one record both sides share, ablate.rundir.summary.RunSummary: torch-free)
SUMMARY_FIELDS = [name for name in RUN_SUMMARY_FIELDS if name not in ("choices", "overrides", "sample")]
# Columns that are never override keys (used to recognise override columns in a table read
# back from results.csv, where DataFrame.attrs are lost).
KNOWN_COLUMNS = {"run", "overrides", "choices", "stage", "look", "did_not_learn", "tokens_per_s_reliable", "lr_at_rung",
                 *SUMMARY_FIELDS}
REPORT_DIRNAME = "report"
RUNNING = "running"
# A completed run whose final validation loss is within this fraction of the unigram baseline (the
# loss of predicting token frequencies alone) learned nothing beyond frequencies.
DID_NOT_LEARN_MARGIN = 0.02
# Fields of summary.json that stay out of results.csv (they live in their own files).
NOT_IN_TABLE = {"sample"}  # samples.txt
# Other processes' share of the machine's CPU time (or steal time) above which a run's tokens/s
# measured the machine's load rather than the option's cost.
CONTENTION_LIMIT = 0.10
# Settings every run records in results.csv (and the report's opening names when they are held fixed).
SETTING_KEYS = ["model.d_model", "model.n_layers", "model.n_heads", "model.context_length", "optim.lr",
                "train.batch_size", "train.max_steps", "schedule.warmup_steps"]
DEFAULT_STAGE = "verdict"  # compare.stage: runs of the verdict; `tune` runs only choose tuned values
# Columns the report computes from a run's files: a summary.json field of the same name (another version's,
# or a user's post-processing) is ignored, so the table always says what these files show.
DERIVED_COLUMNS = {"run", "did_not_learn", "tokens_per_s_reliable", "stage", "look", "lr_at_rung", *SETTING_KEYS}


def _is_run_dir(path: Path) -> bool:
    return (path / ".hydra" / "config.yaml").is_file() or (path / "summary.json").is_file()


def _natural_key(path: Path) -> list[Any]:
    # Job dirs are 0, 1, ..., 10: sort 2 before 10.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def find_runs(sweep_dir: str | os.PathLike[str]) -> list[Path]:
    """Run directories under `sweep_dir` (or `sweep_dir` itself if it is a single run).

    Searches recursively because `hydra.sweep.subdir` may nest job dirs; does not descend into
    a run dir (its own outputs are not runs), `.hydra` or the generated `report/` folder.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        return []
    if _is_run_dir(root):
        return [root]
    runs: list[Path] = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if here != root and _is_run_dir(here):
            runs.append(here)
            dirnames.clear()
            continue
        dirnames[:] = [d for d in dirnames if d not in (REPORT_DIRNAME, ".hydra")]
    return sorted(runs, key=_natural_key)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl; lines that fail to parse (a run killed mid-write) and values of the wrong
    type are left out (load_results names them)."""
    return metric_rows(run_dir / "metrics.jsonl", finished=False)[0]


def select(config: Any, key: str) -> Any:
    """`config["a"]["b"]` for key `a.b` (or `a/b`) in a plain nested mapping; None where absent."""
    node = config
    for part in key.replace("/", ".").split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def parse_override(text: str) -> tuple[str, str] | None:
    """`+experiment=llama` -> ("experiment", "llama"); deletions (`~key`) carry no value."""
    if "=" not in text or text.startswith("~"):
        return None
    key, value = text.split("=", 1)
    return key.lstrip("+").strip(), value.strip()


def _config_value(config: Any, key: str) -> str | None:
    """Value of an override key in the resolved config; a group key yields its `name`."""
    value = select(config, key)
    if isinstance(value, dict):
        value = value.get("name")
    return None if value is None else str(value)


def _choices_from_config(config: Any) -> dict[str, str]:
    if not isinstance(config, dict):
        return {}
    return {str(group): str(node["name"]) for group, node in config.items()  # (`ladder: {name: null}`: none)
            if isinstance(node, dict) and node.get("name") is not None}


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _hydra_file(run_dir: Path, name: str, kind: type, wrong: str, action: str, here, problems: list[Problem]) -> Any:
    """The data of .hydra/NAME when it is a `kind`, else None with its problem named."""
    data, why = read_yaml(run_dir / ".hydra" / name)
    if data is not None and not isinstance(data, kind):
        data, why = None, wrong
    if why:
        problems.append(Problem(here(f".hydra/{name}"), why, action))
    return data


def _read_run_files(run_dir: Path, here) -> tuple[dict[str, Any] | None, str | None, Any, list[str], list[Problem]]:
    """(summary, why it is unreadable, config, overrides, problems) of a run; `here(name)` names its files."""
    problems = []
    raw, why = read_json(run_dir / "summary.json")
    summary = None
    if raw is not None:
        summary, why = summary_record(raw)
    if why:
        problems.append(Problem(here("summary.json"), why, f"its run is shown as `{UNREADABLE}`, in no mean or test"))
    config = _hydra_file(run_dir, "config.yaml", dict, "is not a mapping of config groups and keys",
                         "the run's settings are taken from its summary.json alone", here, problems)
    loaded = _hydra_file(run_dir, "overrides.yaml", list, "is not a list of overrides",
                         "the run's overrides are taken from its summary.json, or left empty", here, problems)
    overrides: Any = summary.get("overrides") if summary else None
    if not overrides:
        overrides = loaded or []
    return summary, why, config, [str(o) for o in overrides], problems


def _load_run(sweep: Path, run_dir: Path) -> tuple[dict[str, Any], list[str], list[Problem]]:
    rel = run_dir.relative_to(sweep).as_posix()
    here = lambda name: name if rel == "." else f"{rel}/{name}"  # noqa: E731 (a file's path in the sweep)
    summary, unreadable, config, overrides, problems = _read_run_files(run_dir, here)
    row: dict[str, Any] = {"run": rel}
    for field in SUMMARY_FIELDS:
        row[field] = summary.get(field) if summary else None
    row["overrides"] = overrides

    swept = [parsed for parsed in map(parse_override, overrides)
             if parsed and parsed[0] not in KNOWN_COLUMNS]  # never clobber a summary field
    keys = [key for key, _ in swept]
    extra = {k: v for k, v in (summary or {}).items()  # fields added to summary.json later
             if k not in SUMMARY_FIELDS and k not in ("choices", "overrides") and k not in NOT_IN_TABLE}
    derived = [k for k in extra if k in DERIVED_COLUMNS or k in keys or k.startswith(("choice.", "_"))]
    if derived:
        problems.append(Problem(here("summary.json"), "carries " + ", ".join(f"`{k}`" for k in derived) +
                                ", which the report derives itself (another version of ablate, or post-processing)",
                                "recomputed from the run's files; the file's values are ignored"))
    unknown = [k for k in extra if k not in derived]
    if unknown:
        problems.append(Problem(here("summary.json"), "carries fields this version of ablate does not write: " +
                                ", ".join(f"`{k}`" for k in unknown) + " (a newer version, or added by hand)",
                                "kept as columns of results.csv; nothing else reads them"))
    row.update({k: extra[k] for k in unknown})

    choices = _choices_from_config(config)
    if summary and isinstance(summary.get("choices"), dict):
        choices.update({str(k): str(v) for k, v in summary["choices"].items() if v is not None})  # null: no choice
    for group, option in choices.items():
        row[f"choice.{group}"] = option
    for key, value in swept:
        row[key] = value

    for key in SETTING_KEYS:
        if key not in row:
            row[key] = _config_value(config, key)
    if row["seed"] is None:
        row["seed"] = _config_value(config, "train.seed")
    if row["vocab_size"] is None:
        row["vocab_size"] = _config_value(config, "tokenizer.vocab_size")
    metrics, metrics_why = metric_rows(run_dir / "metrics.jsonl", finished=summary is not None or bool(unreadable))
    if metrics_why:
        problems.append(Problem(here("metrics.jsonl"), metrics_why, "the lines and values named are left out"))
    if unreadable:  # it ended (the file exists) but says nothing usable: never mistaken for a live job
        row["status"] = UNREADABLE
        row["error"] = (f"summary.json {unreadable}: a damaged or foreign file, not a running job "
                        "(restore it from a copy, or rerun the job)")
    elif summary is None:
        row["status"] = RUNNING
        _fill_from_metrics(row, metrics)
    if select(config, "ladder.rung") is not None:  # a ladder's rung (ablate/config/rungs.py) set the rate it trained at
        row["lr_at_rung"] = select(config, "optim.lr")
    row["stage"] = str(select(config, "compare.stage") or DEFAULT_STAGE)
    look = select(config, "compare.look")  # set by the tuning sweeper when the verdict's seeds come in looks
    row["look"] = int(look) if isinstance(look, int) and not isinstance(look, bool) and look >= 1 else None
    row["_compare"] = select(config, "compare")
    row["_config"] = config  # dropped by load_results; used to fill keys a run did not override
    return row, keys, problems


def _fill_from_metrics(row: dict[str, Any], metrics: list[dict[str, Any]]) -> None:
    """Progress so far of a run without summary.json (still running or killed hard)."""
    val = [m["val_loss"] for m in metrics if _is_num(m.get("val_loss"))]
    bpb = [m["val_bpb"] for m in metrics if _is_num(m.get("val_bpb"))]
    if val:
        row["final_val_loss"], row["best_val_loss"] = val[-1], min(val)
    if bpb:
        row["val_bpb"] = bpb[-1]
    if metrics:
        last = metrics[-1]
        row["steps"] = last.get("step")
        row["tokens_seen"] = last.get("tokens")
        row["wall_time_s"] = last.get("elapsed_s")
    speeds = [m["tokens_per_s"] for m in metrics if _is_num(m.get("tokens_per_s"))]
    if speeds:  # median of the logged intervals: robust to a slow first (warm-up) interval
        speeds.sort()
        mid = len(speeds) // 2
        row["tokens_per_s"] = speeds[mid] if len(speeds) % 2 else (speeds[mid - 1] + speeds[mid]) / 2


def load_results(sweep_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per run: summary fields, `choice.<group>`, one string column per override key."""
    sweep = Path(sweep_dir)
    rows, override_keys = [], []
    runs = find_runs(sweep)
    problems = sweep_file_problems(sweep) if runs and runs[0] != sweep else []
    for run_dir in runs:
        row, keys, found = _load_run(sweep, run_dir)
        rows.append(row)
        problems += found
        override_keys += [k for k in keys if k not in override_keys]
    # A run that did not override a key used the default: take it from its config, so that
    # e.g. `norm=ln` runs mixed with default runs compare `ln` against `rms`, not against NaN.
    for row in rows:
        for key in override_keys:
            if key not in row:
                row[key] = row.get(f"choice.{key}") or _config_value(row["_config"], key)
        del row["_config"]
    settings = compare_settings([row.pop("_compare") for row in rows])
    choice_cols = sorted({c for r in rows for c in r if c.startswith("choice.")})
    columns = ["run", "status", "error", *override_keys, *SUMMARY_FIELDS[2:], *choice_cols,
               "overrides"]
    columns += [c for c in dict.fromkeys(c for r in rows for c in r) if c not in columns]
    df = pd.DataFrame(rows, columns=columns)
    for col in NUMERIC_FIELDS:  # (text fields such as dtype, device and git_commit stay text)
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["status"] = df["status"].fillna("unknown").astype(str)
    df.insert(2, "did_not_learn", did_not_learn(df))
    df["tokens_per_s_reliable"] = tokens_per_s_reliable(df)
    df.attrs["override_keys"] = override_keys
    df.attrs["compare"] = settings
    df.attrs["problems"] = problems  # result files not read as written (analysis.evidence.Problem)
    return df


def did_not_learn(df: pd.DataFrame) -> pd.Series:
    """Completed runs whose final validation loss is within DID_NOT_LEARN_MARGIN of (or above) the
    unigram baseline of the same split."""
    final = pd.to_numeric(df["final_val_loss"], errors="coerce")
    unigram = pd.to_numeric(df["unigram_val_loss"], errors="coerce")
    return (df["status"] == "completed") & (final >= (1 - DID_NOT_LEARN_MARGIN) * unigram)


def tokens_per_s_reliable(df: pd.DataFrame) -> pd.Series:
    """False where other processes took more than CONTENTION_LIMIT of the CPU (or the hypervisor
    stole it) during the run; NaN where the run did not record it."""
    shares = [pd.to_numeric(df[c], errors="coerce") for c in ("others_cpu_share", "steal_share")
              if c in df]
    if not shares:
        return pd.Series(pd.NA, index=df.index, dtype="boolean")
    load = sum(s.fillna(0) for s in shares)
    known = pd.concat(shares, axis=1).notna().any(axis=1)
    return (load <= CONTENTION_LIMIT).astype("boolean").where(known, pd.NA)


def compare_settings(nodes: list[Any]) -> dict[str, Any]:
    """`compare.baseline`, `compare.tuned`, `compare.alpha` and the looks (`compare.looks`, `spending`,
    `futility`) as the runs recorded them (the most common value if runs disagree; defaults where no run
    has the node)."""
    def most_common(values: list[Any], default: Any) -> Any:
        values = [v for v in values if v is not None]
        if not values:
            return default
        texts = [repr(v) for v in values]
        return values[max(range(len(values)), key=lambda i: texts.count(texts[i]))]

    nodes = [n for n in nodes if isinstance(n, dict)]
    baseline = most_common([n.get("baseline") for n in nodes], {}) or {}
    return {"baseline": {str(k): str(v) for k, v in dict(baseline).items()},
            "tuned": [str(k) for k in (most_common([n.get("tuned") for n in nodes], []) or [])],
            "alpha": float(most_common([n.get("alpha") for n in nodes], 0.05)),
            "looks": [int(x) for x in (most_common([n.get("looks") for n in nodes], []) or [])
                      if isinstance(x, int) and not isinstance(x, bool)],
            "spending": str(most_common([n.get("spending") for n in nodes], "obrien_fleming")),
            "futility": float(most_common([n.get("futility") for n in nodes], 0.05))}


def load_curves(sweep_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """All metrics.jsonl rows of all runs, long format, with a `run` column."""
    sweep = Path(sweep_dir)
    frames = []
    for run_dir in find_runs(sweep):
        rows = read_metrics(run_dir)
        if rows:
            frame = pd.DataFrame(rows)
            frame.insert(0, "run", run_dir.relative_to(sweep).as_posix())
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run", "step", "elapsed_s", "val_loss", "val_bpb"])
    return pd.concat(frames, ignore_index=True)


def _is_seed_key(key: str) -> bool:
    return key.split(".")[-1] == "seed"


def _is_hydra_key(key: str) -> bool:
    return key.startswith(("hydra.", "hydra/", "compare.")) or key in ("hydra", "compare")


def swept_axes(df: pd.DataFrame, tuned: list[str] | None = None) -> list[str]:
    """Override keys whose values differ across runs; seeds, hydra's own keys, the `compare` settings
    and the keys tuned per variant (`compare.tuned`; default: as the runs recorded it) excluded."""
    keys = df.attrs.get("override_keys")
    if keys is None:  # e.g. a table read back from results.csv
        keys = [c for c in df.columns if c not in KNOWN_COLUMNS and not c.startswith("choice.")]
    tuned = set(df.attrs.get("compare", {}).get("tuned", []) if tuned is None else tuned)
    return [
        k for k in keys
        if k in df.columns and not _is_seed_key(k) and not _is_hydra_key(k) and k not in tuned
        and df[k].astype("string").nunique(dropna=False) > 1
    ]
