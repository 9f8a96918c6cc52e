"""The registry: (axis, name) -> class. A new option is one decorated class and one YAML file.

    @register("norm", "rms")
    class RMSNorm(nn.Module):
        @dataclass
        class Config(OptionConfig):     # the option's knobs, typed once, next to its code
            eps: float = knob(1e-5, gt=0)

        def __init__(self, cfg: Config, dim: int, bias: bool = False): ...

    cfg.norm.build(dim=128)             # -> RMSNorm(cfg.norm, dim=128)

Registration stores the option's `Config` in Hydra's ConfigStore as `schema/<axis>/<name>`, and
`conf/<axis>/<name>.yaml` starts from it (`defaults: [/schema/<axis>/<name>@_here_]`), so the
YAML only sets values and a misspelled or foreign knob fails at composition. `name` is filled in
by registration. Axes are declared once, with `axis(...)`, by the module that holds their options.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TypeVar

from omegaconf import MISSING

T = TypeVar("T")


KINDS = ("model", "data", "training", "logging")


@dataclass(frozen=True)
class Axis:
    """One design axis = one config group (conf/<name>/) = one module of options."""

    name: str
    doc: str
    kind: str  # one of KINDS: what the axis chooses a part of

    @property
    def shapes_checkpoint(self) -> bool:
        """A checkpoint trained under one option cannot continue under another (weights or data differ)."""
        return self.kind in ("model", "data")


AXES: dict[str, Axis] = {}
_REGISTRY: dict[str, dict[str, type]] = {}


def axis(name: str, doc: str, *, kind: str = "model") -> Axis:
    """Declare a design axis (once, in the module that holds its options)."""
    if kind not in KINDS:
        raise ValueError(f"axis {name!r}: kind={kind!r}, expected one of {KINDS}")
    declared = Axis(name, doc, kind)
    if AXES.setdefault(name, declared) != declared:
        raise ValueError(f"axis {name!r} is declared twice, differently: {AXES[name]} and {declared}")
    _REGISTRY.setdefault(name, {})
    return declared


@dataclass
class OptionConfig:
    """Base of every option's Config: `name` is the option (set by registration); `build` makes the
    registered class from this config and whatever the assembly hands it (sizes, built modules)."""

    name: str = MISSING
    axis: ClassVar[str]
    component: ClassVar[type]

    def build(self, *args: Any, **kwargs: Any) -> Any:
        return type(self).component(self, *args, **kwargs)


class UnknownOption(KeyError):
    """A (axis, name) pair that nothing registered."""

    def __init__(self, axis_name: str, name: str):
        self.axis, self.name = axis_name, name
        valid = ", ".join(sorted(_REGISTRY.get(axis_name, {}))) or "(none registered)"
        super().__init__(f"{axis_name}={name!r} is not a registered option; valid choices: {valid}")

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return self.args[0]


def register(axis_name: str, name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: make `cls` the option `name` of the declared axis `axis_name`.

    The class's `Config` (an OptionConfig dataclass; none means no knobs) becomes the option's own
    schema, a subclass whose `name` defaults to `name`, registered in Hydra's ConfigStore."""

    def decorator(cls: type[T]) -> type[T]:
        if axis_name not in AXES:
            raise ValueError(f"register({axis_name!r}, {name!r}): declare the axis first with axis({axis_name!r}, ...)")
        options = _REGISTRY[axis_name]
        if name in options and options[name] is not cls:
            raise ValueError(f"{axis_name}/{name} is registered twice: {options[name]} and {cls}")
        base = cls.__dict__.get("Config") or getattr(cls, "Config", OptionConfig)
        if not (isinstance(base, type) and issubclass(base, OptionConfig) and dataclasses.is_dataclass(base)):
            raise TypeError(f"{cls.__qualname__}.Config must be a dataclass deriving from OptionConfig")
        config = dataclasses.make_dataclass(
            f"{cls.__name__}Config", [("name", str, dataclasses.field(default=name))], bases=(base,),
            namespace={"__module__": cls.__module__, "__doc__": f"Settings of {axis_name}={name}."})
        config.axis, config.component = axis_name, cls
        config.__qualname__ = f"{cls.__qualname__}.Config"
        cls.Config = config  # type: ignore[attr-defined]
        cls.registered_as = (axis_name, name)  # type: ignore[attr-defined]
        options[name] = cls
        _store_schema(axis_name, name, config)
        return cls

    return decorator


def _store_schema(axis_name: str, name: str, config: type) -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group=f"schema/{axis_name}", name=name, node=config)


def lookup(axis_name: str, name: str) -> Any:
    """The class registered as `axis_name/name`; raises UnknownOption listing the valid names."""
    try:
        return _REGISTRY[axis_name][name]
    except KeyError:
        raise UnknownOption(axis_name, name) from None


def axes(kind: str | None = None) -> list[str]:
    """Declared axes in declaration order, all of them or those of one kind."""
    return [name for name, declared in AXES.items() if kind is None or declared.kind == kind]


def options(axis_name: str) -> list[str]:
    """Registered option names of one axis, sorted."""
    return sorted(_REGISTRY.get(axis_name, {}))


def config_of(axis_name: str, name: str) -> type[OptionConfig]:
    """The schema (Config dataclass) of one option."""
    return lookup(axis_name, name).Config


def option(axis_name: str, name: str, **settings: Any) -> OptionConfig:
    """The typed config of one option with `settings` over its defaults; `.build(...)` makes it:
    `option("norm", "rms", eps=1e-6).build(dim=64)`."""
    return config_of(axis_name, name)(**settings)
