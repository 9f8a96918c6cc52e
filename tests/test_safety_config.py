"""Class 4 of issue #11: every bad value is refused before training, once, clearly.

Exit code 2, one paragraph naming the key, the value and what is allowed, no traceback, no run
directory left behind, every existing file untouched. The rules come from the schema (each knob of
ablate/config/schema.py declares its range with components.knobs.knob) and from what each option reads, so
the last two tests check the mechanism over every knob and every option rather than a list.
"""
from __future__ import annotations

import dataclasses
import shutil
import typing

import pytest
import torch
from omegaconf import OmegaConf

from ablate.config import schema
from ablate.config.validate import ConfigError
from ablate.rundir.checkpoint import CHECKPOINT
from ablate.training.loop import train
from components.registry import AXES, config_of, options
from tests.conftest import POEMS, TINY, compose
from tests.safety_common import FAST, SHORT, assert_refused, cli, snapshot

ABSENT_DEVICE = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """A finished run beside which every refused command runs; it must come out byte-identical."""
    root = tmp_path_factory.mktemp("earlier")
    result = cli(*FAST, *SHORT, f"hydra.run.dir={root / 'outputs' / 'earlier'}", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root


CLI_CASES = [
    (["optim.lr=inf"], ["optim.lr=inf", "finite number > 0"]),
    (["tokenizer=byte", "tokenizer.vocab_size=300"], ["tokenizer.vocab_size=300", "tokenizer=byte", "bpe"]),
    (["+train.max_step=60"], ["train.max_step", "Did you mean train.max_steps?"]),
    ([f"train.device={ABSENT_DEVICE}"], [f"train.device='{ABSENT_DEVICE}'", "not available", "auto, cpu"]),
    (["attn=linear", "attn.chunk_size=0"], ["attn.chunk_size=0", ">= 1"]),
    (["schedule.warmup_steps=-5"], ["schedule.warmup_steps=-5", ">= 0"]),
    (["optim.lr=abc"], ["optim.lr", "abc", "Float"]),  # a wrong type: Hydra's own message, exit 2 all the same
]


@pytest.mark.parametrize("overrides,words", CLI_CASES, ids=[" ".join(o) for o, _ in CLI_CASES])
def test_the_command_line_refuses_bad_values_before_anything_is_written(earlier, overrides, words):
    before = snapshot(earlier)
    result = cli(*FAST, *SHORT, *overrides, "hydra.run.dir=outputs/new", cwd=earlier)
    message = assert_refused(result, *words, "refused before training")
    assert len(message.strip().splitlines()) <= 8, message
    assert snapshot(earlier) == before and not (earlier / "outputs" / "new").exists()


@pytest.mark.parametrize("damage,words", [
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), ["damaged or not a checkpoint"]),
    (lambda p: torch.save({"weights": torch.zeros(3)}, p), ["not a checkpoint of this ablate", "missing"]),
    (lambda p: p.write_bytes(b""), ["damaged or not a checkpoint"]),
], ids=["truncated", "foreign", "empty"])
def test_resume_refuses_a_truncated_or_foreign_checkpoint_naming_it(earlier, tmp_path, damage, words):
    run = tmp_path / "run"
    shutil.copytree(earlier / "outputs" / "earlier", run)
    damage(run / CHECKPOINT)
    before = snapshot(run)
    result = cli(*FAST, *SHORT, f"hydra.run.dir={run}", cwd=tmp_path)
    assert_refused(result, str(run / CHECKPOINT), *words, "It was left as it is")
    assert snapshot(run) == before


API_CASES = [  # the classes of the issue, each value with the words its refusal must contain
    ("optim.lr=inf", "optim.lr=inf"), ("optim.weight_decay=nan", "optim.weight_decay=nan"),
    ("norm.eps=-1", "norm.eps=-1.0"), ("pos.theta=0", "pos.theta=0.0"), ("softcap=on softcap.logits=0", "softcap.logits=0"),
    ("train.divergence_factor=0", "train.divergence_factor=0.0"), ("optim.grad_clip=-1", "optim.grad_clip=-1.0"),
    ("schedule.warmup_steps=-5", "schedule.warmup_steps=-5"), ("schedule.min_lr_ratio=5", "schedule.min_lr_ratio=5.0"),
    ("data.val_fraction=1.5", "data.val_fraction=1.5"), ("attn=linear attn.chunk_size=0", "attn.chunk_size=0"),
    ("ffn.multiple_of=0", "ffn.multiple_of=0"), ("train.threads=-3", "train.threads=-3"),
    ("train.seed=-1", "train.seed=-1"), ("model.dropout=1.0", "model.dropout=1.0"),
    ("train.sample_top_p=0", "train.sample_top_p=0.0"), ("moe=topk moe.top_k=0", "moe.top_k=0"),
    ("z_loss=on z_loss.coef=-0.1", "z_loss.coef=-0.1"), ("train.dtype=fp16", "train.dtype='fp16'"),
    ("+optim.momentum=0.9", "optim.momentum is not a setting"), ("++train.max_step=60", "train.max_step"),
    (f"train.device={ABSENT_DEVICE}", "not available"),
]


@pytest.mark.parametrize("override,words", API_CASES, ids=[o for o, _ in API_CASES])
def test_train_refuses_every_class_of_bad_value_and_leaves_no_run_directory(tmp_path, override, words):
    with pytest.raises(ConfigError) as error:
        train(compose(*TINY, *override.split()), tmp_path / "run", progress=False)
    message = str(error.value)
    assert words in message and ("allowed" in message or "available" in message or "setting" in message), message
    assert "\n" not in message  # one paragraph
    assert not (tmp_path / "run").exists()


# -- the mechanism, over every knob and every option ------------------------------------------------------
NUMERIC = {int, float, typing.Optional[int], typing.Optional[float]}


def schemas():
    """(config key prefix, dataclass) of every section of the schema and every option's own Config."""
    sections = [(f.name, f.default_factory) for f in dataclasses.fields(schema.Config)
                if f.name not in AXES and dataclasses.is_dataclass(f.default_factory)]
    return sections + [(f"{axis}[{option}]", config_of(axis, option)) for axis in AXES for option in options(axis)]


NUMERIC_KNOBS = [(prefix, field) for prefix, cls in schemas() for field in dataclasses.fields(cls)
                 if typing.get_type_hints(cls)[field.name] in NUMERIC]


@pytest.mark.parametrize("group,field", NUMERIC_KNOBS, ids=[f"{g}.{f.name}" for g, f in NUMERIC_KNOBS])
def test_every_numeric_knob_of_the_schema_declares_its_range(group, field):
    rules = {k: v for k, v in field.metadata.items() if k in ("gt", "ge", "lt", "le", "choices") and v is not None}
    assert rules, f"{group}.{field.name} is a number without a declared range: use knob(default, ge=..., doc=...)"
    assert field.metadata.get("doc"), f"{group}.{field.name}: say what the knob means (doc=...)"


def foreign_knobs(axis):
    """(option, knob) pairs where another option of `axis` has the knob and this one does not."""
    own = {o: {f.name for f in dataclasses.fields(config_of(axis, o))} for o in options(axis)}
    every = set().union(*own.values())
    return [(o, k) for o in options(axis) for k in sorted(every - own[o])]


FOREIGN = [(axis, option, knob) for axis in AXES for option, knob in foreign_knobs(axis)]


@pytest.mark.parametrize("axis,option,knob", FOREIGN, ids=[f"{a}={o} {a}.{k}" for a, o, k in FOREIGN])
def test_a_knob_of_another_option_is_refused_by_the_chosen_options_schema(axis, option, knob):
    """Per-option schemas: a setting the chosen option does not have cannot even be composed, so it can
    never be silently ignored (tokenizer=byte tokenizer.vocab_size=300, softcap=off softcap.attn=20)."""
    from hydra.errors import HydraException

    from tests.conftest import hydra_compose_once

    extra = [f"data.path={POEMS}"] if (axis, option) == ("data", "text") else []
    with pytest.raises(HydraException, match=knob):
        hydra_compose_once(f"{axis}={option}", f"{axis}.{knob}=1", *extra)


@pytest.mark.parametrize("group", ["norm", "pos", "attn", "qk_norm", "moe", "ffn"])
def test_every_option_knob_of_the_model_axes_can_change_the_model(group):
    """The knobs an option declares are read: for each option with knobs, changing them changes the logits
    (those that only weight a training loss, like moe.aux_loss, excepted)."""
    from ablate.model import Transformer

    ids = torch.randint(0, 300, (2, 64), generator=torch.Generator().manual_seed(0))
    loss_only = {"aux_loss", "router_z_loss"}

    def shrunk(value, choices=None):  # small enough to bite at 64 tokens (a window of 16, chunks of 16)
        if isinstance(value, bool):
            return not value
        if isinstance(value, str):  # a knob with choices: another one
            return next(choice for choice in choices if choice != value)
        return max(2, value // 4) if isinstance(value, int) else value * 3 + 0.5

    def logits(cfg):
        torch.manual_seed(0)
        return Transformer(cfg, 300)(ids)

    for option in options(group):
        base = compose("model=micro", f"{group}={option}")
        knobs = [k for k in base[group] if k != "name" and k not in loss_only]
        if not knobs:
            continue
        reference, changed_any = logits(base), False
        for key in knobs:
            other = compose("model=micro", f"{group}={option}")
            fields = {f.name: f for f in dataclasses.fields(OmegaConf.get_type(base[group]))}
            other[group][key] = shrunk(base[group][key], fields[key].metadata.get("choices"))
            try:
                changed_any |= not torch.equal(logits(other), reference)
            except (ValueError, AssertionError, RuntimeError):
                changed_any = True  # a read knob set to a value that does not fit this model: it is read
        assert changed_any, f"{group}={option}: none of its knobs {knobs} changes the model"
