"""Optimizers (the `optim` axis). An option is built as `Option(cfg, model, device)` and behaves as one
torch optimizer for the training loop: `param_groups`, `zero_grad`, `step`, `state_dict`,
`load_state_dict`; every option has `lr` (the peak rate of its main parameters) and `grad_clip`.

Learning-rate schedules: every parameter group carries its own peak rate as `initial_lr` (the key
torch's LRScheduler uses), and the training loop sets `lr = initial_lr x schedule(step)` for each
group. One schedule therefore scales every rate of an optimizer by the same factor (Muon's and its
AdamW part's: their ratio stays fixed through warmup and decay). A resumed run takes its group
settings (peak rates, weight decay, betas, ...) from the config, not from the checkpoint, which
carries the optimizer's state (moments, momentum buffers, step counts): ablate.rundir.plan only resumes
a run under its own settings anyway, and a checkpoint written before `initial_lr` existed still loads.
"""
from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass, field
from typing import Any, List

import torch
from torch import nn

from components.knobs import knob
from components.registry import OptionConfig, axis, register

axis("optim", "optimizer and its learning rate", kind="training")


@dataclass
class OptimConfig(OptionConfig):
    lr: float = knob(3e-3, gt=0, doc="peak learning rate")
    weight_decay: float = knob(0.1, ge=0, doc="decoupled weight decay on matrices")
    grad_clip: float = knob(1.0, ge=0, doc="max global gradient norm; 0 disables clipping")


def decay_groups(params: list[nn.Parameter], weight_decay: float, lr: float) -> list[dict]:
    """Weight decay on matrices only; norms' gains and biases are not decayed (GPT-2, LLaMA). Each group
    carries its peak rate as `initial_lr` (the schedule multiplies it)."""
    params = [p for p in params if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return [{**group, "lr": lr, "initial_lr": lr} for group in groups if group["params"]]


def _settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def load_state_keeping_settings(optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    """`optimizer.load_state_dict`, then the group settings the config gave it back (torch would take
    the checkpoint's: a run resumed with another optim.lr or weight_decay would silently keep the old)."""
    configured = _settings(optimizer)
    torch.optim.Optimizer.load_state_dict(optimizer, state_dict)
    for group, settings in zip(optimizer.param_groups, configured, strict=True):
        group.update(settings)


@dataclass
class AdamWConfig(OptimConfig):
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = knob(1e-8, gt=0, doc="added to the root of the second moment")


def check_betas(cfg) -> str | None:
    betas = list(cfg.optim.betas)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        return f"optim.betas={betas} is not allowed: two numbers in [0, 1)."
    return None


@register("optim", "adamw")
class AdamW(torch.optim.AdamW):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019).

    The fused kernel (one pass over all parameters) is used on CPU and CUDA: on CPU it made the
    optimizer step 3x faster than torch's default per-tensor loop (`python -m ablate.bench`)."""

    Config = AdamWConfig
    check_config = staticmethod(check_betas)

    def __init__(self, cfg: AdamWConfig, model: nn.Module, device: torch.device):
        super().__init__(decay_groups(list(model.parameters()), cfg.weight_decay, cfg.lr), lr=cfg.lr,
                         betas=tuple(cfg.betas), eps=cfg.eps, fused=device.type in ("cpu", "cuda"))

    def load_state_dict(self, state_dict: dict) -> None:
        load_state_keeping_settings(self, state_dict)


# --- Muon ------------------------------------------------------------------------------------------------------

def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the linear maps inside the hidden layers (`model.blocks`; the whole module if it
    has none): attention's q/k/v and output projections, the feed-forward's matrices, MoE routers and
    experts. Not the token embedding, the output head (tied or not), position tables, norms or biases."""
    layers = getattr(model, "blocks", model)
    head = getattr(model, "head", None)
    excluded = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    found: dict[int, nn.Parameter] = {}
    for module in layers.modules():
        if isinstance(module, nn.Linear) and module.weight.requires_grad and id(module.weight) not in excluded:
            found.setdefault(id(module.weight), module.weight)
    return list(found.values())


@dataclass
class MuonConfig(AdamWConfig):
    lr: float = knob(3e-3, gt=0, doc="peak rate of the hidden matrices (Muon), in the convention optim.adjust_lr "
                     "names")
    adam_lr: float = knob(3e-3, gt=0, doc="peak rate of the AdamW part: embeddings, output head, position "
                          "tables, norms and biases")
    momentum: float = knob(0.95, ge=0, lt=1, doc="Muon's momentum")
    nesterov: bool = True
    ns_steps: int = knob(5, ge=1, le=99, doc="Newton-Schulz iterations that orthogonalize the update")
    adjust_lr: str = knob("match_rms_adamw", choices=("match_rms_adamw", "original"),
                          doc="match_rms_adamw: update scaled by 0.2 sqrt(max(out, in)), AdamW's rates carry over "
                          "(Liu et al. 2025); original: sqrt(max(1, out / in)), rates ~0.02 (Jordan et al. 2024)")


@register("optim", "muon")
class Muon:
    """Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"; torch.optim.Muon)
    on the hidden matrices, AdamW on everything else, as modded-nanogpt and nanochat split them.

    Muon keeps a Nesterov momentum of each matrix's gradient and steps along its orthogonalization
    (5 Newton-Schulz iterations, in bf16): roughly U V^T of the momentum's SVD U S V^T, so every
    direction of the update moves at the same rate. The AdamW part (embeddings, output head,
    position tables, norms, biases: `optim.adam_lr`, `betas`, `eps`) is exactly optim=adamw's,
    weight decay on its matrices only; `optim.weight_decay` also decays the Muon matrices
    (decoupled, lr x weight_decay per step, as torch.optim.Muon). So optim=adamw and optim=muon differ
    only in how the hidden matrices are updated.

    Rates: `optim.lr` is Muon's peak rate in the convention `optim.adjust_lr` names. The default,
    `match_rms_adamw` (Moonshot's, Liu et al. 2025, "Muon is Scalable for LLM Training"), scales the
    orthogonalized update by 0.2 sqrt(max(fan_out, fan_in)) so its RMS matches AdamW's, and AdamW's
    rate and weight decay carry over: the same tuning grid serves both optimizers (sweeps/optim.yaml).
    `original` is Keller Jordan's (modded-nanogpt, nanochat): the update is scaled by
    sqrt(max(1, fan_out / fan_in)), with rates around 0.02 (nanochat's matrix_lr; modded-nanogpt 0.05).
    Both rates follow the schedule with a fixed ratio (see the module docstring).

    Known simplification: ablate fuses q, k and v into one `qkv` matrix, which Muon orthogonalizes
    as one (modded-nanogpt orthogonalizes q, k, v and the output projection separately).
    """

    Config = MuonConfig
    check_config = staticmethod(check_betas)

    def __init__(self, cfg: MuonConfig, model: nn.Module, device: torch.device):
        hidden = hidden_matrices(model)
        chosen = {id(p) for p in hidden}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
        if not hidden:
            raise ValueError("optim=muon found no hidden matrices (nn.Linear weights inside model.blocks) to "
                             "orthogonalize; use optim=adamw")
        self.muon = torch.optim.Muon(hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                     nesterov=cfg.nesterov, ns_steps=cfg.ns_steps, adjust_lr_fn=cfg.adjust_lr)
        self.muon.param_groups[0]["initial_lr"] = cfg.lr
        self.adamw = torch.optim.AdamW(decay_groups(rest, cfg.weight_decay, cfg.adam_lr), lr=cfg.adam_lr,
                                       betas=tuple(cfg.betas), eps=cfg.eps,
                                       fused=device.type in ("cpu", "cuda")) if rest else None
        self.optimizers = [o for o in (self.muon, self.adamw) if o is not None]

    @property
    def param_groups(self) -> list[dict]:
        """Muon's group first (the loop logs param_groups[0]["lr"]: Muon's rate), then AdamW's; the very
        dicts the two optimizers read, so a rate set here is the rate they step with."""
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def state(self) -> ChainMap:
        """Per-parameter state of both optimizers (momentum buffers; AdamW's moments)."""
        return ChainMap(*(optimizer.state for optimizer in self.optimizers))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("optim=muon steps without a closure")
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        """Both optimizers' state dicts (plain tensors and numbers: loadable with weights_only=True)."""
        return {"muon": self.muon.state_dict(), "adamw": None if self.adamw is None else self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or set(state_dict) != {"muon", "adamw"}:
            raise ValueError("this optimizer state is not optim=muon's (it holds no 'muon' and 'adamw' parts): "
                             "a run continues only with the optimizer it was trained with")
        load_state_keeping_settings(self.muon, state_dict["muon"])
        if self.adamw is not None:
            load_state_keeping_settings(self.adamw, state_dict["adamw"])
