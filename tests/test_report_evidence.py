"""Result files as evidence (issue 26): a result file cut short, of the wrong JSON type, or written by
another version gives a report all the same, names the file and what is wrong with it, and shows its
run as `unreadable` (never as running) where its summary cannot be trusted; the sweep directory is left
byte for byte as it was."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from analysis import build_report
from tests.safety_common import snapshot
from tests.test_report import REPO, make_run

RMS = [3.00, 3.12, 3.05]
LN = [3.40, 3.47, 3.52]
DAMAGED = "1"  # the rms run of seed 1 is the one each case damages


def sweep_of(root: Path) -> Path:
    """norm in {rms, ln} x seeds 0-2, with job numbers as Hydra gives them (0-2 rms, 3-5 ln)."""
    for job, (norm, seed, loss) in enumerate([("rms", s, x) for s, x in enumerate(RMS)] +
                                             [("ln", s, x) for s, x in enumerate(LN)]):
        make_run(root / str(job), {"norm": norm, "train.seed": str(seed)}, loss)
    return root


def edit_summary(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        summary = json.loads((run / "summary.json").read_text())
        change(summary)
        (run / "summary.json").write_text(json.dumps(summary))
    return edit


def cut(name: str, keep: float = 0.5) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[:int(len(data) * keep)])
    return edit


def write(name: str, text: str | bytes) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        (run / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return edit


def report_of(sweep: Path, plots: bool = False) -> tuple[str, dict[str, dict[str, str]], list[dict[str, str]]]:
    """(report.md, results.csv rows by run, comparisons.csv rows), with the sweep's own files unchanged."""
    before = snapshot(sweep)
    out = build_report(sweep, plots=plots)
    after = {k: v for k, v in snapshot(sweep).items() if not k.startswith("report/")}
    assert after == {k: v for k, v in before.items() if not k.startswith("report/")}
    results = {r["run"]: r for r in csv.DictReader(open(out / "results.csv"))}
    return (out / "report.md").read_text(), results, list(csv.DictReader(open(out / "comparisons.csv")))


def problem_rows(md: str) -> dict[str, str]:
    """The 'Damaged or foreign result files' table: file -> its problem and what the report did."""
    if "## Damaged or foreign result files" not in md:
        return {}
    section = md.split("## Damaged or foreign result files", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines()[4:]:
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = rows.get(cells[0].strip("`"), "") + " ".join(cells[1:]) + " "
    return rows


def not_in_means(md: str) -> dict[str, list[str]]:
    section = md.split("## Runs not in the means", 1)[1].split("\n## ", 1)[0]
    return {line.split(" | ")[0].strip("| `"): [c.strip() for c in line.strip("|").split(" | ")]
            for line in section.splitlines() if line.startswith("| `")}


def assert_rest_compared(comparisons: list[dict[str, str]], n_rms: int) -> None:
    """The other runs still give the verdict: ln against the rms runs that remain (all, or all but seed 1)."""
    [row] = comparisons
    assert (row["option"], row["baseline"], int(row["n"]), int(row["n_baseline"])) == ("ln", "rms", 3, n_rms)
    rms = RMS if n_rms == 3 else [RMS[0], RMS[2]]
    assert float(row["diff_mean"]) == pytest.approx(sum(LN) / 3 - sum(rms) / n_rms)


UNREADABLE_SUMMARIES = {
    "cut-short": (cut("summary.json"), "is cut short"),
    "empty": (write("summary.json", ""), "is empty (0 bytes)"),
    "not-json": (write("summary.json", "status: completed\nfinal_val_loss: 3.1\n"), "is not JSON"),
    "binary": (write("summary.json", b"\x89PNG\r\n\x1a\n\xff\xfe"), "is not UTF-8"),
    "a-list": (write("summary.json", "[3.12, 3.05]"), "holds a list, not a JSON object"),
    "a-string": (write("summary.json", '"completed"'), "holds a string, not a JSON object"),
    "no-status": (edit_summary(lambda s: s.pop("status")), "has no `status`"),
    "unknown-status": (edit_summary(lambda s: s.update(status="finished")), 'has `status` "finished"'),
    "string-for-number": (edit_summary(lambda s: s.update(final_val_loss="3.12")),
                          '`final_val_loss` is a string ("3.12")'),
    "list-for-choices": (edit_summary(lambda s: s.update(choices=["rms"])), "`choices` is a list"),
    "number-for-text": (edit_summary(lambda s: s.update(error=7)), "`error` is a number (7)"),
}


@pytest.mark.parametrize("damage,words", UNREADABLE_SUMMARIES.values(), ids=UNREADABLE_SUMMARIES.keys())
def test_a_damaged_summary_is_named_and_its_run_unreadable_never_running(tmp_path, damage, words):
    sweep = sweep_of(tmp_path / "sweep")
    damage(sweep / DAMAGED)
    md, results, comparisons = report_of(sweep)
    assert results[DAMAGED]["status"] == "unreadable" and words in results[DAMAGED]["error"]
    assert {r["status"] for run, r in results.items() if run != DAMAGED} == {"completed"}
    assert problem_rows(md) == {f"{DAMAGED}/summary.json": problem_rows(md)[f"{DAMAGED}/summary.json"]}
    assert words in problem_rows(md)[f"{DAMAGED}/summary.json"]
    row = not_in_means(md)[DAMAGED]
    assert row[1] == "unreadable" and words in row[-1] and "not a running job" in row[-1]
    assert "running" not in md.replace("not a running job", "")
    assert "- Runs: 6 (5 completed, 1 unreadable)" in md
    assert "**1 result file not read as written**" in md
    assert_rest_compared(comparisons, n_rms=2)


DERIVED = {
    "did_not_learn": True,                 # the crash: 'cannot insert did_not_learn, already exists'
    "tokens_per_s_reliable": False,
    "stage": "tune",                       # would take the run out of the verdict
    "run": "elsewhere/7",
    "model.d_model": 4096,
    "_config": {"norm": {"name": "ln"}},
    "choice.norm": "ln",
    "norm": "ln",                          # the run's own override says rms
}


def test_fields_the_report_derives_are_recomputed_and_win_with_a_note(tmp_path):
    sweep = sweep_of(tmp_path / "sweep")
    edit_summary(lambda s: s.update(DERIVED))(sweep / DAMAGED)
    md, results, comparisons = report_of(sweep)
    row = results[DAMAGED]
    assert (row["run"], row["status"], row["did_not_learn"], row["stage"], row["norm"]) == (
        DAMAGED, "completed", "False", "verdict", "rms")
    assert row["choice.norm"] == "rms" and row["model.d_model"] == "" and row["tokens_per_s_reliable"] == ""
    note = problem_rows(md)[f"{DAMAGED}/summary.json"]
    assert all(f"`{name}`" in note for name in DERIVED) and "recomputed" in note
    assert_rest_compared(comparisons, n_rms=3)  # the run counts, as what its files show


def test_the_command_line_gives_the_report_of_a_summary_carrying_did_not_learn(tmp_path):
    sweep = sweep_of(tmp_path / "sweep")
    edit_summary(lambda s: s.update(did_not_learn=False))(sweep / "0")
    done = subprocess.run([sys.executable, "-m", "analysis.report", str(sweep), "--no-plots"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert "`0/summary.json` | carries `did_not_learn`" in done.stdout


def test_another_versions_fields_extra_or_missing_give_a_report(tmp_path):
    sweep = sweep_of(tmp_path / "sweep")
    edit_summary(lambda s: s.update(loss_spikes=3, notes={"by": "me"}))(sweep / "0")
    write("summary.json", '{"status": "completed", "seed": 1}')(sweep / DAMAGED)  # an old, thin record
    md, results, comparisons = report_of(sweep)
    assert float(results["0"]["loss_spikes"]) == 3 and results["0"]["status"] == "completed"
    assert "`loss_spikes`, `notes`" in problem_rows(md)["0/summary.json"]
    assert "kept as columns of results.csv" in problem_rows(md)["0/summary.json"]
    assert results[DAMAGED]["status"] == "completed" and not_in_means(md)[DAMAGED][-1] == (
        "no final_val_loss recorded")
    assert_rest_compared(comparisons, n_rms=2)


OTHER_FILES = {
    "metrics-cut-short": (cut("metrics.jsonl", 0.9), "metrics.jsonl", "line 3 not JSON (cut short"),
    "metrics-list-line": (write("metrics.jsonl", '{"step": 0, "val_loss": 5.0}\n[1, 2]\n'), "metrics.jsonl",
                          "line 2 (a list) not a JSON object"),
    "metrics-string-value": (write("metrics.jsonl", '{"step": 0, "val_loss": "low"}\n'), "metrics.jsonl",
                             'line 1 `val_loss` is a string ("low")'),
    "config-cut-short": (write(".hydra/config.yaml", "norm:\n  name: [rms\n"), ".hydra/config.yaml",
                         "is not YAML"),
    "config-a-list": (write(".hydra/config.yaml", "- norm\n- rms\n"), ".hydra/config.yaml", "is not a mapping"),
    "overrides-a-mapping": (write(".hydra/overrides.yaml", "norm: rms\n"), ".hydra/overrides.yaml",
                            "is not a list of overrides"),
}


@pytest.mark.parametrize("damage,name,words", OTHER_FILES.values(), ids=OTHER_FILES.keys())
def test_other_damaged_run_files_are_named_and_the_run_still_counts(tmp_path, damage, name, words):
    sweep = sweep_of(tmp_path / "sweep")
    damage(sweep / DAMAGED)
    md, results, comparisons = report_of(sweep, plots=name == "metrics.jsonl")  # curves drawn from what remains
    assert words in problem_rows(md)[f"{DAMAGED}/{name}"]
    assert results[DAMAGED]["status"] == "completed"  # its summary.json is intact: the result stands
    assert_rest_compared(comparisons, n_rms=3)


def test_a_running_jobs_half_written_last_line_is_no_problem(tmp_path):
    sweep = sweep_of(tmp_path / "sweep")
    make_run(sweep / "6", {"norm": "rms", "train.seed": "5"}, 2.9, status=None, partial=True)
    md, results, _ = report_of(sweep)
    assert results["6"]["status"] == "running" and "still running" in not_in_means(md)["6"][-1]
    assert problem_rows(md) == {} and "not read as written" not in md


SWEEP_FILES = {
    "tuning-cut-short": ("tuning.json", '{"choices": [{"variant": "rms", "ext', "is cut short"),
    "tuning-wrong-type": ("tuning.json", '{"n_extension_runs": "two"}', "`n_extension_runs` is a whole number"),
    "precision-a-list": ("precision.json", '["bf16"]', "`name` fp32 or bf16"),
    "precision-unknown-dtype": ("precision.json", '{"name": "fp8", "reason": "fast"}', "`name` fp32 or bf16"),
}


@pytest.mark.parametrize("name,text,words", SWEEP_FILES.values(), ids=SWEEP_FILES.keys())
def test_a_damaged_sweep_record_is_named(tmp_path, name, text, words):
    sweep = sweep_of(tmp_path / "sweep")
    (sweep / name).write_text(text)
    md, results, comparisons = report_of(sweep)
    assert words in problem_rows(md)[name]
    assert {r["status"] for r in results.values()} == {"completed"}
    assert_rest_compared(comparisons, n_rms=3)


def test_many_damaged_files_at_once_give_the_whole_report_with_figures(tmp_path):
    sweep = sweep_of(tmp_path / "sweep")
    for damage, _ in list(UNREADABLE_SUMMARIES.values())[:2]:
        damage(sweep / "0")
        damage(sweep / "4")
    cut("metrics.jsonl")(sweep / "2")
    (sweep / "tuning.json").write_text("[]")
    md, results, comparisons = report_of(sweep, plots=True)
    assert [results[r]["status"] for r in "012345"] == ["unreadable", "completed", "completed", "completed",
                                                       "unreadable", "completed"]
    assert set(problem_rows(md)) == {"0/summary.json", "4/summary.json", "2/metrics.jsonl", "tuning.json"}
    assert "![" in md and all((sweep / "report" / n).stat().st_size > 0 for n in ("differences.png",
                                                                                 "loss_curves.png"))
    [row] = comparisons
    assert (int(row["n"]), int(row["n_baseline"])) == (2, 2)
