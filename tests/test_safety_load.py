"""Class 1 of issue #11: nothing loaded from disk executes code.

Every checkpoint is read with torch.load(weights_only=True). The malicious file here is armed: loaded
the old way (weights_only=False) it creates a marker file, which the first test proves; every way
ablate reads a checkpoint must refuse it, name the file, and leave the marker uncreated.
"""
from __future__ import annotations

import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from ablate import load_run
from ablate.rundir.checkpoint import CHECKPOINT, CheckpointError
from tests.safety_common import FAST, SHORT, assert_refused, cli, snapshot


class Armed:
    """Unpickling this calls open(marker, "w"): the marker file appears iff code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    result = cli(*FAST, *SHORT, f"hydra.run.dir={root / 'run'}", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "run"


def armed_copy(trained, tmp_path, raw_pickle: bool = False):
    """A copy of the trained run whose checkpoint would create tmp_path/PWNED if loaded unsafely."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    marker = tmp_path / "PWNED"
    path = run / CHECKPOINT
    state = torch.load(path, weights_only=True)
    state["model"]["extra"] = Armed(marker)
    if raw_pickle:  # not torch's zip format: a plain pickle stream
        path.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, path)
    return run, marker


def test_the_armed_checkpoint_really_runs_code_when_loaded_unsafely(trained, tmp_path):
    run, marker = armed_copy(trained, tmp_path)
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(run / CHECKPOINT)!r}, weights_only=False)"],
                   check=True, capture_output=True)
    assert marker.exists()  # so the tests below, where it stays absent, can fail


def test_resume_refuses_a_malicious_checkpoint_naming_it(trained, tmp_path):
    run, marker = armed_copy(trained, tmp_path)
    before = snapshot(run)
    result = cli(*FAST, *SHORT, f"hydra.run.dir={run}", cwd=tmp_path)
    assert_refused(result, str(run / CHECKPOINT), "run code", "Nothing from it was executed")
    assert not marker.exists()
    assert snapshot(run) == before


def test_load_run_refuses_a_malicious_checkpoint(trained, tmp_path):
    run, marker = armed_copy(trained, tmp_path)
    with pytest.raises(CheckpointError, match="run code stored in the file") as error:
        load_run(run)
    assert str(run / CHECKPOINT) in str(error.value)
    assert not marker.exists()


def test_export_hf_refuses_a_malicious_checkpoint_and_writes_nothing(trained, tmp_path):
    run, marker = armed_copy(trained, tmp_path)
    before = snapshot(run)
    result = cli(str(run), str(tmp_path / "export"), cwd=tmp_path, module="ablate.export_hf")
    if "transformers" in result.stderr and "pip install" in result.stderr:
        pytest.skip("transformers is not installed: export_hf stops before reading the checkpoint")
    assert_refused(result, str(run / CHECKPOINT), "Nothing was written")
    assert not marker.exists() and not (tmp_path / "export").exists()
    assert snapshot(run) == before


def test_a_raw_pickle_checkpoint_is_refused_as_not_a_checkpoint(trained, tmp_path):
    run, marker = armed_copy(trained, tmp_path, raw_pickle=True)
    before = snapshot(run)
    result = cli(*FAST, *SHORT, f"hydra.run.dir={run}", cwd=tmp_path)
    assert_refused(result, str(run / CHECKPOINT), "not a checkpoint")
    assert not marker.exists()
    assert snapshot(run) == before


def test_checkpoints_hold_plain_data_only(trained):
    state = torch.load(trained / CHECKPOINT, weights_only=True)  # would raise on any pickled object
    assert isinstance(state["torch_rng"], torch.Tensor)
    numpy_state = state["rng"]
    assert numpy_state["bit_generator"] == "PCG64"
    assert all(isinstance(v, int) for v in numpy_state["state"].values())
    assert {"seed", "corpus_fingerprint", "tokenizer_fingerprint", "format"} <= state.keys()
