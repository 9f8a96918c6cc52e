"""Tests of the sweep report (analysis/) on hand-made sweep dirs with known numbers."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis import build_report, find_runs, load_curves, load_results, swept_axes
from analysis.callbacks import SweepReport
from analysis.report import expected_jobs

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GROUPS = ["model", "norm", "norm_pos", "ffn", "block", "pos", "attn", "qk_norm", "softcap",
          "z_loss", "moe", "data", "tokenizer", "optim", "schedule", "logger"]
DEFAULTS = {"model": "nano", "norm": "rms", "pos": "rope", "tokenizer": "bpe"}


def make_run(path: Path, overrides: dict[str, str], loss: float | None, *,
             status: str | None = "completed", error: str | None = None,
             bpb: float | None = None, params: int = 1_000_000, flops: float = 6e6,
             vocab: int = 2048, partial: bool = False) -> None:
    """One run dir; `status=None` writes no summary.json (a run still in progress)."""
    choices = {g: overrides.get(g, DEFAULTS.get(g, "x")) for g in GROUPS}
    seed = int(overrides.get("train.seed", 0))
    (path / ".hydra").mkdir(parents=True)
    config = [f"{g}:\n  name: {choices[g]}" for g in GROUPS]
    config += [f"tokenizer_extra: 1", f"train:\n  seed: {seed}\n  steps: 100"]
    (path / ".hydra" / "config.yaml").write_text("\n".join(config) + "\n")
    ov = [f"{k}={v}" for k, v in overrides.items()]
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in ov))
    (path / ".hydra" / "hydra.yaml").write_text("hydra: {}\n")
    lines = []
    for step in (0, 50, 100):
        row = {"step": step, "tokens": step * 1000, "train_loss": 5.0, "lr": 1e-3,
               "grad_norm": 1.0, "tokens_per_s": 1e4, "elapsed_s": step * 0.1 + seed * 0.01}
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
        "tokens_per_s": 1e4, "seed": seed, "choices": choices, "overrides": ov,
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


def md_row(rank: str, option: str, n: str, vals: list[float]) -> str:
    return (f"| {rank} | `{option}` | {n} | {statistics.mean(vals):.4f} ± "
            f"{statistics.stdev(vals):.4f} | {statistics.stdev(vals):.4f} | {min(vals):.4f} | "
            f"{max(vals):.4f} | 1,000,000 | 500,000 | 6e+06 | 10,000 |")


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
    curves = load_curves(sweep)
    assert len(curves) == 8 * 3 + 2  # truncated last line skipped
    assert set(curves["run"]) == {str(i) for i in range(9)}


def test_report_files_and_results_csv(sweep: Path, report: Path) -> None:
    out = report
    assert out == sweep / "report"
    for name in ("results.csv", "report.md", "loss_curves.png", "final_loss.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    for name in ("loss_curves.png", "final_loss.png"):
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
    assert "(mean_2nd - mean_1st) > max(std_1st, std_2nd)" in md
    assert "Jobs expected from multirun.yaml: 10, run dirs found: 9 — **1 missing**" in md
    # Ranked best first; rms: 3 of 5 runs completed (1 failed, 1 running), ln: 3 of 4.
    rms = md_row("1", "rms", "3/5", RMS)
    ln = md_row("2", "ln", "3/4", LN)
    assert rms in md and ln in md and md.index(rms) < md.index(ln)
    assert "1 failed, 1 running |" in md[md.index(rms):] and "1 diverged |" in md[md.index(ln):]
    margin = statistics.mean(LN) - statistics.mean(RMS)
    noise = max(statistics.stdev(RMS), statistics.stdev(LN))
    assert (f"**Winner: `rms`** — margin {margin:.4f} in final_val_loss over runner-up `ln` vs "
            f"max seed std {noise:.4f}: **exceeds seed noise**.") in md
    section = md[md.index("## Runs not in the means"):]
    assert "| `6` | diverged | ln | 3 | loss is NaN at step 120 |" in section
    assert "| `7` | failed | rms | 4 | CUDA out of memory |" in section
    assert "| `8` | running | rms | 5 | no summary.json" in section
    assert "⚠" not in md  # all options have the same size


def test_within_noise_and_no_spread(tmp_path: Path) -> None:
    noisy = tmp_path / "noisy"
    rms, ln = [3.00, 3.20, 3.10], [3.05, 3.25, 3.15]
    for i, (norm, losses) in enumerate((("rms", rms), ("ln", ln))):
        for seed, loss in enumerate(losses):
            make_run(noisy / f"{i}{seed}", {"norm": norm, "train.seed": str(seed)}, loss)
    md = (build_report(noisy) / "report.md").read_text()
    assert "**Winner: `rms`**" in md and "**within noise**" in md

    single = tmp_path / "single"
    make_run(single / "0", {"norm": "rms"}, 3.0)
    make_run(single / "1", {"norm": "ln"}, 3.2, params=1_100_000)
    md = (build_report(single) / "report.md").read_text()
    assert "**Winner: `rms`**" in md and "**no seed spread available**" in md
    assert "1,100,000 ⚠" in md  # 10 % more parameters than the smallest option


def test_diverged_option_ranks_last(tmp_path: Path) -> None:
    root = tmp_path / "s"
    for seed in range(2):
        make_run(root / f"a{seed}", {"optim.lr": "0.001", "train.seed": str(seed)}, 3.5 + seed / 10)
        make_run(root / f"b{seed}", {"optim.lr": "0.01", "train.seed": str(seed)}, 3.0 + seed / 10)
    make_run(root / "b2", {"optim.lr": "0.01", "train.seed": "2"}, None, status="diverged",
             error="loss spike")
    md = (build_report(root) / "report.md").read_text()
    assert "**Winner: `0.001`**" in md
    assert ("`0.01` has the lower mean over its completed runs but ranks below because 1 of its "
            "runs diverged") in md


def test_bpb_when_tokenizers_differ(tmp_path: Path) -> None:
    root = tmp_path / "tok"
    for seed in range(2):
        # Per-token loss favours byte (fewer classes) but bits per byte favours bpe.
        make_run(root / f"bpe{seed}", {"tokenizer": "bpe", "train.seed": str(seed)}, 3.0,
                 bpb=1.20 + seed / 100)
        make_run(root / f"byte{seed}", {"tokenizer": "byte", "train.seed": str(seed)}, 1.0,
                 bpb=1.40 + seed / 100, vocab=257)
    md = (build_report(root) / "report.md").read_text()
    assert "Metric: `val_bpb`" in md and "different tokenizers (bpe, byte)" in md
    assert "**Winner: `bpe`** — margin 0.2000 in val_bpb" in md


def test_two_axes(tmp_path: Path) -> None:
    root = tmp_path / "grid"
    for norm in ("rms", "ln"):
        for pos in ("rope", "learned"):
            for seed in range(2):
                loss = 3.0 + (norm == "ln") * 0.3 + (pos == "learned") * 0.1 + seed * 0.01
                make_run(root / f"{norm}-{pos}" / str(seed),  # nested subdirs
                         {"norm": norm, "pos": pos, "train.seed": str(seed)}, loss)
    df = load_results(root)
    assert swept_axes(df) == ["norm", "pos"]
    md = (build_report(root) / "report.md").read_text()
    assert "## Axis `norm`" in md and "## Axis `pos`" in md
    assert "## Per configuration" in md and "**Winner: `norm=rms, pos=rope`**" in md
    # pos: std over all runs of an option (0.17) mixes in the norm effect; the verdict uses the
    # seed std with norm held fixed (pooled: 0.0071), so the 0.1 margin beats seed noise.
    pos = md[md.index("## Axis `pos`"):md.index("## Per configuration")]
    assert "max seed std 0.0071: **exceeds seed noise**" in pos


def test_cli(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "analysis.report"]
    sweep = tmp_path / "cli"
    make_run(sweep / "0", {"norm": "rms"}, 3.0)
    make_run(sweep / "1", {"norm": "ln"}, 3.1)
    done = subprocess.run([*cmd, str(sweep)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert done.stdout.startswith(f"report: {sweep / 'report'}\n")
    assert "# Sweep report" in done.stdout and "**Winner: `rms`**" in done.stdout
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
    assert "- Runs: 1 (1 completed)" in md and "| 1 | `all runs` | 1/1 | 3.0000 ± – |" in md
    assert find_runs(run) == [run]
    assert "sweep report:" in capsys.readouterr().out
    missing = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "x")}}})
    SweepReport().on_multirun_end(missing)  # no runs there: printed, not raised
    assert "could not build the sweep report" in capsys.readouterr().out


def test_expected_jobs(sweep: Path) -> None:
    assert expected_jobs(sweep) == 10
