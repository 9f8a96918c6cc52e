"""Scale ladders (`+ladder=NAME`, conf/ladder/): one sweep key, `ladder.rung`, sets the model's size.

A ladder is a list of widths; rung i trains

    d_model  = widths[i]
    n_layers = d_model / aspect_ratio        (depth and width grow together)
    n_heads  = d_model / head_dim            (the head dimension stays fixed)
    tokens   = tokens_per_param x 12 n_layers d_model^2
    optim.lr = optim.lr x lr_reference_width / d_model     (lr_rule=inverse_width)

12 n_layers d_model^2 is the non-embedding parameter count of a block stack with d_ff = 4 d_model
(Kaplan et al. 2020, eq. 2.1); it is the same for every variant of a rung, so every variant of a
rung trains on the same tokens, in the same order for the same seed, and the report's paired tests
hold at every rung. The report measures compute from what each run recorded (flops_per_token x
tokens_seen), not from this formula.

The learning rate falls as 1/d_model (the Adam rule of muP for hidden matrices, Yang et al. 2022,
and the empirical trend of Kaplan et al. 2020, fig. 22 / DeepSeek LLM 2024 sec. 3.1): optim.lr is
the rate at `lr_reference_width`, so tuning optim.lr (hydra/sweeper=ablate_tuned) tunes the rule's
constant per rung and variant.

`apply(cfg, overrides)` writes the rung into a composed config. ablate/cli/job.py calls it once per job,
before the config is checked and saved, so `.hydra/config.yaml`, the checkpoint and the report all
see the rung's real shape and budget. Its schema, the `ladder` section, is `ablate.config.schema.LadderConfig`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from omegaconf import DictConfig, open_dict

from ablate.config.schema import compose
from ablate.errors import ConfigError
from components.knobs import problems

RUNG_KEY = "ladder.rung"


@dataclass(frozen=True)
class Rung:
    index: int
    d_model: int
    n_layers: int
    n_heads: int
    params: int       # 12 n_layers d_model^2: the rung's non-embedding parameters (d_ff = 4 d_model)
    tokens: int       # training tokens: max_steps x batch_size x context_length
    max_steps: int
    lr: float
    warmup_steps: Optional[int]


class LadderError(ConfigError):
    """A ladder that cannot be applied: refused before training like any bad config (exit 2)."""


def _shape_problem(ladder: Any, width: int) -> str | None:
    if width < 1 or width % ladder.aspect_ratio or width % ladder.head_dim:
        return (f"ladder.widths contains {width}: every width must be a positive multiple of "
                f"ladder.aspect_ratio={ladder.aspect_ratio} (n_layers = d_model / aspect_ratio) and of "
                f"ladder.head_dim={ladder.head_dim} (n_heads = d_model / head_dim).")
    return None


def rungs(ladder: Any, batch_size: int, context_length: int, lr: float) -> list[Rung]:
    """Every rung of `ladder` (the `ladder` config section) for a global batch of `batch_size`
    sequences of `context_length` tokens and the rate `lr` at the reference width."""
    widths = [int(w) for w in ladder.widths]
    if not widths:
        raise LadderError(f"ladder `{ladder.name}` has no rungs: set ladder.widths (the d_model of each rung, "
                          f"smallest first), e.g. ladder.widths=[64,128,256].")
    for width in widths:
        problem = _shape_problem(ladder, width)
        if problem:
            raise LadderError(problem)
    if widths != sorted(set(widths)):
        raise LadderError(f"ladder.widths={widths} must grow strictly from the first rung to the last.")
    batch_tokens = batch_size * context_length
    out = []
    for index, width in enumerate(widths):
        n_layers = width // ladder.aspect_ratio
        params = 12 * n_layers * width ** 2
        steps = max(1, round(ladder.tokens_per_param * params / batch_tokens))
        rate = lr * ladder.lr_reference_width / width if ladder.lr_rule == "inverse_width" else lr
        warmup = None if ladder.warmup_fraction is None else round(ladder.warmup_fraction * steps)
        out.append(Rung(index, width, n_layers, width // ladder.head_dim, params, steps * batch_tokens, steps,
                        rate, warmup))
    return out


# Keys a rung sets; typing one of them next to a ladder would be silently overwritten, so it is refused.
OWNED = ("model.d_model", "model.n_layers", "model.n_heads", "train.max_steps")


def _typed_keys(overrides: Iterable[str]) -> set[str]:
    return {str(o).split("=", 1)[0].lstrip("+~") for o in overrides if "=" in str(o)}


def apply(cfg: DictConfig, overrides: Iterable[str] = ()) -> Rung | None:
    """Write the rung `cfg.ladder.rung` into `cfg` (in place): model.d_model, n_layers, n_heads,
    train.max_steps, optim.lr, schedule.warmup_steps. No ladder (rung null): nothing changes.
    Applying twice gives the same config (the rate is recomputed from ladder.reference_lr).

    Raises LadderError (a ConfigError: refused before training, exit 2) for a rung outside the ladder,
    widths that do not fit the aspect ratio or head dimension, or a command-line override of a key
    the rung sets."""
    ladder = cfg.get("ladder")
    if ladder is None or ladder.rung is None:
        return None
    found_problems = problems(ladder, prefix="ladder.")  # the knobs' own rules first: aspect_ratio=0 cannot divide
    if found_problems:
        raise LadderError(" ".join(found_problems))
    owned = OWNED + (("schedule.warmup_steps",) if ladder.warmup_fraction is not None else ())
    clash = sorted(_typed_keys(overrides) & set(owned))
    if clash:
        raise LadderError(f"{', '.join(clash)} is set by the ladder's rung (ladder `{ladder.name}`, "
                          f"ladder.rung={ladder.rung}): the rung decides the model's shape and training budget. "
                          f"Drop it, or change the ladder itself: ladder.widths, ladder.aspect_ratio, "
                          f"ladder.head_dim, ladder.tokens_per_param"
                          + (", ladder.warmup_fraction (null keeps schedule.warmup_steps)"
                             if "schedule.warmup_steps" in clash else "") + ".")
    reference_lr = ladder.reference_lr if ladder.reference_lr is not None else cfg.optim.lr
    every = rungs(ladder, cfg.train.batch_size, cfg.model.context_length, reference_lr)
    if ladder.rung >= len(every):
        raise LadderError(f"ladder.rung={ladder.rung} is not a rung of ladder `{ladder.name}`: it has "
                          f"{len(every)} (widths {list(ladder.widths)}); choose 0 to {len(every) - 1}.")
    rung = every[ladder.rung]
    with open_dict(cfg):
        ladder.reference_lr = float(reference_lr)
        cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads = rung.d_model, rung.n_layers, rung.n_heads
        cfg.train.max_steps = rung.max_steps
        cfg.optim.lr = rung.lr
        if rung.warmup_steps is not None and "warmup_steps" in cfg.schedule:
            cfg.schedule.warmup_steps = rung.warmup_steps
    return rung


def describe(cfg: DictConfig) -> list[str]:
    """One line per rung of the config's ladder (for `python -m ablate.ladder`)."""
    ladder = cfg.ladder
    rate = ladder.reference_lr if ladder.reference_lr is not None else cfg.optim.lr
    lines = [f"ladder `{ladder.name}`: d_model / n_layers = {ladder.aspect_ratio}, head dim {ladder.head_dim}, "
             f"{ladder.tokens_per_param:g} tokens per parameter, batch {cfg.train.batch_size} x "
             f"{cfg.model.context_length} tokens, lr rule {ladder.lr_rule} (optim.lr={rate:g} at width "
             f"{ladder.lr_reference_width})"]
    for r in rungs(ladder, cfg.train.batch_size, cfg.model.context_length, rate):
        lines.append(f"  rung {r.index}: d_model {r.d_model}, {r.n_layers} layers, {r.n_heads} heads, "
                     f"{r.params:,} params (12 L d^2), {r.tokens:,} tokens = {r.max_steps:,} steps, lr {r.lr:.3g}"
                     + (f", warmup {r.warmup_steps}" if r.warmup_steps is not None else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    """`python -m ablate.ladder NAME [overrides]`: the rungs a ladder trains, without training."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m ablate.ladder NAME [KEY=VALUE ...]   (NAME: a file of conf/ladder/)", file=sys.stderr)
        return 2
    try:
        print("\n".join(describe(compose(f"+ladder={argv[0]}", *argv[1:]))))
    except LadderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
