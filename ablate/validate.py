"""Refuse a bad config before anything trains, with one paragraph naming key, value and choices.

Each knob's own range and choices are declared on its dataclass field (`components.knobs.knob`) and
checked by `components.knobs.problems`; relations between keys are checked here; a check that belongs
to one option lives on its class as `check_config(...)` (it receives the keywords it names, like a
constructor) and returns a message or None, so adding an option never means editing this file. A knob
the chosen option does not read (`tokenizer=byte tokenizer.vocab_size=300`) is refused, found from what
each option reads (`knobs_read`), not from a list here.
"""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from components.knobs import problems
from components.registry import UnknownOption, accepted_kwargs, lookup, options

CONF = Path(__file__).resolve().parents[1] / "conf"

# config groups whose `name` is a registry key of the same axis
REGISTERED_GROUPS = ("norm", "norm_pos", "ffn", "block", "pos", "attn", "qk_norm", "moe", "data", "tokenizer",
                     "schedule", "logger")


class ConfigError(ValueError):
    """A config that cannot be trained; str(error) is the whole user-facing message."""


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """Raise ConfigError for the first problem found; return None when the config can train.

    `overrides`: the key=value list of a single run's command line. A knob it sets that the chosen
    option does not read is refused (`tokenizer=byte tokenizer.vocab_size=300`); knobs set by presets
    and sweep files are not, since those set knobs for several options. Multirun jobs pass None: a
    sweep's fixed overrides may serve the other options of its grid (`-m moe=off,topk moe.top_k=1`).
    """
    found = problems(cfg)  # every field's declared rule (components.knobs): range, finiteness, unknown keys
    if found:
        raise ConfigError(found[0] if len(found) == 1 else f"{len(found)} settings are not allowed: " + " ".join(found))
    for group in REGISTERED_GROUPS:
        try:
            lookup(group, cfg[group].name)
        except UnknownOption as error:
            raise ConfigError(f"{group}.name: {error}.") from None

    m, t = cfg.model, cfg.train
    require(m.d_model % m.n_heads == 0,
            f"model.n_heads={m.n_heads} does not divide model.d_model={m.d_model}: every head gets "
            f"d_model / n_heads dimensions. Allowed n_heads for d_model={m.d_model}: {divisors(m.d_model)}.")
    if m.n_kv_heads is not None:
        require(m.n_heads % m.n_kv_heads == 0,
                f"model.n_kv_heads={m.n_kv_heads} does not divide model.n_heads={m.n_heads}: each key/value "
                f"head serves n_heads / n_kv_heads query heads. Allowed: null (= n_heads) or one of "
                f"{divisors(m.n_heads)} (1 = multi-query attention).")
    require(t.batch_size % t.grad_accum == 0,
            f"train.grad_accum={t.grad_accum} does not divide train.batch_size={t.batch_size}; allowed: "
            f"{divisors(t.batch_size)}.")
    require(len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas),
            f"optim.betas={list(cfg.optim.betas)} is not allowed: two numbers in [0, 1).")
    check_device(t.device)
    unread = unread_knobs(cfg, overrides)
    require(not unread, " ".join(unread))

    context = option_context(cfg)
    for group in REGISTERED_GROUPS:
        option = lookup(group, cfg[group].name)
        checker = getattr(option, "check_config", None)
        if checker is not None:
            message = checker(**accepted_kwargs(checker, context))
            require(message is None, str(message))


def check_device(name: str) -> None:
    """Refuse a train.device this machine does not have, before anything is written."""
    kind, _, index = name.partition(":")
    require(name == "auto" or (kind in ("cpu", "cuda", "mps") and (not index or index.isdigit())),
            f"train.device={name!r} is not allowed; choices: auto, cpu, cuda, cuda:N, mps.")
    if kind not in ("cuda", "mps"):
        return
    import torch  # only here: composing and checking the rest of a config never imports torch

    if kind == "mps":
        require(torch.backends.mps.is_available(),
                f"train.device={name!r} is not available on this machine (torch.backends.mps.is_available() is "
                f"False). Allowed here: auto, cpu{', cuda' if torch.cuda.is_available() else ''}.")
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    build = "a CPU-only build of torch" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
    require(count > 0, f"train.device={name!r} is not available on this machine: torch sees no CUDA device "
                       f"({build}). Allowed here: auto, cpu.")
    require(not index or int(index) < count,
            f"train.device={name!r} is not available: this machine has {count} CUDA device(s), "
            f"cuda:0 to cuda:{count - 1}. Allowed here: auto, cpu, cuda, cuda:0 .. cuda:{count - 1}.")


def knobs_read(option: Any) -> set[str] | None:
    """The knobs of its config group an option reads, or None when it takes them all.

    An option may declare them (`reads = ("vocab_size",)`) or its own `Config` dataclass; otherwise they
    are the keywords its constructor names, since the registry passes each class only those."""
    declared = getattr(option, "reads", None)
    if declared is not None:
        return set(declared)
    config = getattr(option, "Config", None)
    if dataclasses.is_dataclass(config):
        return {f.name for f in dataclasses.fields(config)}
    if not isinstance(option, type):
        return None
    params = inspect.signature(option.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None  # also classes that do not define __init__ (object's takes *args, **kwargs)
    return {p.name for p in params}


def explicit_keys(overrides: list[str]) -> set[str]:
    """Dotted keys a command line sets (`+a.b=1`, `++a.b=1`, `a.b=1`; not `~a.b`)."""
    return {o.split("=", 1)[0].lstrip("+") for o in overrides if "=" in o and not o.startswith("~")}


def unread_knobs(cfg: DictConfig, overrides: list[str] | None) -> list[str]:
    """One sentence per knob `overrides` set to a value the chosen option would silently ignore."""
    if not overrides:
        return []
    explicit = explicit_keys(overrides)
    found = []
    for group in REGISTERED_GROUPS:
        name = cfg[group].name
        reads = knobs_read(lookup(group, name))
        if reads is None:
            continue
        reads &= set(cfg[group].keys())
        own = own_values(group, name, cfg[group])
        for key, value in cfg[group].items():
            path = f"{group}.{key}"
            if key == "name" or key in reads or value == own.get(key) or path not in explicit:
                continue
            readers = [o for o in options(group) if (lambda r: r is None or key in r)(knobs_read(lookup(group, o)))]
            found.append(f"{path}={value!r} has no effect with {group}={name}, which reads "
                         f"{', '.join(f'{group}.{k}' for k in sorted(reads)) or f'none of the {group}.* knobs'}: "
                         f"remove it, or choose a {group} option that reads it ({', '.join(readers) or 'none does'}).")
    return found


def own_values(group: str, name: str, node: DictConfig) -> dict[str, Any]:
    """The values an option sets for its group: its conf/GROUP/NAME.yaml over the schema's defaults."""
    schema = OmegaConf.get_type(node)
    values = OmegaConf.to_container(OmegaConf.structured(schema)) if dataclasses.is_dataclass(schema) else {}
    path = CONF / group / f"{name}.yaml"
    if path.is_file():
        values.update(OmegaConf.to_container(OmegaConf.load(path)))
    return values


def option_context(cfg: DictConfig) -> dict[str, Any]:
    """What an option's check_config may ask for, by keyword."""
    m = cfg.model
    context = {f"{group}_{key}": value for group, options in cfg.items() if group != "train"
               for key, value in options.items()}
    context.update(
        d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads, n_kv_heads=m.n_kv_heads or m.n_heads,
        head_dim=m.d_model // m.n_heads, context_length=m.context_length, vocab_size=cfg.tokenizer.vocab_size,
        cfg=cfg,
    )
    return context
