"""Refuse a bad config before anything trains, with one paragraph naming key, value and choices.

General checks live here; a check that belongs to one option lives on its class as
`check_config(cfg)` (it receives the whole typed config) and returns a message or None, so
adding an option never means editing this file.
"""
from __future__ import annotations


from omegaconf import DictConfig

from components.knobs import problems, typed
from components.registry import AXES, UnknownOption, lookup


class ConfigError(ValueError):
    """A config that cannot be trained; str(error) is the whole user-facing message."""


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check(cfg: DictConfig) -> None:
    """Raise ConfigError for the first problem found; return None when the config can train."""
    found = problems(cfg)
    require(not found, " ".join(found[:3]))
    for group in AXES:
        try:
            lookup(group, cfg[group].name)
        except UnknownOption as error:
            raise ConfigError(f"{group}.name: {error}.") from None

    m, t = cfg.model, cfg.train
    for key in ("d_model", "n_layers", "n_heads", "context_length"):
        require(m[key] >= 1, f"model.{key}={m[key]} is not allowed: it must be a positive integer.")
    require(m.d_model % m.n_heads == 0,
            f"model.n_heads={m.n_heads} does not divide model.d_model={m.d_model}: every head gets "
            f"d_model / n_heads dimensions. Allowed n_heads for d_model={m.d_model}: {divisors(m.d_model)}.")
    if m.n_kv_heads is not None:
        require(m.n_kv_heads >= 1 and m.n_heads % m.n_kv_heads == 0,
                f"model.n_kv_heads={m.n_kv_heads} does not divide model.n_heads={m.n_heads}: each key/value "
                f"head serves n_heads / n_kv_heads query heads. Allowed: null (= n_heads) or one of "
                f"{divisors(m.n_heads)} (1 = multi-query attention).")
    require(0.0 <= m.dropout < 1.0, f"model.dropout={m.dropout} is not allowed: use a value in [0, 1).")

    require(t.max_steps >= 1, f"train.max_steps={t.max_steps} is not allowed: at least 1.")
    require(t.batch_size >= 1, f"train.batch_size={t.batch_size} is not allowed: at least 1.")
    require(t.grad_accum >= 1 and t.batch_size % t.grad_accum == 0,
            f"train.grad_accum={t.grad_accum} does not divide train.batch_size={t.batch_size}; allowed: "
            f"{divisors(t.batch_size)}.")
    require(t.eval_interval >= 1, f"train.eval_interval={t.eval_interval} is not allowed: at least 1.")
    require(t.eval_batches >= 1, f"train.eval_batches={t.eval_batches} is not allowed: at least 1.")
    require(t.log_interval >= 1, f"train.log_interval={t.log_interval} is not allowed: at least 1.")
    require(t.resume in ("auto", "never"), f"train.resume={t.resume!r} is not allowed; choices: auto, never.")
    require(t.dtype in ("auto", "fp32", "bf16"), f"train.dtype={t.dtype!r} is not allowed; choices: auto, fp32, bf16.")
    require(t.device == "auto" or t.device.split(":")[0] in ("cpu", "cuda", "mps"),
            f"train.device={t.device!r} is not allowed; choices: auto, cpu, cuda, cuda:N, mps.")

    options = typed(cfg)
    for group in AXES:
        checker = getattr(lookup(group, cfg[group].name), "check_config", None)
        if checker is not None:
            message = checker(options)
            require(message is None, str(message))
