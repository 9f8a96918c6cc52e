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
import yaml

from ablate.summary import FIELDS as RUN_SUMMARY_FIELDS
from ablate.summary import NUMERIC_FIELDS

# libyaml's loader when present: a report of hundreds of runs parses their configs ~10x faster.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Fields of summary.json, in the order they go into results.csv.
# (from the one record both sides share, ablate.summary.RunSummary: torch-free)
SUMMARY_FIELDS = [name for name in RUN_SUMMARY_FIELDS if name not in ("choices", "overrides", "sample")]
# Columns that are never override keys (used to recognise override columns in a table read
# back from results.csv, where DataFrame.attrs are lost).
KNOWN_COLUMNS = {"run", "overrides", "choices", "stage", "did_not_learn", "tokens_per_s_reliable", "lr_at_rung",
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
    """Rows of metrics.jsonl; skips lines that fail to parse (a run killed mid-write)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # absent or half-written: treat the run as not finished
    return data if isinstance(data, dict) else None


def _read_yaml(path: Path) -> Any:
    """Plain Python data of a YAML file (.hydra/*.yaml as OmegaConf wrote them); None if unreadable."""
    try:
        with path.open(encoding="utf-8") as f:
            return yaml.load(f, Loader=_YAML_LOADER)
    except Exception:  # missing or malformed YAML must not stop the whole report
        return None


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


def _load_run(sweep: Path, run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    summary = _read_json(run_dir / "summary.json")
    config = _read_yaml(run_dir / ".hydra" / "config.yaml")
    overrides: Any = summary.get("overrides") if summary else None
    if not isinstance(overrides, list) or not overrides:
        loaded = _read_yaml(run_dir / ".hydra" / "overrides.yaml")
        overrides = list(loaded) if isinstance(loaded, list) else []
    overrides = [str(o) for o in overrides]

    rel = run_dir.relative_to(sweep).as_posix()
    row: dict[str, Any] = {"run": rel}
    for field in SUMMARY_FIELDS:
        row[field] = summary.get(field) if summary else None
    row["overrides"] = overrides
    for field, value in (summary or {}).items():  # fields added to summary.json later
        if field not in row and field != "choices" and field not in NOT_IN_TABLE:
            row[field] = value

    choices = _choices_from_config(config)
    if summary and isinstance(summary.get("choices"), dict):
        choices.update({str(k): str(v) for k, v in summary["choices"].items()})
    for group, option in choices.items():
        row[f"choice.{group}"] = option

    keys = []
    for text in overrides:
        parsed = parse_override(text)
        if parsed and parsed[0] not in KNOWN_COLUMNS:  # never clobber a summary field
            keys.append(parsed[0])
            row[parsed[0]] = parsed[1]

    for key in SETTING_KEYS:
        if key not in row:
            row[key] = _config_value(config, key)
    if row["seed"] is None:
        row["seed"] = _config_value(config, "train.seed")
    if row["vocab_size"] is None:
        row["vocab_size"] = _config_value(config, "tokenizer.vocab_size")
    if summary is None:
        row["status"] = RUNNING
        _fill_from_metrics(row, read_metrics(run_dir))
    if select(config, "ladder.rung") is not None:  # a ladder's rung (ablate/ladder.py) set the rate it trained at
        row["lr_at_rung"] = select(config, "optim.lr")
    row["stage"] = str(select(config, "compare.stage") or DEFAULT_STAGE)
    row["_compare"] = select(config, "compare")
    row["_config"] = config  # dropped by load_results; used to fill keys a run did not override
    return row, keys


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
    for run_dir in find_runs(sweep):
        row, keys = _load_run(sweep, run_dir)
        rows.append(row)
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
    """`compare.baseline`, `compare.tuned`, `compare.alpha` as the runs recorded them (the most common
    value if runs disagree; defaults where no run has the node)."""
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
            "alpha": float(most_common([n.get("alpha") for n in nodes], 0.05))}


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
