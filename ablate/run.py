"""Entry point: `python ablate/run.py [group=option ...] [key=value ...] [-m]` (`--help` explains all).

Composes conf/config.yaml with the command line (Hydra), then trains one model per job.
Heavy modules (torch) are imported inside the job, so `--cfg job` and `--help` stay fast.
Flags such as `-m` may stand anywhere on the line (ablate.cli.argv moves them before the overrides).
"""
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project root importable, not ablate/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import ablate.config.schema  # noqa: E402,F401  (registers the schema in Hydra's ConfigStore)
from ablate.cli import help_page  # noqa: E402
from ablate.training import feedback  # noqa: E402
from ablate.cli.argv import flags_first, refuse_foreign_knobs, refuse_unknown_options  # noqa: E402,F401  (re-exported)

help_page.register()  # the ${ablate_help:...} resolver of conf/hydra/help/ablate.yaml


JOBS_STARTED = []  # Hydra exits 1 also for a config it cannot compose; before any job that is a refusal (2)


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig, deferral: Any = None) -> float:
    """One job (ablate.cli.job.run_job). `deferral`: an ablate.cli.job.Deferral, passed by hydra/launcher=batched,
    which trains the jobs it accepts together afterwards."""
    feedback.mark_job_start()
    from ablate.cli.job import run_job  # torch and the training code: only once a job runs, not for --help

    JOBS_STARTED.append(True)
    return run_job(cfg, deferral)


def cli() -> None:
    """`python ablate/run.py ...` and the `ablate ...` console script (pyproject's [project.scripts])."""
    sys.argv[1:] = flags_first(sys.argv[1:])
    refuse_unknown_options(sys.argv[1:])
    refuse_foreign_knobs(sys.argv[1:])
    try:
        main()
    except SystemExit as stop:  # e.g. optim.lr=abc: Hydra has printed key, value and type; nothing ran
        if stop.code == 1 and not JOBS_STARTED:
            print("ablate: refused before training: the settings above do not compose. Nothing was trained.",
                  file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    cli()
