"""The promise of the README's "Add a component": an option with a brand-new knob is one class and
one YAML file. Done here in a copy of the repository, then trained and refused from the command line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import POEMS, ROOT

SCALE_NORM = textwrap.dedent('''


    @register("norm", "scale")
    class ScaleNorm(nn.Module):
        """g * x / ||x|| (Nguyen & Salazar 2019): one learned scalar."""

        @dataclass
        class Config(OptionConfig):
            eps: float = knob(1e-5, gt=0, doc="floor of ||x||")
            init_scale: float = knob(1.0, gt=0, doc="g at init, times sqrt(dim)")

        def __init__(self, cfg: Config, dim: int, bias: bool = False):
            super().__init__()
            self.eps, self.g = cfg.eps, nn.Parameter(torch.tensor(cfg.init_scale * dim ** 0.5))

        def forward(self, x):
            return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)
''')
SCALE_YAML = "defaults:\n  - /schema/norm/scale@_here_\n  - _self_\n\neps: 1.0e-5\ninit_scale: 1.0\n"
TINY = ["model=micro", "data=text", f"data.path={POEMS}", "tokenizer.vocab_size=300", "logger=none",
        "train.max_steps=3", "train.batch_size=4", "train.eval_batches=1", "train.sample_tokens=4",
        "train.dtype=fp32", "train.threads=1"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    copy = tmp_path_factory.mktemp("repo") / "ablate"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "__pycache__", "outputs", "multirun",
                                                              "wandb", "*.egg-info"))
    with open(copy / "components" / "norms.py", "a") as f:  # the one class...
        f.write(SCALE_NORM)
    (copy / "conf" / "norm" / "scale.yaml").write_text(SCALE_YAML)  # ...and the one YAML file
    return copy


def run(repo, *overrides, run_dir):
    env = {**os.environ, "PYTHONPATH": str(repo), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, str(repo / "ablate" / "run.py"), *TINY, *overrides,
                           f"hydra.run.dir={run_dir}"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=600)


def test_an_option_with_a_new_knob_trains_from_the_command_line(repo, tmp_path):
    plain = run(repo, run_dir=tmp_path / "rms")
    scaled = run(repo, "norm=scale", "norm.init_scale=2", run_dir=tmp_path / "scale")
    assert plain.returncode == 0 and scaled.returncode == 0, scaled.stderr[-3000:]
    rms, scale = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("rms", "scale"))
    assert scale["status"] == "completed" and scale["choices"]["norm"] == "scale"
    n_norms = 2 * 2 + 1  # micro: two blocks of two pre-norms, and the final norm
    assert rms["params_total"] - scale["params_total"] == n_norms * (64 - 1)  # a gain vector -> one scalar
    config = (tmp_path / "scale" / ".hydra" / "config.yaml").read_text()
    assert "init_scale: 2" in config


@pytest.mark.parametrize("overrides,words", [
    (["norm=scale", "norm.init_scale=0"], ["norm.init_scale=0", "> 0", "g at init"]),
    (["norm=rms", "norm.init_scale=2"], ["norm.init_scale=2", "norm=rms", "scale"]),
    (["norm=scale", "+norm.init_sacle=2"], ["norm.init_sacle", "Did you mean norm.init_scale?"]),
])
def test_its_knob_is_refused_where_it_does_not_apply(repo, tmp_path, overrides, words):
    result = run(repo, *overrides, run_dir=tmp_path / "refused")
    assert result.returncode == 2, result.stderr[-2000:]
    for word in words:
        assert word in result.stderr, (word, result.stderr[-2000:])
    assert not (tmp_path / "refused").exists()
