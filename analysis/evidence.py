"""Result files read as evidence: a file cut short, of the wrong JSON type, or written by another version
(fields the report derives, values of the wrong type) is named as a `Problem` (which file, what is wrong,
what the report did about it) and never stops the report. Nothing here writes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from ablate.rundir.summary import STATUSES, RunSummary

# libyaml's loader when present: a report of hundreds of runs parses their configs ~10x faster.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
UNREADABLE = "unreadable"  # a run whose summary.json is damaged or foreign: finished, but with no usable record
# metrics.jsonl keys that hold numbers (the contract's and the report's); another type there is damage.
METRIC_NUMBERS = ("step", "tokens", "train_loss", "lr", "grad_norm", "tokens_per_s", "val_loss", "val_bpb",
                  "elapsed_s")
_SCHEMA = get_type_hints(RunSummary)


@dataclass(frozen=True)
class Problem:
    path: str    # the file, relative to the sweep directory
    why: str     # what is wrong with it
    action: str  # what the report did instead


def _kind(value: Any) -> str:
    """The JSON name of a value's type, as a reader of the file would say it."""
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), (str, "a string"), (int, "a number"), (float, "a number"),
                       (dict, "an object"), (list, "a list")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def read_json(path: Path) -> tuple[Any, str | None]:
    """(the parsed JSON, None), (None, None) when the file is absent, or (None, why) when it cannot be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"cannot be read ({e.strerror or e})"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "is not UTF-8 text (a binary or foreign file)"
    if not text.strip():
        return None, f"is empty ({len(data)} bytes): cut short before anything was written"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated"):  # the text ran out mid-record
            return None, f"is cut short: its JSON ends mid-record after {len(data)} bytes"
        return None, f"is not JSON ({e.msg}: line {e.lineno}, column {e.colno})"


def read_yaml(path: Path) -> tuple[Any, str | None]:
    """(plain Python data of a .hydra/*.yaml, None), (None, None) when absent, or (None, why)."""
    try:
        with path.open(encoding="utf-8") as f:
            return yaml.load(f, Loader=_YAML_LOADER), None
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as e:
        return None, f"cannot be read ({getattr(e, 'strerror', None) or e})"
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return None, f"is not YAML ({getattr(e, 'problem', None) or 'malformed'}{where}): cut short or foreign"


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the type RunSummary declares (null fits an Optional field)."""
    if get_origin(hint) is Union:
        return any(_fits(value, h) for h in get_args(hint))
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    origin = get_origin(hint) or hint
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(v, (str, type(None))) for v in value.values())
    if origin is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, origin)


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:40] + "…"


def summary_record(data: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(the summary, None), or (None, why it is not a record of an ablate run: the wrong JSON type, no
    known `status`, or a field of RunSummary holding a value of another type)."""
    if not isinstance(data, dict):
        return None, f"holds {_kind(data)}, not a JSON object"
    if data.get("status") not in STATUSES:
        found = "has no `status`" if "status" not in data else f"has `status` {_shown(data['status'])}"
        return None, f"{found}, not one of {', '.join(s for s in STATUSES if s != 'running')}"
    wrong = [f"`{k}` is {_kind(v)} ({_shown(v)})" for k, v in data.items()
             if k in _SCHEMA and not _fits(v, _SCHEMA[k])]
    if wrong:
        return None, "is malformed: " + "; ".join(wrong) + ", not what ablate writes there"
    return data, None


def metric_rows(path: Path, finished: bool) -> tuple[list[dict[str, Any]], str | None]:
    """Rows of metrics.jsonl with wrongly typed numbers left out, and what was wrong with it (None: nothing).
    A last line cut short is how a running job's file looks mid-write: damage only once the run `finished`."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], None
    except OSError as e:
        return [], f"cannot be read ({e.strerror or e})"
    rows: list[dict[str, Any]] = []
    bad_lines, not_objects, bad_values = [], [], []
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if finished or number < len(lines):  # the unterminated last line of a running job is expected
                bad_lines.append(number)
            continue
        if not isinstance(row, dict):
            not_objects.append(f"{number} ({_kind(row)})")
            continue
        for key in METRIC_NUMBERS:
            value = row.get(key)
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
                bad_values.append(f"line {number} `{key}` is {_kind(value)} ({_shown(value)})")
                del row[key]
        rows.append(row)
    parts = []
    if bad_lines:
        parts.append(f"{_lines(bad_lines)} not JSON (cut short or foreign)")
    if not_objects:
        parts.append(f"{_lines(not_objects)} not a JSON object")
    if bad_values:
        parts.append("; ".join(bad_values[:3]) + (f" and {len(bad_values) - 3} more" if len(bad_values) > 3 else "")
                     + ", not numbers")
    return rows, ("has " + "; ".join(parts)) if parts else None


def _lines(numbers: list[Any]) -> str:
    shown = ", ".join(map(str, numbers[:5])) + (f" and {len(numbers) - 5} more" if len(numbers) > 5 else "")
    return f"line{'s' if len(numbers) > 1 else ''} {shown}"


def sweep_file_problems(sweep: Path) -> list[Problem]:
    """A sweep's own records, as the jobs and the report read them: tuning.json (ablate's tuning sweeper:
    its grid extension) and precision.json (the dtype every `auto` job computes in)."""
    checks = {
        "tuning.json": (lambda d: isinstance(d, dict) and isinstance(d.get("n_extension_runs", 0), int)
                        and isinstance(d.get("choices", []), list),
                        "an object whose `n_extension_runs` is a whole number",
                        "the jobs expected are counted without the runs its grid extension added"),
        "precision.json": (lambda d: isinstance(d, dict) and d.get("name") in ("fp32", "bf16")
                           and isinstance(d.get("reason"), str),
                           "an object with `name` fp32 or bf16 and a `reason`",
                           "jobs that found it so decided their precision each for itself: see the `dtype` "
                           "column of results.csv"),
    }
    problems = []
    for name, (ok, expected, action) in checks.items():
        data, why = read_json(sweep / name)
        if why is None and data is not None and not ok(data):
            why = f"is not {expected} (another version's, or not ablate's)"
        if why:
            problems.append(Problem(name, why, action))
    return problems
