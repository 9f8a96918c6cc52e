"""`python -m analysis.notebook DIR`, the README's notebook command: an executed copy next to the report."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat

from tests.test_report import LN, PNG_MAGIC, REPO, RMS, make_run

NOTEBOOK = REPO / "analysis" / "compare.ipynb"


def notebook_command(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
           "IPYTHONDIR": str(tmp_path / "ipython"), "ABLATE_SWEEP_DIR": "/nonexistent/must-be-replaced"}
    return subprocess.run([sys.executable, "-m", "analysis.notebook", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_command_leaves_an_executed_copy_next_to_the_report(tmp_path):
    import base64

    sweep = tmp_path / "multirun" / "2026-11-25" / "10-00-00"
    for i, (norm, losses) in enumerate((("rms", RMS), ("ln", LN))):
        for seed, loss in enumerate(losses):
            make_run(sweep / f"{i}{seed}", {"norm": norm, "train.seed": str(seed)}, loss)
    source_before = NOTEBOOK.read_bytes()

    result = notebook_command(str(sweep), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    executed = sweep / "report" / "compare.ipynb"
    assert f"executed notebook: {executed}" in result.stdout and f"jupyter lab {executed}" in result.stdout
    nb = nbformat.read(executed, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code_cells)  # every cell ran, in order
    outputs = [o for c in code_cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"sweep: {sweep.resolve()}" in text  # the command's directory, not the inherited variable
    assert "6 runs" in text and "swept axes: ['norm']" in text
    pngs = [base64.b64decode(o.data["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    assert pngs and all(p.startswith(PNG_MAGIC) for p in pngs)
    assert NOTEBOOK.read_bytes() == source_before  # the committed notebook stays clean
    assert not list((sweep / "report").glob(".*.tmp"))


def test_a_missing_directory_is_refused_with_the_reason(tmp_path):
    result = notebook_command(str(tmp_path / "no-such-sweep"), tmp_path=tmp_path)
    assert result.returncode == 2
    assert "no-such-sweep is not a directory" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "no-such-sweep").exists()
