"""The registry: (axis, name) -> class. A new option is one decorated class and one YAML file.

    @register("norm", "rms")
    class RMSNorm(nn.Module): ...

    build("norm", "rms", dim=128, eps=1e-5, bias=False)   # extra keywords are dropped

`build` passes each class only the keywords its ``__init__`` names, so the assembly can offer
everything it knows (d_model, n_heads, ...) and each option takes what it needs.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_REGISTRY: dict[str, dict[str, Any]] = {}


class UnknownOption(KeyError):
    """A (axis, name) pair that nothing registered."""

    def __init__(self, axis: str, name: str):
        self.axis, self.name = axis, name
        valid = ", ".join(sorted(_REGISTRY.get(axis, {}))) or "(none registered)"
        super().__init__(f"{axis}={name!r} is not a registered option; valid choices: {valid}")

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return self.args[0]


def register(axis: str, name: str) -> Callable[[T], T]:
    """Class decorator: make ``cls`` the option ``name`` of the design axis ``axis``."""

    def decorator(cls: T) -> T:
        options = _REGISTRY.setdefault(axis, {})
        if name in options and options[name] is not cls:
            raise ValueError(f"{axis}/{name} is registered twice: {options[name]} and {cls}")
        options[name] = cls
        cls.registered_as = (axis, name)  # type: ignore[attr-defined]
        return cls

    return decorator


def lookup(axis: str, name: str) -> Any:
    """The class registered as ``axis/name``; raises UnknownOption listing the valid names."""
    _import_builtin_components(axis)
    try:
        return _REGISTRY[axis][name]
    except KeyError:
        raise UnknownOption(axis, name) from None


def options(axis: str) -> list[str]:
    """Registered option names of one axis, sorted."""
    _import_builtin_components(axis)
    return sorted(_REGISTRY.get(axis, {}))


def accepted_kwargs(fn: Callable, available: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``available`` that ``fn`` accepts (all of it if fn takes **kwargs)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(available)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in available.items() if k in names}


def knobs(group: Any) -> dict[str, Any]:
    """An option's own settings: its config group (a mapping) without the `name` key."""
    return {key: value for key, value in group.items() if key != "name"}


def call(fn: Callable, /, **available: Any) -> Any:
    """Call `fn` with the keywords it accepts out of `available` (for option classmethods)."""
    return fn(**accepted_kwargs(fn, available))


def build(axis: str, name: str, /, **available: Any) -> Any:
    """Instantiate ``axis/name`` with the keywords its constructor accepts out of ``available``."""
    cls = lookup(axis, name)
    return cls(**accepted_kwargs(cls, available))


# Where each axis's built-in options live. Importing a module registers its options; modules are
# imported on first lookup so that composing a config never pays for torch.
AXIS_MODULES = {
    "norm": "components.norms",
    "norm_pos": "components.blocks",
    "block": "components.blocks",
    "ffn": "components.ffn",
    "pos": "components.positional",
    "attn": "components.attention",
    "qk_norm": "components.attention",
    "moe": "components.moe",
    "tokenizer": "ablate.tokenizer",
    "data": "ablate.data",
    "schedule": "ablate.schedules",
    "logger": "ablate.loggers",
}


def _import_builtin_components(axis: str | None = None) -> None:
    modules = AXIS_MODULES.values() if axis is None else [AXIS_MODULES.get(axis)]
    for module in modules:
        if module:
            importlib.import_module(module)
