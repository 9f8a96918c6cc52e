"""Entry point: `python ablate/run.py [group=option ...] [key=value ...] [-m]`.

Composes conf/config.yaml with the command line (Hydra), then trains one model per job.
Heavy modules (torch) are imported inside the job, so `--cfg job` and `--help` stay fast.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project root importable, not ablate/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import ablate.config  # noqa: E402,F401  (registers the schema in Hydra's ConfigStore)

CONF = Path(__file__).resolve().parents[1] / "conf"


def refuse_unknown_options(argv: list[str]) -> None:
    """`group=option` naming no conf/group/option.yaml: one clear line instead of Hydra's search-path dump.

    Comma lists (multirun sweeps) are checked item by item; sweep functions (range(...), choice(...))
    are left to Hydra.
    """
    for arg in argv:
        key, sep, value = arg.partition("=")
        group = key.lstrip("+~")
        if arg.startswith("-") or not sep or "(" in value or group.startswith("hydra/") or not (CONF / group).is_dir():
            continue  # hydra/* groups also come from installed plugins: Hydra checks those
        valid = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        for option in value.split(","):
            if option not in valid:
                print(f"ablate: refused before training: {group}={option} is not an option of the config "
                      f"group `{group}`. Valid choices: {', '.join(valid)} (one YAML file each in "
                      f"conf/{group}/). Nothing was trained.", file=sys.stderr)
                sys.exit(2)


JOBS_STARTED = []  # Hydra exits 1 also for a config it cannot compose; before any job that is a refusal (2)


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from ablate.job import run_job

    JOBS_STARTED.append(True)
    return run_job(cfg)


if __name__ == "__main__":
    refuse_unknown_options(sys.argv[1:])
    try:
        main()
    except SystemExit as stop:  # e.g. optim.lr=abc: Hydra has printed key, value and type; nothing ran
        if stop.code == 1 and not JOBS_STARTED:
            print("ablate: refused before training: the settings above do not compose. Nothing was trained.",
                  file=sys.stderr)
            sys.exit(2)
        raise
