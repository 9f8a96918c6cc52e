"""The composed config's schema, registered in Hydra's ConfigStore as `schema/config`.

The design axes come from the registry, not from a list here: every registered axis is a field
whose type is the chosen option's own Config (`conf/<axis>/<option>.yaml` extends
`/schema/<axis>/<option>`, which registration stored), so an unknown knob, a knob of another
option or a wrong type fails at composition. Next to them sit the plain sections: the model's
shape (`model`), the training loop (`train`), how a sweep report compares runs (`compare`) and
the scale ladder a run belongs to (`ladder`, applied by ablate/config/rungs.py; empty unless `+ladder=NAME`).
A knob states its allowed values once, on its field (`components.knobs.knob`); `ablate.config.validate`
checks every value against it.

This module only assembles: the axes are registered by `ablate.config.axes` (imported first, since the
schema has a field per registered axis) and typed objects come from `components.knobs.typed`.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

import ablate.config.axes  # noqa: F401  (registers every axis: the schema below has a field per axis)
from ablate.config import plugins
from components.knobs import knob
from components.registry import AXES, config_of
from components.shape import ModelConfig

LR_RULES = ("inverse_width", "constant")  # how ablate/config/rungs.py scales optim.lr from rung to rung


@dataclass
class TrainConfig:
    max_steps: int = knob(800, ge=1, doc="optimizer steps")
    batch_size: int = knob(16, ge=1, doc="sequences per optimizer step (the global batch)")
    grad_accum: int = knob(1, ge=1, doc="micro-steps per optimizer step; must divide train.batch_size")
    seed: int = knob(0, ge=0, lt=2**63, doc="seeds the weights and the data order")
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (checked against this machine by validate)
    dtype: str = knob("auto", choices=("auto", "fp32", "bf16"),
                      doc="auto: bf16 autocast where it measures fast (ablate.machine.hardware), fp32 elsewhere")
    compile: bool = False
    eval_interval: Optional[int] = knob(None, ge=1, doc="steps between validation losses; null = max_steps / 10 "
                                        "(ablate/training/evaluation.py)")
    eval_batches: int = knob(8, ge=1, doc="fixed validation windows, the same for every run of a sweep")
    final_eval_tokens: Optional[int] = knob(
        262144, ge=1, doc="the final loss (final_val_loss) over the held-out split's non-overlapping windows, "
        "evenly spread, up to this many tokens (the whole split if smaller): less noise than eval_batches' "
        "windows; null = the eval_batches windows")
    log_interval: int = knob(10, ge=1, doc="steps between rows of metrics.jsonl")
    resume: str = knob("auto", choices=("auto", "never"),
                       doc="auto: continue from the run directory's checkpoint if there is one")
    threads: Optional[int] = knob(None, ge=1, doc="torch CPU threads; null = torch's default")
    sample_tokens: int = knob(200, ge=0, doc="tokens sampled into samples.txt at the end")
    sample_temperature: float = knob(0.8, ge=0, doc="0 = greedy")
    sample_top_p: float = knob(0.95, gt=0, le=1, doc="nucleus sampling mass")
    sample_prompt: str = "\n"
    divergence_factor: float = knob(3.0, gt=1, finite=False,
                                    doc="stop as diverged when the loss exceeds factor * initial loss; inf = never")
    save_trunk: bool = knob(False, doc="with schedule=wsd: keep the state where the decay begins in "
                            "checkpoints/trunk.pt, so a longer run can continue it (train.branch_from)")
    branch_from: Optional[str] = knob(None, doc="a run directory whose checkpoints/trunk.pt this fresh run starts "
                                      "from: the same configuration trained longer (wsd, Hagele et al. 2024); "
                                      "the tuning sweeper's successive halving continues a rate this way")


@dataclass
class CompareConfig:
    """How the sweep report compares options; analysis reads it from each run's config, so a sweep
    file sets it (`compare: {baseline: {ffn: gelu}, tuned: [optim.lr]}`)."""

    baseline: Dict[str, str] = knob(default_factory=dict, doc="axis -> the option every other option of "
                                    "that axis is compared with; an axis not named uses its conf/config.yaml default")
    tuned: List[str] = knob(default_factory=list, doc="config keys tuned per variant (e.g. optim.lr), "
                            "not compared: each variant is judged at its own best value")
    alpha: float = knob(0.05, gt=0, lt=1, doc="family-wise error rate of the report's tests (Holm-corrected)")
    stage: str = knob("verdict", choices=("verdict", "tune"), doc="set by the tuning sweeper: `tune` runs "
                      "only choose the tuned values and never enter the verdict")
    looks: Optional[List[int]] = knob(None, doc="verdict seeds at each look of a sequential plan, e.g. [3, 6, 10] "
                                      "(hydra/sweeper=ablate_tuned): after each look only comparisons still open "
                                      "get more seeds; null: every seed at once")
    look: Optional[int] = knob(None, ge=1, doc="set by the tuning sweeper: the look this verdict run belongs to")
    spending: str = knob("obrien_fleming", choices=("obrien_fleming", "pocock"),
                         doc="how alpha is spent over the looks (Lan-DeMets): obrien_fleming keeps most for the "
                             "last look, pocock spends early so large effects stop sooner")
    futility: float = knob(0.05, ge=0, lt=1, doc="an open comparison gets the next look's seeds only while its "
                           "conditional power (current trend) is at least this")
    budget: Dict[str, float] = knob(default_factory=dict, doc="caps the sweep: {runs: N} (every job counted) or "
                                    "{minutes: M} (this invocation's wall clock); a look that would pass it "
                                    "continues only the comparisons it can afford, most promising first")


@dataclass
class LadderConfig:
    """The `ladder` section: empty (no ladder) unless `+ladder=NAME` fills it."""

    name: Optional[str] = None
    rung: Optional[int] = knob(None, ge=0, doc="which size of the ladder this run trains (an index into "
                                               "ladder.widths); null = no ladder")
    widths: List[int] = field(default_factory=list)  # d_model of each rung, smallest first (checked in `rungs`)
    aspect_ratio: int = knob(32, ge=1, doc="d_model / n_layers at every rung")
    head_dim: int = knob(32, ge=1, doc="d_model / n_heads at every rung")
    tokens_per_param: float = knob(1.0, gt=0, doc="training tokens per non-embedding parameter "
                                                  "(12 n_layers d_model^2) of the rung")
    lr_rule: str = knob("inverse_width", choices=LR_RULES,
                        doc="inverse_width: optim.lr x lr_reference_width / d_model; constant: optim.lr at every rung")
    lr_reference_width: int = knob(128, ge=1, doc="the width at which optim.lr applies as given")
    warmup_fraction: Optional[float] = knob(0.1, ge=0, le=1, doc="schedule.warmup_steps = this x the rung's "
                                                                 "steps; null = keep schedule.warmup_steps")
    reference_lr: Optional[float] = knob(None, gt=0, doc="optim.lr as given (the rate at lr_reference_width), "
                                                         "recorded when the rung is applied: leave it null")


def axis_fields() -> list[tuple[str, Any, Any]]:
    """One field per registered axis, typed by the chosen option's Config at composition."""
    return [(name, Any, field(default=MISSING)) for name in AXES]


Config = dataclasses.make_dataclass(
    "Config",
    [("model", ModelConfig, field(default_factory=ModelConfig)), *axis_fields(),
     ("train", TrainConfig, field(default_factory=TrainConfig)),
     ("compare", CompareConfig, field(default_factory=CompareConfig)),
     ("ladder", LadderConfig, field(default_factory=LadderConfig))],
    namespace={"__module__": __name__, "__doc__": "The whole config of one run: model shape, one option per axis, training."},
)

ConfigStore.instance().store(group="schema", name="config", node=Config)


plugins.expose()  # hydra/sweeper=ablate_tuned (hydra_plugins/), before Hydra scans for plugins


def structured(tree: dict | DictConfig, base: DictConfig | None = None) -> DictConfig:
    """A typed DictConfig from a plain mapping (a checkpoint's or a converted model's config): each
    axis is merged into the schema of the option its `name` says; sections `tree` leaves out come
    from `base` (a composed config)."""
    tree = OmegaConf.to_container(tree, resolve=True) if isinstance(tree, DictConfig) else dict(tree)
    cfg = copy.deepcopy(base) if base is not None else OmegaConf.structured(Config)
    for key, value in tree.items():
        if key in AXES:
            cfg[key] = OmegaConf.merge(OmegaConf.structured(config_of(key, value["name"])), value)
        else:
            cfg[key] = OmegaConf.merge(cfg[key], value) if isinstance(cfg.get(key), DictConfig) else value
    return cfg


CONF = Path(__file__).resolve().parents[2] / "conf"


def choices(group: str, conf: Path = CONF) -> list[str]:
    """The options of a config group: one YAML file each in conf/GROUP/ (what Hydra composes from)."""
    return sorted(p.stem for p in (conf / group).glob("*.yaml"))


def with_option(cfg: DictConfig, axis_name: str, option_name: str) -> DictConfig:
    """A copy of `cfg` with `axis_name=option_name`, as Hydra's defaults list makes it: the option's
    YAML values over its schema (a whole Hydra composition per option costs a third of a second)."""
    values = OmegaConf.load(CONF / axis_name / f"{option_name}.yaml")
    values.pop("defaults", None)
    cfg = copy.deepcopy(cfg)
    # a registered axis has a schema per option; a plain group (model sizes) one schema for all
    schema = config_of(axis_name, option_name) if axis_name in AXES else OmegaConf.get_type(cfg, axis_name)
    cfg[axis_name] = OmegaConf.merge(OmegaConf.structured(schema), values)
    return cfg


@functools.lru_cache(maxsize=None)
def _compose(overrides: tuple[str, ...]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():  # initialized once per process: composing is then cheap
        initialize_config_dir(config_dir=str(CONF), version_base=None)
    return hydra_compose("config", overrides=list(overrides))


def compose(*overrides: str) -> DictConfig:
    """The config `python ablate/run.py OVERRIDES` would train (Hydra's compose API over conf/)."""
    return copy.deepcopy(_compose(tuple(overrides)))
