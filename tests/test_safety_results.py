"""Class 2 of issue #11: a result, once written, is never overwritten or lost (locks, sweeps, resume).

Every case runs the real command line or API and compares every pre-existing file byte for byte.
Crashes (SIGKILL, a full disk) are in test_safety_crash.py.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from ablate.config.validate import ConfigError
from ablate.data.tokenizers import BPETokenizer
from ablate.training.loop import train
from tests.conftest import POEMS, ROOT, TINY, compose
from tests.safety_common import FAST, RUN, SHORT, assert_refused, cli, snapshot


# -- one process per run directory --------------------------------------------------------------------
def test_a_second_process_into_a_busy_run_directory_stops_at_once(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([*RUN, *FAST, "train.max_steps=100000", "train.eval_interval=100000",
                              "train.log_interval=1", f"hydra.run.dir={run}"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((run / "metrics.jsonl").exists() and
                                              (run / "metrics.jsonl").read_text().count("\n") >= 2):
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[1][-2000:]
        config_before = (run / ".hydra" / "config.yaml").read_bytes()
        # a double-launched job (another seed, so any write of it would show) ...
        second = cli(*FAST, "train.max_steps=3", "train.seed=7", f"hydra.run.dir={run}", cwd=tmp_path)
        assert_refused(second, "in use by another ablate process", str(run), "Nothing was written")
        # ... and a sweep whose jobs land in the same directory
        sweep = cli("-m", *FAST, "train.max_steps=3", "train.seed=3,4", f"hydra.sweep.dir={tmp_path}",
                    "hydra.sweep.subdir=run", cwd=tmp_path)
        assert_refused(sweep, "in use by another ablate process")
        assert first.poll() is None  # the first process trains on, undisturbed
        assert (run / ".hydra" / "config.yaml").read_bytes() == config_before
        assert not (run / "summary.json").exists()
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["seed"] == 0  # the first run's own record


# -- sweeps landing on finished runs --------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    result = cli("-m", "norm=rms,ln", *FAST, *SHORT, "hydra.sweep.dir=sweep", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def run_dirs(root):
    return {name: snapshot(root / "sweep" / name) for name in ("0", "1")}


def test_rerunning_a_sweep_skips_its_finished_jobs_and_changes_no_file(finished_sweep):
    before = run_dirs(finished_sweep)
    again = cli("-m", "norm=rms,ln", *FAST, *SHORT, "hydra.sweep.dir=sweep", cwd=finished_sweep)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already holds this run (completed") == 2 and "resumed" not in again.stdout
    assert run_dirs(finished_sweep) == before


@pytest.mark.parametrize("overrides,words", [
    (["ffn=gelu,relu"], ["different configuration", "ffn.name: checkpoint 'swiglu'"]),
    (["norm=rms,ln", "optim.lr=0.001"], ["completed run of a different configuration", "optim.lr"]),
    (["norm=rms,ln", "train.resume=never"], ["train.resume=never", "will not be overwritten"]),
], ids=["other-architecture", "other-learning-rate", "resume-never"])
def test_a_sweep_of_another_config_is_refused_in_its_own_log_never_in_the_finished_runs(finished_sweep, overrides,
                                                                                          words):
    before = run_dirs(finished_sweep)
    log = finished_sweep / "sweep" / "refused_jobs.jsonl"
    lines_before = log.read_text().splitlines() if log.exists() else []
    result = cli("-m", *overrides, *FAST, *SHORT, "hydra.sweep.dir=sweep", cwd=finished_sweep)
    assert result.returncode == 0, result.stderr[-3000:]  # the sweep goes on and reports
    assert "Traceback" not in result.stderr
    refusals = [json.loads(line) for line in log.read_text().splitlines()[len(lines_before):]]
    assert sorted(r["job"] for r in refusals) == [0, 1]
    for refusal in refusals:
        assert all(word in refusal["reason"] for word in words), refusal
    assert run_dirs(finished_sweep) == before  # summaries, .hydra/, metrics, checkpoints: byte-identical


# -- resume trains on what the checkpoint saw, or not at all ---------------------------------------------
def two_step_run(tmp_path, *overrides):
    run = tmp_path / "run"
    summary = train(compose(*TINY, "train.max_steps=2", "train.eval_interval=2", *overrides), run, progress=False)
    assert summary["status"] == "completed"
    return run


def test_resume_refuses_a_changed_corpus_naming_it(tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(POEMS, corpus)
    run = two_step_run(tmp_path, f"data.path={corpus}")
    before = snapshot(run)
    with (corpus / "sonnets.txt").open("a") as f:
        f.write("\nAnd one line more, that no checkpoint has seen.\n")
    with pytest.raises(ConfigError, match=r"trained on other data: the corpus \(content fingerprint"):
        train(compose(*TINY, "train.max_steps=4", "train.eval_interval=2", f"data.path={corpus}"), run,
              progress=False)
    assert snapshot(run) == before


def test_resume_refuses_a_changed_tokenizer_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    run = two_step_run(tmp_path)
    before = snapshot(run)
    [cached] = (tmp_path / "cache" / "tokenizers").glob("*.json")
    other = BPETokenizer.train([(POEMS / "sonnets.txt").read_text()], 400)  # other merges, same settings
    assert other.fingerprint() != BPETokenizer.load(cached).fingerprint()
    other.save(cached)
    with pytest.raises(ConfigError, match=r"the tokenizer \(hash of its merges"):
        train(compose(*TINY, "train.max_steps=4", "train.eval_interval=2"), run, progress=False)
    assert snapshot(run) == before


def test_resume_refuses_a_changed_seed_naming_it(tmp_path):
    run = two_step_run(tmp_path)
    before = snapshot(run)
    with pytest.raises(ConfigError, match=r"train.seed: checkpoint 0, now 1"):
        train(compose(*TINY, "train.max_steps=4", "train.eval_interval=2", "train.seed=1"), run, progress=False)
    assert snapshot(run) == before
    longer = train(compose(*TINY, "train.max_steps=4", "train.eval_interval=2"), run, progress=False)
    assert longer["steps"] == 4 and longer["seed"] == 0  # the same seed extends it, and the summary says so


def test_an_unfinished_run_is_continued_only_with_its_own_settings(tmp_path):
    run = two_step_run(tmp_path)
    (run / "summary.json").unlink()  # as a kill after the checkpoint leaves it
    before = snapshot(run)
    with pytest.raises(ConfigError, match=r"unfinished run .*optim.lr: checkpoint 0.003, now 0.001.*mix two"):
        train(compose(*TINY, "train.max_steps=4", "train.eval_interval=2", "optim.lr=1e-3"), run, progress=False)
    assert snapshot(run) == before
    resumed = train(compose(*TINY, "train.max_steps=4", "train.eval_interval=2"), run, progress=False)
    assert resumed["status"] == "completed" and resumed["steps"] == 4


@pytest.mark.parametrize("name,content", [("summary.json", '{"accuracy": 0.93}\n'),
                                          ("metrics.jsonl", "epoch,loss\n1,0.5\n"),
                                          ("samples.txt", "my notes\n")])
def test_a_directory_holding_someone_elses_files_is_refused(tmp_path, name, content):
    run = tmp_path / "theirs"
    run.mkdir()
    (run / name).write_text(content)
    with pytest.raises(ConfigError, match=f"holds a {name}, not written by an ablate run"):
        train(compose(*TINY, "train.max_steps=2", "train.eval_interval=2"), run, progress=False)
    assert snapshot(run) == {name: snapshot(run)[name]} and (run / name).read_text() == content


# -- the files themselves -------------------------------------------------------------------------------
def test_result_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        result = cli(*FAST, *SHORT, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr[-2000:]
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != ".lock"]
    assert {"summary.json", "tokenizer.json", "metrics.jsonl", "latest.pt", "config.yaml"} <= {p.name for p in files}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o644" for p in files}


@pytest.fixture(scope="module")
def exportable(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    result = cli(*FAST, "train.max_steps=2", "train.eval_interval=2", f"hydra.run.dir={root / 'run'}", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "run"


@pytest.mark.parametrize("where,words", [
    ("run", ["is the run directory itself"]),
    ("run/hf", ["inside the run directory"]),
    (".", ["contains the run directory"]),
    ("full", ["is not empty", "--force"]),
])
def test_export_hf_never_writes_into_or_over_what_exists(exportable, tmp_path, where, words):
    run = tmp_path / "run"
    shutil.copytree(exportable, run)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    out = tmp_path / where
    before = snapshot(tmp_path)
    result = cli(str(run), str(out), cwd=tmp_path, module="ablate.export_hf")
    assert_refused(result, *words, "Nothing was written")
    assert snapshot(tmp_path) == before
