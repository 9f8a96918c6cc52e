"""Build `<sweep_dir>/report/`: results.csv, report.md, index.html, loss_curves.png,
final_loss.png, throughput.png.

Works on sweeps that are still running or partly failed: nothing is silently dropped.
Lives apart from `analysis.report` (the CLI) so that `python -m analysis.report` does not find
its own module already imported by `analysis/__init__.py`.
"""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from analysis.atomic import write_text
from analysis.collect import REPORT_DIRNAME, find_runs, load_curves, load_results, swept_axes
from analysis.html import to_html
from analysis.markdown import document, to_markdown
from analysis.stats import choose_metric, config_table, ranked_tables


class NoRunsError(FileNotFoundError):
    """The directory holds no run (no `.hydra/config.yaml` or `summary.json` anywhere)."""


def _split_top_level(text: str) -> list[str]:
    """Split sweep values on commas outside brackets and quotes: `a,[1,2],'x,y'` -> 3 values."""
    parts, depth, quote, current = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    return parts + [current]


def expected_jobs(sweep: Path) -> int | None:
    """Number of jobs the basic sweeper launches, from multirun.yaml; None if not knowable
    (no file, or sweep syntax such as range()/interval() or another sweeper)."""
    try:
        cfg = OmegaConf.load(sweep / "multirun.yaml")
        hydra = cfg.hydra
        if "BasicSweeper" not in str(hydra.sweeper.get("_target_", "")):
            return None
        params_node = hydra.sweeper.get("params")
        params = dict(OmegaConf.to_container(params_node, resolve=False)) if params_node else {}
        task = OmegaConf.to_container(hydra.overrides.task, resolve=False)
    except Exception:
        return None
    for item in task:
        if "=" in str(item):
            key, value = str(item).split("=", 1)
            params[key] = value
    total = 1
    for value in params.values():
        value = str(value)
        if value.startswith("choice(") and value.endswith(")"):
            value = value[len("choice("):-1]
        elif "(" in value.split(",")[0] and not value.startswith(("[", "{")):
            return None  # range(), interval(), glob(), ...: not worth re-implementing here
        total *= len(_split_top_level(value))
    return total


def _jobs_note(sweep: Path, n_found: int) -> str:
    expected = expected_jobs(sweep)
    if expected is None:
        return ""
    missing = expected - n_found
    note = f"Jobs expected from multirun.yaml: {expected}, run dirs found: {n_found}"
    return note + (f" — **{missing} missing** (not started, or their dirs were not copied)"
                   if missing > 0 else "")


def build_report(sweep_dir: str | os.PathLike[str]) -> Path:
    """Write the report of `sweep_dir` and return the report directory."""
    sweep = Path(sweep_dir)
    runs = find_runs(sweep)
    if not runs:
        raise NoRunsError(
            f"no runs under {sweep}: expected directories containing .hydra/config.yaml or "
            f"summary.json")
    df = load_results(sweep)
    curves = load_curves(sweep)
    axes = swept_axes(df)
    metric, reason = choose_metric(df)
    tables = ranked_tables(df, axes, metric)
    configs = config_table(df, axes, metric) if len(axes) > 1 else None

    from analysis import plots  # lazy: matplotlib costs ~1 s, not needed to report an error

    out = sweep / REPORT_DIRNAME
    out.mkdir(parents=True, exist_ok=True)
    csv = df.assign(overrides=df["overrides"].map(" ".join))
    write_text(out / "results.csv", csv.to_csv(index=False))
    note = _jobs_note(sweep, len(runs)) if not (sweep / ".hydra").is_dir() else ""
    blocks = document(str(sweep.resolve()), df, axes, metric, reason,
                      tables, configs, note)
    write_text(out / "report.md", to_markdown(blocks))
    per_axis = tables if axes else {}
    plots.plot_loss_curves(df, curves, axes, metric, out / "loss_curves.png")
    plots.plot_final(df, per_axis, metric, out / "final_loss.png")
    plots.plot_throughput(df, per_axis, axes, metric, out / "throughput.png")
    # Last, so that the figures it shows exist when it appears.
    write_text(out / "index.html", to_html(blocks, title=f"Sweep report: {sweep.resolve().name}"))
    return out
