"""Tests of the sweep report (analysis/) on hand-made sweep dirs with known numbers."""
from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from analysis import (build_report, choose_metric, find_runs, load_curves, load_results,
                      ranked_tables, swept_axes)
from analysis import plots
from analysis.callbacks import SweepReport
from analysis.report import expected_jobs

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNGS = ("differences.png", "loss_curves.png", "final_loss.png", "throughput.png")
GROUPS = ["model", "norm", "norm_pos", "ffn", "block", "pos", "attn", "qk_norm", "softcap",
          "z_loss", "moe", "data", "tokenizer", "optim", "schedule", "logger"]
DEFAULTS = {"model": "nano", "norm": "rms", "pos": "rope", "tokenizer": "bpe"}


def make_run(path: Path, overrides: dict[str, str], loss: float | None, *,
             status: str | None = "completed", error: str | None = None,
             bpb: float | None = None, params: int = 1_000_000, flops: float = 6e6,
             vocab: int = 2048, partial: bool = False, tps: float = 1e4) -> None:
    """One run dir; `status=None` writes no summary.json (a run still in progress)."""
    choices = {g: overrides.get(g, DEFAULTS.get(g, "x")) for g in GROUPS}
    seed = int(overrides.get("train.seed", 0))
    (path / ".hydra").mkdir(parents=True)
    config = [f"{g}:\n  name: {choices[g]}" for g in GROUPS]
    config += ["tokenizer_extra: 1", f"train:\n  seed: {seed}\n  steps: 100"]
    (path / ".hydra" / "config.yaml").write_text("\n".join(config) + "\n")
    ov = [f"{k}={v}" for k, v in overrides.items()]
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in ov))
    (path / ".hydra" / "hydra.yaml").write_text("hydra: {}\n")
    lines = []
    for step in (0, 50, 100):
        row = {"step": step, "tokens": step * 1000, "train_loss": 5.0, "lr": 1e-3,
               "grad_norm": 1.0, "tokens_per_s": tps, "elapsed_s": step * 0.1 + seed * 0.01}
        if loss is not None:
            row.update(val_loss=loss + (100 - step) / 50, val_bpb=(bpb or loss) + (100 - step) / 50)
        lines.append(json.dumps(row))
    text = "\n".join(lines) + "\n"
    if partial:  # killed mid-write: last two evals present, then a truncated line
        text = "\n".join(lines[:2]) + '\n{"step": 75, "tokens": 7'
    (path / "metrics.jsonl").write_text(text)
    if status is None:
        return
    summary = {
        "status": status, "error": error, "final_val_loss": loss, "best_val_loss": loss,
        "val_bpb": bpb, "unigram_val_loss": 6.0, "vocab_size": vocab, "params_total": params,
        "params_non_embedding": params // 2, "params_active": params, "flops_per_token": flops,
        "d_ff": 512, "tokens_seen": 100_000, "steps": 100, "wall_time_s": 10.0,
        "tokens_per_s": tps, "seed": seed, "choices": choices, "overrides": ov,
    }
    (path / "summary.json").write_text(json.dumps(summary))


RMS = [3.00, 3.10, 3.05]
LN = [3.40, 3.50, 3.45]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """norm in {rms, ln} x seeds {0,1,2}, plus one diverged, one failed, one running run.

    Module-scoped (built and reported once) to keep the suite fast; tests only read it."""
    root = tmp_path_factory.mktemp("sweep") / "multirun" / "2026-11-25" / "10-00-00"
    job = 0
    for norm, losses in (("rms", RMS), ("ln", LN)):
        for seed, loss in enumerate(losses):
            make_run(root / str(job), {"norm": norm, "train.seed": str(seed)}, loss)
            job += 1
    make_run(root / "6", {"norm": "ln", "train.seed": "3"}, None, status="diverged",
             error="loss is NaN at step 120")
    make_run(root / "7", {"norm": "rms", "train.seed": "4"}, None, status="failed",
             error="CUDA out of memory")
    make_run(root / "8", {"norm": "rms", "train.seed": "5"}, 2.9, status=None, partial=True)
    (root / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    _target_: hydra._internal.core_plugins.basic_sweeper."
        "BasicSweeper\n    params: null\n  overrides:\n    task:\n    - norm=rms,ln\n"
        "    - train.seed=0,1,2,3,4\n")
    return root


@pytest.fixture(scope="module")
def report(sweep: Path) -> Path:
    return build_report(sweep)


def md_row(option: str, n: str, vals: list[float]) -> str:
    """The per-option row of report.md: mean, its 95 % t interval (scipy), std, seed std, cost."""
    from scipy import stats

    low, high = stats.t.interval(0.95, len(vals) - 1, loc=statistics.mean(vals),
                                 scale=statistics.stdev(vals) / len(vals) ** 0.5)
    return (f"| `{option}` | {n} | {statistics.mean(vals):.4f} | {low:.4f} to {high:.4f} | "
            f"{statistics.stdev(vals):.4f} | {statistics.stdev(vals):.4f} | 1,000,000 | 500,000 | "
            f"6e+06 | 10,000 |")


def test_collect(sweep: Path) -> None:
    runs = find_runs(sweep)
    assert [r.name for r in runs] == [str(i) for i in range(9)]
    df = load_results(sweep)
    assert swept_axes(df) == ["norm"]  # train.seed differs too but is not an axis
    running = df[df["run"] == "8"].iloc[0]
    assert running["status"] == "running"
    # From the partial metrics.jsonl: evals at step 0 (loss 2.9+2) and 50 (2.9+1).
    assert running["final_val_loss"] == pytest.approx(3.9)
    assert running["best_val_loss"] == pytest.approx(3.9)
    assert running["seed"] == 5  # no summary: seed from .hydra/config.yaml
    assert running["tokens_per_s"] == pytest.approx(1e4)  # median of the logged intervals
    curves = load_curves(sweep)
    assert len(curves) == 8 * 3 + 2  # truncated last line skipped
    assert set(curves["run"]) == {str(i) for i in range(9)}


def test_report_files_and_results_csv(sweep: Path, report: Path) -> None:
    out = report
    assert out == sweep / "report"
    for name in ("results.csv", "report.md", "index.html", *PNGS):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    for name in PNGS:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files

    csv = pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""])
    got = csv[["run", "status", "norm", "train.seed", "seed", "final_val_loss", "error"]]
    expected = pd.DataFrame({
        "run": [str(i) for i in range(9)],
        "status": ["completed"] * 6 + ["diverged", "failed", "running"],
        "norm": ["rms"] * 3 + ["ln"] * 3 + ["ln", "rms", "rms"],
        "train.seed": [0, 1, 2, 0, 1, 2, 3, 4, 5],
        "seed": [0, 1, 2, 0, 1, 2, 3, 4, 5],
        "final_val_loss": RMS + LN + [None, None, 3.9],
        "error": [None] * 6 + ["loss is NaN at step 120", "CUDA out of memory", None],
    })
    csv_run = got.assign(run=got["run"].astype(str))
    pd.testing.assert_frame_equal(csv_run, expected, check_dtype=False)
    assert csv.loc[0, "choice.norm"] == "rms"
    assert csv.loc[0, "overrides"] == "norm=rms train.seed=0"


def test_report_markdown(sweep: Path, report: Path) -> None:
    md = (report / "report.md").read_text()
    assert f"- Sweep: `{sweep.resolve()}`" in md
    assert "- Runs: 9 (6 completed, 1 diverged, 1 failed, 1 running)" in md
    assert "Metric: `final_val_loss`" in md
    assert "Jobs expected from multirun.yaml: 10, run dirs found: 9 — **1 missing**" in md
    # The opening paragraph: the question, the verdict in the contract's words, what was held fixed.
    opening = md.split("\n\n")[1]
    assert opening.startswith("**Question:** Does the choice of `norm` change `final_val_loss`?")
    # ln diverged in seed 3 (rms has no seed 3): unstable, said with the counts and the difference where
    # both trained, never "nothing detectable".
    assert ("`norm` (baseline `rms`): `ln` **unstable**: diverged in 1 of 4 seeds (the baseline `rms` in 0 "
            "of 3) and was 0.400 nats worse in the seeds where both trained (95 % CI +0.400 to +0.400)") in opening
    assert "nothing detectable" not in opening
    assert "Winner" not in md
    assert "**Held fixed:** model `nano`" in opening and "unigram baseline" in opening
    # Per option, best mean first; rms: 3 of 5 runs completed (1 failed, 1 running), ln: 3 of 4.
    rms = md_row("rms", "3/5", RMS)
    ln = md_row("ln", "3/4", LN)
    assert rms in md and ln in md and md.index(rms) < md.index(ln)
    assert "1 failed, 1 running |" in md[md.index(rms):] and "1 diverged |" in md[md.index(ln):]
    # ln diverged once: its test is by ranks over all 4 of its outcomes against rms's 3 (Mann-Whitney, the
    # diverged run ranked worst: every ln run above every rms run, exact p = 2 / C(7, 3)), not significant.
    assert ("| `ln` | `rms` | 4/3 | rank-sum, diverged worst | +0.4000 | +0.4000 to +0.4000 | 0.0571 | 0.0571 "
            "| 0.0000 | **unstable** | diverged: `ln` 1 of 4, baseline `rms` 0 of 3; difference and CI over the 3 seeds "
            "where both trained") in md
    assert "**`ln` unstable:** `ln` diverged where the other side did not. To settle it: tune the rate" in md
    section = md[md.index("## Runs not in the means"):]
    assert "| `6` | diverged | ln | 3 | loss is NaN at step 120 |" in section
    assert "| `7` | failed | rms | 4 | CUDA out of memory |" in section
    assert "| `8` | running | rms | 5 | no summary.json" in section
    assert "⚠" not in md  # all options have the same size


class _Tables(HTMLParser):
    """Cell texts of every <table>, and the src of every <img>, of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.tags: set[str] = set()
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def markdown_tables(md: str) -> list[list[list[str]]]:
    """Cell texts of the markdown tables (code spans, bold and escapes removed), header included."""
    tables, current = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            if set(line) <= {"|", "-"}:
                continue  # the |---| separator
            cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
            current.append([c.strip().replace("\\|", "|").replace("`", "").replace("**", "") for c in cells])
        else:
            current = None
    return tables


def test_index_html(sweep: Path, report: Path) -> None:
    text = (report / "index.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text
    page = _Tables()
    page.feed(text)
    assert "script" not in page.tags and "http" not in text  # opens from disk, nothing to fetch
    # The same tables as report.md, cell for cell (rankings, means, runs not in the means).
    md_tables = markdown_tables((report / "report.md").read_text(encoding="utf-8"))
    assert len(md_tables) == 3 and page.tables == md_tables
    [compared, options, excluded] = page.tables
    assert compared[1][:3] == ["ln", "rms", "4/3"] and compared[1][9] == "unstable"
    assert options[1][:3] == ["rms", "3/5", f"{statistics.mean(RMS):.4f}"]
    assert options[2][:3] == ["ln", "3/4", f"{statistics.mean(LN):.4f}"]
    assert ["6", "diverged", "ln", "3", "loss is NaN at step 120"] in excluded
    assert "<strong>Question:</strong>" in text and "Winner" not in text
    # Every PNG of the report is shown, by a path relative to index.html.
    assert sorted(page.images) == sorted(p.name for p in report.glob("*.png")) == sorted(PNGS)
    assert '<a href="results.csv">' in text


def test_html_escapes_and_formats() -> None:
    from analysis.html import inline, to_html
    from analysis.markdown import Table

    assert inline("a <b> & `x<y>` **bold** *em* 2*3*4") == (
        "a &lt;b&gt; &amp; <code>x&lt;y&gt;</code> <strong>bold</strong> <em>em</em> 2*3*4")
    page = to_html([Table(["k", "v"], [["a|b", "1.0"]], [False, True])])
    assert "<td>a|b</td><td class=\"num\">1.0</td>" in page


def _marker_points(panel) -> list[tuple[float, float]]:
    """(x, y) of the big mean markers (errorbar centres) of a panel."""
    return [(float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in panel.lines
            if line.get_marker() == "o"]


def test_loss_curves_figure(sweep: Path) -> None:
    df, curves = load_results(sweep), load_curves(sweep)
    fig = plots.loss_curves_figure(df, curves, ["norm"], "final_val_loss")
    val_steps, val_tokens, train_steps, train_tokens = fig.axes
    assert val_steps.get_xlabel() == train_steps.get_xlabel() == "training step"
    assert val_tokens.get_xlabel() == train_tokens.get_xlabel() == "tokens seen"
    assert val_steps.get_ylabel() == "validation loss (nats/token)"
    assert train_steps.get_ylabel() == "training loss (nats/token)"
    for panel in fig.axes:
        legend = [t.get_text() for t in panel.get_legend().get_texts()]
        diverged = ["diverged run"] if panel in (train_steps, train_tokens) else []  # it logged no val_loss
        assert legend == ["norm=rms (mean of 3)", "norm=ln (mean of 3)", *diverged, "unigram baseline 6.000"]
        solid = [line for line in panel.lines if line.get_linestyle() == "-"]
        widths = sorted(line.get_linewidth() for line in solid)
        # Thin: 4 rms runs (3 completed + 1 running), 3 ln runs, and on the training-loss panels the
        # failed run (it logged no val_loss); thick: one mean per option; the diverged run dotted, the
        # unigram baseline dashed.
        assert widths == [0.8] * (7 + len(diverged)) + [2.5] * 2
        assert all(line.get_marker() == "o" for line in solid)
        [unigram] = [line for line in panel.lines if line.get_linewidth() == 1.0]
        assert list(unigram.get_ydata()) == [6.0, 6.0]
    mean_rms = next(line for line in val_steps.lines if line.get_label() == "norm=rms (mean of 3)")
    assert mean_rms.get_xdata()[-1] == 100
    assert mean_rms.get_ydata()[-1] == pytest.approx(statistics.mean(RMS))
    mean_tokens = next(line for line in val_tokens.lines if line.get_label() == "norm=rms (mean of 3)")
    assert mean_tokens.get_xdata()[-1] == 100 * 1000


def test_throughput_figure_and_png(tmp_path: Path) -> None:
    root = tmp_path / "tps"
    speeds = {"rms": [1000.0, 1100.0, 1200.0], "ln": [2000.0, 2100.0, 2200.0]}
    for norm, losses in (("rms", RMS), ("ln", LN)):
        for seed, (loss, tps) in enumerate(zip(losses, speeds[norm])):
            make_run(root / f"{norm}{seed}", {"norm": norm, "train.seed": str(seed)}, loss, tps=tps)
    make_run(root / "running", {"norm": "ln", "train.seed": "3"}, 3.9, status=None, tps=500.0)
    df = load_results(root)
    axes = swept_axes(df)
    metric, _ = choose_metric(df)
    tables = ranked_tables(df, axes, metric)
    fig = plots.throughput_figure(df, tables, axes, metric)
    per_option, scatter = fig.axes
    assert [t.get_text() for t in per_option.get_xticklabels()] == ["rms", "ln"]
    assert per_option.get_ylabel() == "training throughput (tokens/s)"
    # Means over completed runs only: the running run (500 tokens/s) is drawn but not averaged.
    assert _marker_points(per_option) == [(0.0, 1100.0), (1.0, 2100.0)]
    legend = [t.get_text() for t in per_option.get_legend().get_texts()]
    assert sorted(legend) == ["mean ± std", "not in the mean (did not learn, running)", "one run (seed)"]
    assert scatter.get_xlabel() == "training throughput (tokens/s)"
    assert scatter.get_ylabel() == "final validation loss (nats/token)"
    # One colour per option: its mean (tokens/s, loss), in the order the runs were found.
    names = [t.get_text() for t in scatter.get_legend().get_texts()]
    points = dict(zip(names, _marker_points(scatter)))
    assert sorted(points) == ["norm=ln (n=3)", "norm=rms (n=3)"]
    assert points["norm=rms (n=3)"] == pytest.approx((1100.0, statistics.mean(RMS)))
    assert points["norm=ln (n=3)"] == pytest.approx((2100.0, statistics.mean(LN)))
    assert plots.to_png(fig)[:8] == PNG_MAGIC


def test_verdict_words(tmp_path: Path) -> None:
    noisy = tmp_path / "noisy"
    rms, ln = [3.00, 3.20, 3.10], [3.05, 3.15, 3.25]
    for i, (norm, losses) in enumerate((("rms", rms), ("ln", ln))):
        for seed, loss in enumerate(losses):
            make_run(noisy / f"{i}{seed}", {"norm": norm, "train.seed": str(seed)}, loss)
    md = (build_report(noisy) / "report.md").read_text()
    assert "`norm` (baseline `rms`): nothing detectable: `ln`: no detectable difference" in md
    assert "Differences smaller than" in md and "cannot be resolved with 3 seeds; 5 seeds would resolve" in md

    single = tmp_path / "single"
    make_run(single / "0", {"norm": "rms"}, 3.0)
    make_run(single / "1", {"norm": "ln"}, 3.2, params=1_100_000)
    md = (build_report(single) / "report.md").read_text()
    assert "`ln`: not compared (one seed)" in md and "Winner" not in md
    assert "1,100,000 ⚠" in md  # 10 % more parameters than the smallest option


def test_did_not_learn_is_marked_not_ranked(tmp_path: Path) -> None:
    root = tmp_path / "s"
    for seed in range(3):
        make_run(root / f"a{seed}", {"pos": "rope", "train.seed": str(seed)}, 5.0 + seed / 100)
        make_run(root / f"b{seed}", {"pos": "sinusoidal", "train.seed": str(seed)}, 5.9 + seed / 100)
    out = build_report(root)
    csv = pd.read_csv(out / "results.csv")
    assert csv.set_index("run")["did_not_learn"].to_dict() == {
        "a0": False, "a1": False, "a2": False, "b0": True, "b1": True, "b2": True}  # 5.9 >= 0.98 * 6.0
    [row] = pd.read_csv(out / "comparisons.csv").to_dict("records")
    assert row["verdict"] == "not compared" and row["did_not_learn"]
    md = (out / "report.md").read_text()
    assert "`sinusoidal`: not compared (did not learn)" in md
    assert "| `b0` | did not learn | sinusoidal | 0 |" in md and "does not suit it" in md


def test_diverged_option_is_unstable(tmp_path: Path) -> None:
    root = tmp_path / "s"
    for seed in range(2):
        make_run(root / f"a{seed}", {"optim.lr": "0.003", "train.seed": str(seed)}, 3.5 + seed / 10)
        make_run(root / f"b{seed}", {"optim.lr": "0.01", "train.seed": str(seed)}, 3.0 + seed / 10)
    make_run(root / "b2", {"optim.lr": "0.01", "train.seed": "2"}, None, status="diverged",
             error="loss spike")
    md = (build_report(root) / "report.md").read_text()
    # optim.lr's default (3e-3 in conf/optim/adamw.yaml) is the baseline, matched by value.
    assert "## Axis `optim.lr` (baseline `0.003`: the default in conf/config.yaml)" in md
    assert ("`optim.lr` (baseline `0.003`): `0.01` **unstable**: diverged in 1 of 3 seeds at its rate 0.01 (the "
            "baseline `0.003` in 0 of 2) and was 0.500 nats better in the seeds where both trained") in md
    # The diverged option is listed after the one that trained, although its mean is lower.
    assert md.index("| `0.003` | 2/2 |") < md.index("| `0.01` | 2/3 |")


def test_bpb_when_tokenizers_differ(tmp_path: Path) -> None:
    root = tmp_path / "tok"
    for seed in range(3):
        # Per-token loss favours byte (fewer classes) but bits per byte favours bpe.
        make_run(root / f"bpe{seed}", {"tokenizer": "bpe", "train.seed": str(seed)}, 3.0,
                 bpb=1.20 + seed / 100)
        make_run(root / f"byte{seed}", {"tokenizer": "byte", "train.seed": str(seed)}, 1.0,
                 bpb=1.40 + seed / 50, vocab=257)
    out = build_report(root)
    md = (out / "report.md").read_text()
    assert "Metric: `val_bpb`" in md and "different tokenizers (bpe, byte)" in md
    [row] = pd.read_csv(out / "comparisons.csv").to_dict("records")
    assert (row["metric"], row["option"], row["verdict"]) == ("val_bpb", "byte", "worse")
    assert row["diff_mean"] == pytest.approx(0.21)


def test_two_axes(tmp_path: Path) -> None:
    root = tmp_path / "grid"
    for norm in ("rms", "ln"):
        for pos in ("rope", "learned"):
            for seed in range(3):
                loss = 3.0 + (norm == "ln") * 0.3 + (pos == "learned") * 0.1 + seed * 0.01 \
                    + (seed * (norm == "ln") - 1) * 0.002
                make_run(root / f"{norm}-{pos}" / str(seed),  # nested subdirs
                         {"norm": norm, "pos": pos, "train.seed": str(seed)}, loss)
    df = load_results(root)
    assert swept_axes(df) == ["norm", "pos"]
    out = build_report(root)
    md = (out / "report.md").read_text()
    assert "## Axis `norm`" in md and "## Axis `pos`" in md and "## Per configuration" in md
    table = pd.read_csv(out / "comparisons.csv").set_index("axis")
    # pos: the seed spread (0.01 per seed) is shared by both options, so pairing by seed (and norm)
    # leaves the 0.1 difference with almost no noise: a paired test over 3 seeds finds it.
    assert table.loc["pos", "paired"] and table.loc["pos", "verdict"] == "worse"
    assert table.loc["pos", "diff_mean"] == pytest.approx(0.1)
    assert table.loc["norm", "verdict"] == "worse"
    assert table.loc["norm", "diff_mean"] == pytest.approx(0.3 + 0.002)


def test_cli(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "analysis.report"]
    sweep = tmp_path / "cli"
    make_run(sweep / "0", {"norm": "rms"}, 3.0)
    make_run(sweep / "1", {"norm": "ln"}, 3.1)
    done = subprocess.run([*cmd, str(sweep)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert done.stdout.startswith(f"report: {sweep / 'report'}\n")
    assert "# Sweep report" in done.stdout and "Winner" not in done.stdout
    assert "`ln`: not compared (one seed)" in done.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run([*cmd, str(empty)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "no runs" in done.stderr


def test_callback_and_single_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from omegaconf import OmegaConf

    run = tmp_path / "outputs" / "run"  # a single run dir is a report of one run
    make_run(run, {"norm": "rms"}, 3.0)
    SweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(run)}}}))
    md = (run / "report" / "report.md").read_text()
    assert "- Runs: 1 (1 completed)" in md and "| `all runs` | 1/1 | 3.0000 | – |" in md
    assert "no axis was swept" in md
    assert find_runs(run) == [run]
    assert "sweep report:" in capsys.readouterr().out
    missing = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "x")}}})
    SweepReport().on_multirun_end(missing)  # no runs there: printed, not raised
    assert "could not build the sweep report" in capsys.readouterr().out


def test_expected_jobs(sweep: Path) -> None:
    assert expected_jobs(sweep) == 10


def test_analysis_never_imports_torch_or_training_code(sweep: Path) -> None:
    code = ("import sys, analysis, analysis.callbacks, analysis.html, analysis.plots, "
            "analysis.report, analysis.wandb_sweeps as w; "
            f"df = analysis.load_results({str(sweep)!r}); "
            "analysis.ranked_tables(df, analysis.swept_axes(df), 'final_val_loss'); "
            f"analysis.build_report({str(sweep)!r}, plots=False); "
            "w.expected(w.default_sweeps_dir()); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'ablate', 'components')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # only the torch-free pieces both sides share: the summary record, atomic file writes, how values compare
    assert done.stdout.strip() == ("['ablate', 'ablate.config', 'ablate.config.values', 'ablate.rundir', 'ablate.rundir.files', "
                                     "'ablate.rundir.summary']")


def test_runs_in_different_precisions_are_said_to_be_so(tmp_path: Path) -> None:
    """A sweep's jobs share one `auto` precision; runs gathered from several sweeps or machines may not, and
    the opening paragraph says so where they differ (and only there)."""
    for name, dtypes in (("mixed", {"rms": "fp32", "ln": "bf16"}), ("same", {"rms": "fp32", "ln": "fp32"})):
        for i, (norm, losses) in enumerate((("rms", RMS), ("ln", LN))):
            for seed, loss in enumerate(losses):
                run = tmp_path / name / f"{i}{seed}"
                make_run(run, {"norm": norm, "train.seed": str(seed)}, loss)
                summary = json.loads((run / "summary.json").read_text())
                (run / "summary.json").write_text(json.dumps({**summary, "dtype": dtypes[norm]}))
    mixed = (build_report(tmp_path / "mixed") / "report.md").read_text().split("\n\n")[1]
    same = (build_report(tmp_path / "same") / "report.md").read_text().split("\n\n")[1]
    assert "**Precision differs between these runs** (bf16, fp32)" in mixed
    assert "Precision differs" not in same and "dtype fp32" in same


def test_a_group_chosen_by_nothing_is_no_choice(tmp_path: Path) -> None:
    """`ladder: {name: null}` in a run's config (no `+ladder=`) is not a ladder called "None"."""
    run = tmp_path / "s" / "0"
    make_run(run, {"norm": "rms"}, 3.0)
    config = run / ".hydra" / "config.yaml"
    config.write_text(config.read_text() + "ladder:\n  name: null\n  rung: 0\n")
    df = load_results(tmp_path / "s")
    assert "choice.ladder" not in df and df.loc[0, "choice.norm"] == "rms"
    assert "ladder `" not in (build_report(tmp_path / "s") / "report.md").read_text()


def test_held_fixed_states_the_planned_length_not_a_diverged_runs(tmp_path: Path) -> None:
    """A run that diverged at step 25 of 300 trained fewer steps and tokens: that is its outcome, not a
    setting, so the opening paragraph's *Held fixed* says 300 steps and the completed runs' tokens."""
    for i, (seed, status) in enumerate(((0, "completed"), (1, "completed"), (2, "diverged"))):
        run = tmp_path / "s" / str(i)
        make_run(run, {"norm": "rms", "train.seed": str(seed)}, 3.0 + 0.01 * seed if status == "completed" else None,
                 status=status, error="loss is NaN at step 25" if status == "diverged" else None)
        config = run / ".hydra" / "config.yaml"
        config.write_text(config.read_text().replace("  steps: 100", "  max_steps: 300"))
        steps = 300 if status == "completed" else 25
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "steps": steps, "tokens_seen": steps * 2048}))
    opening = (build_report(tmp_path / "s", plots=False) / "report.md").read_text().split("\n\n")[1]
    assert "300 steps, 614,400 training tokens per run" in opening and "25 to" not in opening
