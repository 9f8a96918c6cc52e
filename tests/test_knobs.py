"""components.knobs: a field's declared rule refuses exactly the values outside it."""
import math
from dataclasses import dataclass, field

import pytest
from omegaconf import OmegaConf

from components.knobs import knob, problems


@dataclass
class Inner:
    lr: float = knob(3e-3, gt=0, doc="peak learning rate")
    ratio: float = knob(0.1, ge=0, le=1)
    mode: str = knob("auto", choices=("auto", "fp32"))
    free: float = knob(1.0, finite=False)
    cap: float | None = knob(None, gt=0)


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)


def composed(**values):
    cfg = OmegaConf.structured(Outer)
    for key, value in values.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, force_add=True)
    return cfg


def test_defaults_pass():
    assert problems(composed()) == []


@pytest.mark.parametrize("key,value,words", [
    ("inner__lr", 0.0, "> 0"), ("inner__lr", math.inf, "finite"), ("inner__lr", math.nan, "finite"),
    ("inner__ratio", 1.5, "<= 1"), ("inner__ratio", -0.1, ">= 0"), ("inner__mode", "fp16", "auto, fp32"),
    ("inner__cap", 0.0, "> 0"),
])
def test_values_outside_the_rule_are_named_with_what_is_allowed(key, value, words):
    found = problems(composed(**{key: value}))
    assert len(found) == 1
    assert found[0].startswith(key.replace("__", ".") + "=") and words in found[0]


@pytest.mark.parametrize("key,value", [("inner__lr", 1e-9), ("inner__ratio", 1.0), ("inner__ratio", 0),
                                       ("inner__free", math.inf), ("inner__cap", None), ("inner__cap", 30.0)])
def test_values_inside_the_rule_pass(key, value):
    assert problems(composed(**{key: value})) == []


def test_keys_the_schema_does_not_declare_are_refused_with_a_suggestion():
    found = problems(composed(inner__lrr=1.0, extra__x=1))
    assert any("inner.lrr" in p and "Did you mean inner.lr?" in p for p in found)
    assert any(p.startswith("extra is not a setting") for p in found)
