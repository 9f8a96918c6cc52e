"""analysis/compare.ipynb runs headless on a hand-made sweep and shows the report's numbers."""
from __future__ import annotations

import base64
import statistics
import sys
from pathlib import Path

import nbclient  # the dev extra (pip install -e .[dev]) brings nbclient, nbformat, ipykernel
import nbformat
import pytest

from tests.test_report import LN, PNG_MAGIC, REPO, RMS, make_run

NOTEBOOK = REPO / "analysis" / "compare.ipynb"


def kernel_manager(tmp_path: Path):
    """A `python3` kernel that runs on this very interpreter (sys.executable), whatever
    kernelspecs are (or are not) installed: a fresh CI environment only has ipykernel's
    package, whose own spec starts whichever `python` is first on PATH."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    kernels = tmp_path / "kernels"
    write_kernel_spec(kernels / "python3")
    specs = KernelSpecManager(kernel_dirs=[str(kernels)])
    assert specs.get_kernel_spec("python3").argv[0] == sys.executable
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def outputs(nb) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def text_of(out: dict) -> str:
    if out.get("output_type") == "stream":
        return out.get("text", "")
    data = out.get("data", {})
    return "\n".join(str(data.get(kind, "")) for kind in ("text/plain", "text/html",
                                                         "text/markdown"))


def test_notebook_is_clean_and_parameterised() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert not outputs(nb), "commit the notebook without outputs"
    [params] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert "SWEEP_DIR" in params.source and "ABLATE_SWEEP_DIR" in params.source
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for name in ("load_results", "load_curves", "swept_axes", "gather", "comparisons_frame", "ranked_frame",
                 "differences_figure", "plots.loss_curves_figure", "plots.final_figure",
                 "plots.throughput_figure"):
        assert name in code
    assert "torch" not in code and "from ablate" not in code and "import ablate" not in code


def test_notebook_runs_on_a_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = tmp_path / "multirun" / "2026-11-25" / "10-00-00"
    for i, (norm, losses) in enumerate((("rms", RMS), ("ln", LN))):
        for seed, loss in enumerate(losses):
            make_run(sweep / f"{i}{seed}", {"norm": norm, "train.seed": str(seed)}, loss)
    make_run(sweep / "failed", {"norm": "ln", "train.seed": "3"}, None, status="failed",
             error="CUDA out of memory")
    make_run(sweep / "running", {"norm": "rms", "train.seed": "4"}, 2.9, status=None,
             partial=True)
    monkeypatch.setenv("ABLATE_SWEEP_DIR", str(sweep))
    # Connection files and IPython's profile in tmp: works where HOME is read-only too.
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, startup_timeout=120, kernel_name="python3",
        # Run where Jupyter runs a notebook: in its own folder (it finds the repository above).
        km=kernel_manager(tmp_path), resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the traceback, if any cell fails

    outs = outputs(nb)
    assert not [o for o in outs if o.output_type == "error"]
    text = "\n".join(map(text_of, outs))
    assert f"sweep: {sweep.resolve()}" in text  # the environment variable was used
    assert "8 runs" in text and "swept axes: ['norm']" in text
    # The verdict (ln vs the default rms, paired over seeds 0-2) and the numeric per-option tables:
    # means as numbers, the CI bounds in their own columns.
    assert "`norm`: `rms`" in text and "worse" in text and "Winner" not in text
    tables = [o.data["text/html"] for o in outs if "text/html" in o.get("data", {})]
    per_option = next(t for t in tables if "ci_low" in t and "final_val_loss mean" in t)
    for value in (statistics.mean(RMS), statistics.mean(LN)):
        assert f"<td>{value:g}</td>" in per_option
    assert "±" not in per_option
    pngs = [base64.b64decode(o.data["image/png"]) for o in outs if "image/png" in o.get("data", {})]
    assert len(pngs) == 4 and all(p.startswith(PNG_MAGIC) for p in pngs)
