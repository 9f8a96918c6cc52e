"""The command line a new user meets: `--help` explains ablate, and flags work wherever they are typed."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from ablate.cli import help_page
from ablate.cli.argv import flags_first
from tests.conftest import ROOT
from tests.test_cli import FAST

RUN = [sys.executable, str(ROOT / "ablate" / "run.py")]


def ablate(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "COLUMNS": "100"}
    return subprocess.run([*RUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


# --- flags anywhere --------------------------------------------------------------------------------

@pytest.mark.parametrize("typed,parsed", [
    (["norm=rms,ln", "-m", "train.max_steps=60"], ["-m", "norm=rms,ln", "train.max_steps=60"]),
    (["-m", "norm=rms,ln", "train.max_steps=60"], ["-m", "norm=rms,ln", "train.max_steps=60"]),
    (["norm=rms,ln", "train.max_steps=60", "--multirun"], ["--multirun", "norm=rms,ln", "train.max_steps=60"]),
    (["norm=ln", "--cfg", "job", "pos=nope"], ["--cfg", "job", "norm=ln", "pos=nope"]),  # --cfg takes a value
    (["norm=ln", "-c", "job", "--resolve"], ["-c", "job", "--resolve", "norm=ln"]),
    (["norm=ln", "--info", "defaults", "pos=nope"], ["--info", "defaults", "norm=ln", "pos=nope"]),
    (["--info", "norm=ln"], ["--info", "norm=ln"]),  # optional value: an override is not one of its choices
    (["a=1", "-cp", "/some/dir", "b=2"], ["-cp", "/some/dir", "a=1", "b=2"]),
    (["a=1", "--cfg=job", "b=2"], ["--cfg=job", "a=1", "b=2"]),
    (["a=1", "--no-such-flag", "b=2"], ["--no-such-flag", "a=1", "b=2"]),  # left for Hydra to report
    (["+experiment=llama", "~train.threads", "--help"], ["--help", "+experiment=llama", "~train.threads"]),
])
def test_flags_move_before_the_overrides_keeping_each_order(typed, parsed):
    assert flags_first(typed) == parsed


@pytest.fixture(scope="session")
def both_orders(tmp_path_factory):
    """The issue's command, `-m` between the overrides, next to `-m` first: the same two tiny jobs
    (tests/test_feedback.py reads the same sweeps)."""
    tmp = tmp_path_factory.mktemp("orders")
    tiny = [*FAST, "train.dtype=fp32", "train.max_steps=2", "train.eval_interval=2", "train.sample_temperature=0.7",
            "train.sample_top_p=0.9", "train.sample_prompt='To be'"]
    sweeps = {}
    for name, args in {"m_between": ["norm=rms,ln", "-m", *tiny], "m_first": ["-m", "norm=rms,ln", *tiny]}.items():
        result = ablate(*args, f"hydra.sweep.dir={tmp / name}", cwd=tmp)
        assert result.returncode == 0, result.stderr[-3000:]
        sweeps[name] = (tmp / name, result)
    return sweeps


def job_overrides(sweep) -> list[list[str]]:
    return [yaml.safe_load((sweep / str(job) / ".hydra" / "overrides.yaml").read_text()) for job in (0, 1)]


def test_an_override_after_m_sweeps_the_same_jobs_as_m_first(both_orders):
    between, first = (job_overrides(both_orders[name][0]) for name in ("m_between", "m_first"))
    assert between == first
    assert [o[0] for o in between] == ["norm=rms", "norm=ln"]
    assert all("train.max_steps=2" in o for o in between)
    for job in (0, 1):
        summary = json.loads((both_orders["m_between"][0] / str(job) / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 2


# --- the help page ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def help_text() -> str:
    result = ablate("--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


def section(text: str, title: str) -> str:
    """The lines of one upper-case section of the help page."""
    match = re.search(rf"^{title}\b.*?\n(.*?)(?=^[A-Z][A-Z ]+\b|\Z)", text, re.S | re.M)
    assert match, f"no {title} section in:\n{text}"
    return match.group(1)


def group_line(text: str, group: str) -> list[str]:
    [line] = [line for line in section(text, "CONFIG GROUPS").splitlines() if line.split()[:1] == [group]]
    return line.split()[1:]


def axis_groups() -> list[str]:
    """Every conf/ folder whose options fill one node (not a setup, not Hydra's)."""
    return sorted(p.name for p in (ROOT / "conf").iterdir()
                  if p.is_dir() and p.name != "hydra" and list(p.glob("*.yaml")) and not help_page.is_setup(p.name))


def test_help_explains_ablate_not_hydra(help_text):
    assert help_text.startswith("ablate: does this transformer design choice help?")
    assert "powered by Hydra" not in help_text and "== Config ==" not in help_text
    assert "-m (--multirun) may stand anywhere" in help_text
    examples = [line.split("  ")[0].strip() for line in section(help_text, "EXAMPLES").splitlines()
                if line.strip().startswith("python")]
    assert len(examples) >= 5
    readme = (ROOT / "README.md").read_text()
    for command in examples:  # the README's test runs these
        assert command in readme, f"help example not in the README: {command}"


def test_help_lists_every_option_of_every_group_from_conf(help_text):
    groups = axis_groups()
    assert {"model", "norm", "ffn", "pos", "attn", "logger"} <= set(groups)
    for group in groups:
        listed = [o.strip("[]") for o in group_line(help_text, group)]
        assert listed == help_page.options(group), group
    defaults = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())["defaults"]
    chosen = {k: v for d in defaults if isinstance(d, dict) for k, v in d.items() if not k.startswith("override")}
    for group in groups:
        assert f"[{chosen[group]}]" in group_line(help_text, group)  # the default is marked
    assert "model.d_model=128" in help_text and "train.max_steps=800" in help_text  # knobs with values


def test_help_lists_presets_lecture_steps_and_sweeps_by_name(help_text):
    setups = section(help_text, "SETUPS")
    for group, usage in (("experiment", "+experiment=NAME"), ("lecture", "+lecture=NAME"),
                         ("sweep", "-m +sweep=NAME")):
        assert usage in setups
        for name in help_page.options(group):
            assert re.search(rf"^\s+{re.escape(name)}\s+\S", setups, re.M), (group, name)
    assert "is RMSNorm as good as LayerNorm here" in setups  # a sweep's question, from its file


def test_help_hides_internal_groups(help_text):
    assert "schema" not in help_text
    assert "sweep/wandb" not in help_text and "wandb/" not in help_text
    assert "hydra/launcher" not in help_text and "hydra/job_logging" not in help_text
    assert "$" not in help_text  # string.Template escapes resolved


def test_help_after_overrides_shows_that_config(tmp_path):
    result = ablate("+experiment=gpt2", "model=small", "--help")
    assert result.returncode == 0, result.stderr
    assert "[small]" in group_line(result.stdout, "model") and "model.d_model=384" in result.stdout
    assert "[ln]" in group_line(result.stdout, "norm") and "[learned]" in group_line(result.stdout, "pos")


def test_a_new_option_or_preset_appears_on_the_page_by_itself(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    import ablate.config.schema  # noqa: F401  (registers the schema)

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)  # follows conf/sweep -> ../sweeps
    (conf / "norm" / "scale.yaml").write_text("name: scale\neps: 1.0e-5\n")
    (conf / "experiment" / "tiny_gpt.yaml").write_text("# @package _global_\n# A made-up preset for this test.\n")
    monkeypatch.setattr(help_page, "CONF", conf)
    help_page.register()
    backup = get_gh_backup()  # the session's compose fixtures may hold Hydra initialized: put it back after
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            root = compose("config", overrides=["norm=ln"], return_hydra_config=True)
    finally:
        restore_gh_from_backup(backup)
    groups = help_page.help_section("groups", _root_=root)
    [norm] = [line for line in groups.splitlines() if line.split()[:1] == ["norm"]]
    assert norm.split()[1:] == ["[ln]", "none", "rms", "scale"]
    assert re.search(r"tiny_gpt\s+A made-up preset for this test\.", help_page.help_section("setups", _root_=root))
