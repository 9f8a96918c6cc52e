"""Every command in README.md runs: here with tiny overrides, or in CI as written, or it is named below
as too expensive for a test, with the reason (and the test that covers it where there is one).

A command is a line of a ```bash block (continuation lines joined, the trailing comment dropped, `&&`
chains split). `python ablate/run.py ...` commands run by default: the tiny overrides below replace
the command's own values of the same keys (model size, steps, data) and `train.seed=0` keeps a
predefined sweep to one seed; `--cfg` and `--help` run exactly as written. Any other command must
be classified in CLASSIFIED, so a new README command fails here until someone decides how it is
checked. ```python blocks run (a block that opens with a `# path/file.py` comment is an excerpt of
a file and is only parsed); `DATE/TIME` paths become the run or sweep the README's own first
commands made.
"""
from __future__ import annotations

import ast
import csv
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ablate.cli import help_page
from tests.conftest import POEMS, ROOT

README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")

TINY = {"model": "micro", "data": "text", "data.path": str(POEMS), "tokenizer.vocab_size": "300",
        "logger": "none", "train.batch_size": "4", "train.eval_batches": "1", "train.sample_tokens": "5",
        "train.max_steps": "2", "train.eval_interval": "2"}


@dataclass(frozen=True)
class InCI:
    """Run by .ci/run exactly as written."""


@dataclass(frozen=True)
class Extra:
    """`pip install -e ".[NAME]"` of an extra that `.[dev]` (installed by CI) contains."""


@dataclass(frozen=True)
class NotRun:
    why: str
    covered_by: str | None = None  # "tests/test_x.py::test_name"


CLASSIFIED: dict[str, object] = {
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": NotRun(
        "PyTorch's CPU index is not reachable from CI's machines; the default-index line installs the "
        "same version there"),
    "pip install torch==2.13.0": InCI(),
    "pip install -e .": InCI(),
    "pip install -e \".[dev]\"": InCI(),
    "python -m pytest -q tests": InCI(),
    "pip install -e \".[hf]\"": Extra(),
    "pip install -e \".[notebook]\"": Extra(),
    "python ablate/run.py +experiment=gpt2 model=gpt2_124m data=tinystories train.batch_size=64 "
    "train.grad_accum=4 train.compile=true": NotRun("a GPU-sized model on TinyStories, downloaded from the hub"),
    "torchrun --standalone --nproc_per_node=8 ablate/run.py +experiment=gpt2 model=gpt2_124m data=tinystories "
    "train.batch_size=512 train.grad_accum=8": NotRun("8 GPUs"),
    "torchrun --standalone --nproc_per_node=2 ablate/run.py train.threads=1": NotRun(
        "two processes training together", "tests/test_distributed.py::test_two_gloo_processes_equal_one_process"),
    "python ablate/run.py -m +sweep=norm hydra/launcher=joblib hydra.launcher.n_jobs=2": NotRun(
        "worker processes", "tests/test_launchers.py::test_parallel_launchers_produce_one_result_per_job"),
    "python ablate/run.py -m +sweep=norm hydra/launcher=batched hydra.launcher.n_jobs=2 hydra.launcher.max_members=1":
        NotRun("worker processes", "tests/test_batched.py::"
               "test_a_stop_request_to_the_launcher_reaches_every_process_and_the_rest_never_start"),
    "python ablate/run.py -m +sweep=norm hydra/launcher=submitit_local": NotRun(
        "worker processes", "tests/test_launchers.py::test_parallel_launchers_produce_one_result_per_job"),
    "python ablate/run.py -m +sweep=norm hydra/launcher=slurm hydra.launcher.partition=gpu": NotRun(
        "a SLURM cluster"),
    "python ablate/run.py -m +sweep=norm hydra/launcher=slurm hydra.launcher.partition=gpu "
    "hydra.launcher.gpus_per_node=8 hydra.launcher.tasks_per_node=8": NotRun("a SLURM cluster with GPUs"),
    "jupyter lab multirun/DATE/TIME/report/compare.ipynb": NotRun("interactive: starts a server for a browser"),
    "wandb sweep --project ablate sweeps/wandb/norm.yaml": NotRun("a W&B server"),
    "wandb agent ENTITY/PROJECT/SWEEP_ID": NotRun("a W&B server"),
    "python -m analysis.report multirun/wandb/SWEEP_ID": NotRun(
        "the runs of a W&B sweep; the same command runs on a Hydra sweep here"),
    "python -m venv .venv": "venv",
    ". .venv/bin/activate": "venv",
    "python -m analysis.report multirun/DATE/TIME": "sweep-dir",
    "python -m analysis.report multirun/DATE/TIME --baseline ffn=gelu": "sweep-dir",
    "python ablate/run.py -m +ladder=cpu ffn=swiglu,gelu": NotRun(
        "24 runs, about an hour on 2 CPU cores", "tests/test_ladder.py::test_smoke_ladder_through_the_cli_writes_every_file"),
    "python -m ablate.ladder cpu": NotRun("prints the cpu ladder's rungs", "tests/test_ladder.py::test_ladder_command_prints_every_rung"),
    "python -m analysis.notebook multirun/DATE/TIME": "sweep-dir",
    "python -m ablate.export_hf outputs/DATE/TIME hf_model/": "run-dir",
}


def blocks(language: str) -> list[str]:
    return [m.group(1) for m in re.finditer(rf"^```{language}\n(.*?)^```", TEXT, re.S | re.M)]


def readme_commands() -> list[str]:
    """Every command of the README's bash blocks, in order, each once."""
    found: list[str] = []
    for block in blocks("bash"):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+", " ", re.sub(r"\s+#.*$", "", line)).strip()
            for part in (p.strip() for p in line.split("&&")):
                if part and part not in found:
                    found.append(part)
    return found


COMMANDS = readme_commands()


def kind(command: str) -> object:
    if command in CLASSIFIED:
        return CLASSIFIED[command]
    if command.startswith("python ablate/run.py"):
        return "run"
    raise AssertionError(f"README command not classified in tests/test_readme.py: {command!r}")


def test_every_readme_command_is_classified():
    assert len(COMMANDS) > 20
    for command in COMMANDS:
        kind(command)
    stale = [c for c in CLASSIFIED if c not in COMMANDS]
    assert not stale, f"classified but no longer in the README: {stale}"


def test_ci_runs_the_readme_commands_marked_for_it_as_written():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    ci_parts = {part.strip() for line in ci_lines for part in line.split("&&")}
    for command in (c for c in COMMANDS if isinstance(kind(c), InCI)):
        assert command in ci_parts, f".ci/run lacks the README command: {command}"
    # The README's two lines that must work from a fresh clone, verbatim; pytest's closing line ends CI's output.
    readme_lines = [re.sub(r"\s+#.*$", "", line).strip() for block in blocks("bash") for line in block.splitlines()]
    for line in ("pip install -e . && python ablate/run.py", 'pip install -e ".[dev]" && python -m pytest -q tests'):
        assert line in readme_lines and line in ci_lines, line
    assert ci_lines[-1] == 'pip install -e ".[dev]" && python -m pytest -q tests'


def test_every_extra_the_readme_names_exists_and_dev_has_it():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = set(re.findall(r'pip install -e "\.\[(\w+)\]"', TEXT)) - {"NAME"}
    assert {"dev", "notebook", "hf", "launchers"} <= named
    assert named <= extras.keys()
    dev = " ".join(extras["dev"])
    for name in named - {"dev"}:
        assert name in dev, f".[dev] (what CI installs) lacks the {name} extra"
    assert any(r.startswith(("jupyterlab", "notebook")) for r in extras["notebook"]), "a front-end to open it"


def test_expensive_commands_name_the_test_that_covers_them():
    for command in COMMANDS:
        if isinstance(kind(command), NotRun) and kind(command).covered_by:
            path, name = kind(command).covered_by.split("::")
            assert f"def {name}(" in (ROOT / path).read_text(), kind(command).covered_by


def test_the_venv_commands_make_an_environment_the_next_lines_use(tmp_path):
    script = " && ".join([*(c for c in COMMANDS if kind(c) == "venv"), "python -c 'import sys; print(sys.prefix)'"])
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == (tmp_path / ".venv").resolve()


# --- the cheap ones, run with tiny overrides --------------------------------------------------------

def tiny_argv(command: str, out: Path) -> list[str]:
    """The command's words with `python` -> this interpreter and the tiny overrides in place."""
    words = shlex.split(command)
    assert words[0] == "python"
    words[0] = sys.executable
    if "--cfg" in words or "--help" in words:
        return words
    kept = [w for w in words if not (re.match(r"^[+~\w./-]+=", w) and w.split("=")[0] in TINY)]  # order kept
    tiny = [f"{k}={v}" for k, v in TINY.items()]
    if any(w.startswith("+sweep=") for w in words):
        tiny.append("train.seed=0")  # one seed of a predefined sweep's grid
        tiny.append("compare.looks=null")  # ... so all of it at once, not in looks of several seeds
    where = "hydra.sweep.dir" if "-m" in words or "--multirun" in words else "hydra.run.dir"
    return [*kept, *tiny, f"{where}={out}"]


def run(argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "COLUMNS": "100"}
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stderr[-3000:]}"
    return result


def expected_jobs(command: str) -> int:
    """One job per combination of the comma lists on the line and in a +sweep file's grid (seeds: one);
    with the tuning sweeper (hydra/sweeper=ablate_tuned, on the line or in the sweep file), per variant
    every tuned value on each tuning seed, then the verdict's seeds."""
    words = shlex.split(command)
    axes = {w.split("=")[0]: w.split("=", 1)[1] for w in words if "=" in w and w.split("=")[0] not in TINY}
    tune, tune_seeds = None, 1
    if "hydra.sweeper.tune" in axes:
        tune = yaml.safe_load(axes["hydra.sweeper.tune"].replace(":", ": ", 1))
    for word in words:
        if word.startswith("+sweep="):
            grid = yaml.safe_load((ROOT / "sweeps" / f"{word.split('=')[1]}.yaml").read_text())
            for key, values in grid["hydra"]["sweeper"]["params"].items():
                axes.setdefault(key, "0" if key == "train.seed" else str(values))
            tune = grid["hydra"]["sweeper"].get("tune") or tune
            tune_seeds = len(grid["hydra"]["sweeper"].get("tune_seeds") or [0])
    variants = {k: v for k, v in axes.items() if not k.startswith(("hydra/", "hydra.", "compare.", "train.seed"))}
    count = math.prod(len(str(v).split(",")) for v in variants.values())
    seeds = len(axes.get("train.seed", "0").split(","))
    if not tune:
        return count * seeds
    rates = math.prod(len(str(v).split(",")) for v in tune.values())
    return count * (rates * tune_seeds + seeds)


def extension_runs(out: Path) -> int:
    """Tuning runs the tuning sweeper added past the grid's edge (hydra.sweeper.extend), as its
    tuning.json records them, each checked to lie outside the grid and bounded by the plan."""
    if not (out / "tuning.json").is_file():
        return 0
    from hydra_plugins.ablate_tuning_sweeper.extension import max_extra_points

    recorded = json.loads((out / "tuning.json").read_text())
    extended = [p for c in recorded["choices"] for p in c["extended"]]
    assert all(any(o.split("=", 1)[1] not in recorded["grid"][o.split("=", 1)[0]] for o in p) for p in extended)
    n_runs = len(extended) * len(recorded["tune_seeds"])
    per_variant = max_extra_points(recorded["grid"], recorded["extend"]) * len(recorded["tune_seeds"])
    bound = per_variant * len(recorded["choices"])
    assert recorded["n_extension_runs"] == n_runs <= bound
    return n_runs


@pytest.fixture(scope="session")
def readme_runs(tmp_path_factory):
    """Each `python ablate/run.py` command of the README run once (tiny), by command."""
    return {}


def run_dir_of(command: str, readme_runs, tmp_path_factory) -> Path:
    if command not in readme_runs:
        out = tmp_path_factory.mktemp("readme") / "out"
        run(tiny_argv(command, out))
        readme_runs[command] = out
    return readme_runs[command]


FIRST_RUN = next(c for c in COMMANDS if c == "python ablate/run.py")
FIRST_SWEEP = next(c for c in COMMANDS if c not in CLASSIFIED and " -m " in f"{c} ")


RUN_COMMANDS = [c for c in COMMANDS if c not in CLASSIFIED and c.startswith("python ablate/run.py")]


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_readme_run_command(command, readme_runs, tmp_path_factory):
    words = shlex.split(command)
    if "--cfg" in words or "--help" in words:
        result = run(tiny_argv(command, Path()))
        if "--cfg" in words:
            assert yaml.safe_load(result.stdout)["model"]["name"] == "nano"
        else:
            assert "CONFIG GROUPS" in result.stdout and "SETUPS" in result.stdout
        return
    out = run_dir_of(command, readme_runs, tmp_path_factory)
    if "-m" in words:
        rows = list(csv.DictReader(open(out / "report" / "results.csv")))
        assert len(rows) == expected_jobs(command) + extension_runs(out) >= 2
        assert {row["status"] for row in rows} == {"completed"}
    else:
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 2
        chosen = {w.split("=")[0]: w.split("=")[1] for w in words if "=" in w and "." not in w.split("=")[0]}
        for group, option in chosen.items():
            if not group.startswith("+") and group not in TINY:
                assert summary["choices"][group] == option


def test_readme_report_and_notebook_commands_on_the_readmes_sweep(readme_runs, tmp_path_factory):
    sweep = run_dir_of(FIRST_SWEEP, readme_runs, tmp_path_factory)
    for command in (c for c in COMMANDS if kind(c) == "sweep-dir"):
        (sweep / "report" / "report.md").unlink(missing_ok=True)
        argv = [sys.executable if w == "python" else w for w in shlex.split(command.replace("multirun/DATE/TIME",
                                                                                           str(sweep)))]
        result = run(argv)
        if "analysis.report" in command:
            assert "norm" in (sweep / "report" / "report.md").read_text()
        else:
            assert "executed notebook" in result.stdout
            assert (sweep / "report" / "compare.ipynb").stat().st_size > 0


def test_readme_export_command_on_the_readmes_run(readme_runs, tmp_path_factory, tmp_path):
    pytest.importorskip("transformers")
    run_dir = run_dir_of(FIRST_RUN, readme_runs, tmp_path_factory)
    for command in (c for c in COMMANDS if kind(c) == "run-dir"):
        command = command.replace("outputs/DATE/TIME", str(run_dir)).replace("hf_model/", str(tmp_path / "hf"))
        run([sys.executable if w == "python" else w for w in shlex.split(command)])
        config = json.loads((tmp_path / "hf" / "config.json").read_text())
        assert config["vocab_size"] == json.loads((run_dir / "summary.json").read_text())["vocab_size"]


def test_readme_python_blocks(readme_runs, tmp_path_factory):
    run_dir = run_dir_of(FIRST_RUN, readme_runs, tmp_path_factory)
    ran = 0
    for block in blocks("python"):
        ast.parse(block)
        if re.match(r"#\s*[\w/]+\.py\b", block):
            continue  # an excerpt of a file (Add a component), not a script
        scope: dict = {}
        exec(compile(block.replace("outputs/DATE/TIME", str(run_dir)), "README.md", "exec"), scope)
        ran += 1
        if "logits" in scope:
            assert tuple(scope["logits"].shape) == (1, scope["idx"].shape[1], scope["tokenizer"].vocab_size)
    assert ran >= 1
    for block in blocks("yaml"):
        assert yaml.safe_load(block)


# --- the README's tables stay in step with conf/ and sweeps/ ----------------------------------------

def table(header: str) -> dict[str, str]:
    """The README table under `| header |...`: first column's `name` -> the rest of the row."""
    start = TEXT.index(f"| {header} |")
    rows = {}
    for line in TEXT[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        match = re.match(r"^\| `(\w+)` \| (.*) \|$", line)
        rows[match.group(1)] = match.group(2)
    return rows


def test_the_group_table_names_every_option():
    rows = table("group")
    for group in (p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "hydra"):
        if not list((ROOT / "conf" / group).glob("*.yaml")) or help_page.is_setup(group):
            continue
        assert group in rows, f"README group table lacks `{group}`"
        for option in help_page.options(group):
            assert f"`{option}`" in rows[group], f"README group table: `{group}` lacks `{option}`"


def test_every_sweep_and_preset_is_named():
    rows = table("sweep")
    for sweep in help_page.options("sweep"):
        assert sweep in rows, f"README sweep table lacks `{sweep}`"
    presets = re.search(r"Presets set a whole architecture.*?:(.*?)\. They", TEXT, re.S).group(1)
    for preset in help_page.options("experiment"):
        assert f"`{preset}`" in presets or f"+experiment={preset}`" in presets, preset
