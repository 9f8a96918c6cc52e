"""Typed knobs with their allowed values, declared once on the dataclass that holds them.

    @dataclass
    class Config:
        eps: float = knob(1e-5, gt=0, doc="added to the variance before the square root")

`problems(cfg)` walks a composed (structured) config and returns one message per value that its
schema does not allow, naming the key, the value and what is allowed: keys the schema does not
declare (also those added with `+key=...`), non-finite numbers, values outside the declared range
or choices. Because the rule sits on the field itself, a new knob is checked the day it is added,
with no line in a central list.

Torch-free, so composing and checking a config never imports torch.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

_RULES = ("gt", "ge", "lt", "le", "choices", "finite")


def knob(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, gt: float | None = None,
         ge: float | None = None, lt: float | None = None, le: float | None = None,
         choices: tuple | list | None = None, finite: bool = True, doc: str = "") -> Any:
    """A dataclass field that states what values it allows.

    gt/ge/lt/le: bounds for numbers; choices: the allowed values; finite: refuse nan and inf
    (on by default for numbers); doc: what the knob means, shown in refusals and help.
    """
    metadata = {"gt": gt, "ge": ge, "lt": lt, "le": le, "choices": tuple(choices) if choices is not None else None,
                "finite": finite, "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def allowed_text(meta: dict[str, Any]) -> str:
    """The rule of one field in words, e.g. 'a finite number > 0' or 'one of auto, fp32, bf16'."""
    if meta.get("choices") is not None:
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    bounds = [f"{symbol} {meta[key]}" for key, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
              if meta.get(key) is not None]
    what = "a finite number" if meta.get("finite", True) else "a number"
    return what + (" " + " and ".join(bounds) if bounds else "")


def _number_problem(key: str, value: int | float, meta: dict[str, Any]) -> str | None:
    number = float(value)  # the message shows `value` as given: -5 for an int, not -5.0
    if meta.get("finite", True) and not math.isfinite(number):
        return f"{key}={value} is not allowed: it must be {allowed_text(meta)}."
    for rule, fails in (("gt", lambda b: not number > b), ("ge", lambda b: not number >= b),
                        ("lt", lambda b: not number < b), ("le", lambda b: not number <= b)):
        bound = meta.get(rule)
        if bound is not None and fails(bound):
            return f"{key}={value} is not allowed: it must be {allowed_text(meta)}."
    return None


def value_problem(key: str, value: Any, meta: dict[str, Any]) -> str | None:
    """The refusal of one value under one field's rule, or None if it is allowed."""
    if value is None:
        return None  # Optional fields: OmegaConf already refuses None where the type forbids it
    doc = f" ({meta['doc']})" if meta.get("doc") else ""
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        return f"{key}={value!r} is not allowed{doc}: choose {allowed_text(meta)}."
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        problem = _number_problem(key, value, meta)
        return None if problem is None else problem[:-1] + doc + "."
    return None


def typed(cfg: Any) -> Any:
    """The typed config object (dataclasses with their methods, lingua's `OmegaConf.to_object`) of a
    composed DictConfig; a typed object passes through."""
    return OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg


def schema_of(node: Any) -> type | None:
    """The dataclass a structured config node was built from, or None for a plain node."""
    if not isinstance(node, DictConfig):
        return None
    kind = OmegaConf.get_type(node)
    return kind if isinstance(kind, type) and dataclasses.is_dataclass(kind) else None


def unknown_key_problem(key: str, name: str, schema: type) -> str:
    known = [f.name for f in dataclasses.fields(schema)]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {key.rpartition('.')[0] + '.' if '.' in key else ''}{close[0]}?" if close else ""
    return (f"{key} is not a setting here: {schema.__qualname__} has no key {name!r} (a typo, or a key added with "
            f"+/++ that nothing reads).{hint} Valid keys: {', '.join(known)}.")


def problems(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every value of `cfg` (recursively) that its schema does not allow, as user-facing sentences."""
    found: list[str] = []
    schema = schema_of(cfg)
    fields = {f.name: f for f in dataclasses.fields(schema)} if schema else {}
    for name in cfg.keys():
        key = f"{prefix}{name}"
        if schema is not None and name not in fields:
            found.append(unknown_key_problem(key, str(name), schema))
            continue
        value = cfg[name]
        if isinstance(value, DictConfig):
            found.extend(problems(value, prefix=f"{key}."))
            continue
        if isinstance(value, ListConfig) or name not in fields:
            continue
        problem = value_problem(key, value, dict(fields[name].metadata))
        if problem:
            found.append(problem)
    return found
