"""Refuse a bad config before anything trains, with one paragraph naming key, value and choices.

Each knob's own range and choices are declared on its dataclass field (`components.knobs.knob`) and
checked by `components.knobs.problems`; a knob the chosen option does not have (`tokenizer=byte
tokenizer.vocab_size=300`) is refused by the option's own schema at composition. Relations between
keys are checked here; a check that belongs to one option lives on its class as `check_config(cfg)`
(it receives the whole typed config) and returns a message or None, so adding an option never means
editing this file.
"""
from __future__ import annotations

from omegaconf import DictConfig

from ablate.config.schema import CONF, choices
from ablate.errors import ConfigError
from components.knobs import problems, typed
from components.registry import AXES, lookup


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def option_problem(group: str, option: str) -> str | None:
    """The one check of a chosen option, `group=option` on the command line or a composed `group.name`:
    None when conf/GROUP/OPTION.yaml exists (each is its registered class's schema, tests/test_add_option.py),
    else one sentence naming the valid choices."""
    valid = choices(group)
    if option in valid:
        return None
    return (f"{group}={option} is not an option of the config group `{group}`. Valid choices: {', '.join(valid)} "
            f"(one YAML file each in conf/{group}/).")


def is_group(group: str) -> bool:
    return (CONF / group).is_dir()


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check(cfg: DictConfig) -> None:
    """Raise ConfigError for the first problem found; return None when the config can train."""
    found = problems(cfg)  # every field's declared rule (components.knobs): range, finiteness, unknown keys
    if found:
        raise ConfigError(found[0] if len(found) == 1 else f"{len(found)} settings are not allowed: " + " ".join(found))
    for group in AXES:  # `norm.name=...` or a preset's choice; the command line's `norm=...` was checked before Hydra
        message = option_problem(group, cfg[group].name)
        require(message is None, f"{group}.name: {message}")

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
    check_device(t.device)

    options = typed(cfg)
    for group in AXES:
        checker = getattr(lookup(group, cfg[group].name), "check_config", None)
        if checker is not None:
            message = checker(options)
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

