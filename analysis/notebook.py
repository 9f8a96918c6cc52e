"""Run analysis/compare.ipynb on a sweep and keep the executed copy next to its report.

    python -m analysis.notebook multirun/DATE/TIME      # -> multirun/DATE/TIME/report/compare.ipynb

Needs the `notebook` extra (`pip install -e ".[notebook]"`: nbclient, ipykernel, and JupyterLab to
open the result with `jupyter lab multirun/DATE/TIME/report/compare.ipynb`). The kernel runs on this
very interpreter, whatever Jupyter kernels are (or are not) installed, so the notebook sees the same
packages as this command.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parent / "compare.ipynb"
EXIT_MISSING = 2


def kernel_manager(scratch: Path):
    """A `python3` kernel started with sys.executable, from a kernelspec written into `scratch`."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    kernels = scratch / "kernels"
    write_kernel_spec(kernels / "python3")
    return KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))


def execute(sweep: Path, out: Path, timeout_s: int = 600) -> Path:
    """Execute the notebook with ABLATE_SWEEP_DIR=sweep (the kernel in analysis/, as Jupyter would start
    it) and write the executed copy to `out` (replaced whole, never left half-written). A failing cell
    raises nbclient's CellExecutionError; the copy is then written with the error in it."""
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    previous = os.environ.get("ABLATE_SWEEP_DIR")
    os.environ["ABLATE_SWEEP_DIR"] = str(sweep.resolve())  # the kernel inherits it
    try:
        with tempfile.TemporaryDirectory(prefix="ablate-notebook-") as scratch:
            client = nbclient.NotebookClient(nb, timeout=timeout_s, startup_timeout=120, kernel_name="python3",
                                             km=kernel_manager(Path(scratch)),
                                             resources={"metadata": {"path": str(NOTEBOOK.parent)}})
            try:
                client.execute()
            finally:
                out.parent.mkdir(parents=True, exist_ok=True)
                partial = out.with_name(f".{out.name}.tmp")
                nbformat.write(nb, partial)
                os.replace(partial, out)
    finally:
        if previous is None:
            os.environ.pop("ABLATE_SWEEP_DIR", None)
        else:
            os.environ["ABLATE_SWEEP_DIR"] = previous
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.notebook", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a multirun directory (multirun/DATE/TIME) or a single run directory")
    parser.add_argument("--out", type=Path, help="where the executed copy goes (default: SWEEP/report/compare.ipynb)")
    args = parser.parse_args(argv)
    if not args.sweep.is_dir():
        print(f"analysis.notebook: {args.sweep} is not a directory: give a sweep directory such as "
              f"multirun/DATE/TIME.", file=sys.stderr)
        return EXIT_MISSING
    try:
        import ipykernel  # noqa: F401
        import nbclient  # noqa: F401
    except ImportError as error:
        print(f"analysis.notebook: {error.name} is missing; install the notebook extra: "
              f"pip install -e \".[notebook]\"", file=sys.stderr)
        return EXIT_MISSING
    from nbclient.exceptions import CellExecutionError

    out = args.out or args.sweep / "report" / "compare.ipynb"
    try:
        execute(args.sweep, out)
    except CellExecutionError as error:
        print(f"{error}\nanalysis.notebook: a cell failed; the executed copy with the error is in {out}",
              file=sys.stderr)
        return 1
    print(f"executed notebook: {out}\nopen it with: jupyter lab {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
