"""Build `<sweep_dir>/report/`: results.csv, comparisons.csv, report.md, index.html and the
figures (differences.png, loss_curves.png, final_loss.png, throughput.png, tuning.png); for a scale
ladder (`+ladder=NAME`) also scaling.csv, multipliers.csv, transfer.csv and scaling.png.

Works on sweeps that are still running or partly failed: nothing is silently dropped.
Lives apart from `analysis.report` (the CLI) so that `python -m analysis.report` does not find
its own module already imported by `analysis/__init__.py`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import OmegaConf

from ablate.rundir.files import atomic_write_text as write_text
from analysis.collect import REPORT_DIRNAME, find_runs, load_curves, load_results, swept_axes
from analysis.findings import Findings
from analysis.html import to_html
from analysis.ladder import RUNG_KEY, is_ladder, ladder_of
from analysis.markdown import document, to_markdown
from analysis.stats import axis_table, choose_metric, config_table, ranked_tables
from analysis.tuning import TUNE_STAGE, tuning_of
from analysis.family import compare_axes
from analysis.verdict import comparisons_frame


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


def _tuned_jobs(sweeper, task: list[str], sweep: Path) -> int | None:
    """Jobs of both stages of ablate's tuning sweeper (hydra_plugins/ablate_tuning_sweeper), with the
    runs its grid extension added as the sweeper recorded them in tuning.json (none before stage 1 ended)."""
    try:
        from hydra_plugins.ablate_tuning_sweeper.tuning_sweeper import plan

        given = sweeper.get("params")
        params = [f"{k}={v}" for k, v in (OmegaConf.to_container(given) if given else {}).items()]
        the_plan = plan(params + [str(t) for t in task], dict(sweeper.tune), list(sweeper.tune_seeds),
                        str(sweeper.seed_key))
    except Exception:
        return None
    try:
        recorded = json.loads((sweep / "tuning.json").read_text(encoding="utf-8"))
        if isinstance(recorded.get("scores"), list):  # every tuning run, at whichever budget it was judged
            verdict = 0 if recorded.get("tune_only") else len(the_plan.variants) * len(the_plan.seeds)
            looks = sweep / "looks.json"  # a sequential verdict: the runs its looks launched so far
            if looks.is_file():
                verdict = sum(int(r["runs"]) for r in json.loads(looks.read_text(encoding="utf-8"))["rounds"])
            return len(recorded["scores"]) + verdict
        return the_plan.n_jobs + int(recorded.get("n_extension_runs", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return the_plan.n_jobs


def expected_jobs(sweep: Path) -> int | None:
    """Number of jobs the basic sweeper (or ablate's tuning sweeper) launches, from multirun.yaml;
    None if not knowable (no file, or sweep syntax such as range()/interval() or another sweeper)."""
    try:
        cfg = OmegaConf.load(sweep / "multirun.yaml")
        hydra = cfg.hydra
        target = str(hydra.sweeper.get("_target_", ""))
        if "TuningSweeper" in target:
            return _tuned_jobs(hydra.sweeper, list(hydra.overrides.task), sweep)
        if "BasicSweeper" not in target:
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


def gather(sweep: Path, baseline: dict[str, str] | None = None) -> Findings:
    """Everything the report says about `sweep`, computed once (tables, tests, tuning, ladder).
    `baseline` ({axis: option}) overrides the runs' own compare.baseline."""
    df = load_results(sweep)
    settings = df.attrs["compare"]
    if baseline:
        settings["baseline"] = {**settings["baseline"], **baseline}
    runs = df[df["stage"] != TUNE_STAGE]
    runs.attrs.update(df.attrs)
    axes = swept_axes(runs, settings["tuned"])
    variants = axes  # what tells the tuning's variants apart: the verdict's axes
    if runs.empty:  # tuning runs alone (hydra.sweeper.tune_only): their own keys, not each budget's settings
        from hydra_plugins.ablate_tuning_sweeper.tuning_sweeper import is_rung_key

        variants = [a for a in swept_axes(df, settings["tuned"]) if not is_rung_key(a)]
    # A ladder's rung is swept but not compared: it holds cells apart like another axis (seeds pair
    # within a rung) and the scale section fits loss against compute over it.
    context = [RUNG_KEY] if is_ladder(runs, axes) else []
    axes = [a for a in axes if a not in context]
    metric, reason = choose_metric(runs)
    tables = ({a: axis_table(runs, a, axes + context, metric) for a in axes} if context
              else ranked_tables(runs, axes, metric))
    configs = config_table(runs, axes + context, metric) if len(axes + context) > 1 else None
    comparisons, info = compare_axes(runs, axes, metric, settings, context)
    note = _jobs_note(sweep, len(df)) if not (sweep / ".hydra").is_dir() else ""
    findings = Findings(str(sweep.resolve()), df, runs, axes, metric, reason, tables, configs, comparisons,
                        info, settings, note, tuning_of(df, variants + context, metric, settings["tuned"],
                                                                   sweep))
    if context:
        findings.ladder = ladder_of(runs, axes, metric, settings, info)
    return findings


def results_table(df) -> str:
    """results.csv: one row per run; list columns joined, multi-line text never embedded."""
    return df.assign(overrides=df["overrides"].map(" ".join)).to_csv(index=False)


def build_report(sweep_dir: str | os.PathLike[str], plots: bool = True,
                 baseline: dict[str, str] | None = None) -> Path:
    """Write the report of `sweep_dir` and return the report directory. `plots=False` writes the
    tables and report.md/index.html without figures (fast: no matplotlib); `baseline` ({axis: option})
    compares against other baselines than the runs' compare.baseline."""
    sweep = Path(sweep_dir)
    if not find_runs(sweep):
        raise NoRunsError(
            f"no runs under {sweep}: expected directories containing .hydra/config.yaml or "
            f"summary.json")
    f = gather(sweep, baseline)
    out = sweep / REPORT_DIRNAME
    out.mkdir(parents=True, exist_ok=True)
    tables = {"results.csv": lambda: results_table(f.df),
              "comparisons.csv": lambda: comparisons_frame(f.comparisons).to_csv(index=False)}
    if f.ladder is not None:  # a scale ladder: fits, multipliers and the verdict at every rung
        tables.update({"scaling.csv": lambda: f.ladder.scaling_frame().to_csv(index=False),
                       "multipliers.csv": lambda: f.ladder.multipliers_frame().to_csv(index=False),
                       "transfer.csv": lambda: f.ladder.transfer.to_csv(index=False)})
    for name, text in tables.items():
        write_text(out / name, text())
    figures: list[str] = []
    if plots:
        from analysis.plots import draw_all  # lazy: matplotlib costs ~1 s

        figures = draw_all(f, load_curves(sweep), out)
    blocks = document(f, figures)
    write_text(out / "report.md", to_markdown(blocks))
    # Last, so that the figures it shows exist when it appears.
    write_text(out / "index.html", to_html(blocks, title=f"Sweep report: {sweep.resolve().name}",
                                           files=("report.md", *tables)))
    return out
