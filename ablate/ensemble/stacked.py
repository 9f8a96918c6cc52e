"""The model with a member dimension: several members' forward passes as one.

A batched ensemble of M members of one architecture runs one forward pass over M x batch sequences:
member i's sequences are rows i*B .. (i+1)*B - 1 of the batch ("folded" into it). Everything that treats
rows independently (attention, RoPE, activations, soft-caps, the causal mask) runs unchanged on the folded
batch; each layer that holds parameters has a stacked form here, which unfolds the batch to
(M, B*T, features) and applies every member's own weights at once: batched matmuls over the members'
stacked weights (torch.bmm) for linear layers, per-member tables for embeddings, per-member gains for norms
(a LayerNorm: each member's own on its rows).

Why not `torch.func.vmap` over `functional_call`: measured slower than running the members one after
another (0.73x in fp32, 0.79x in bf16, 3 members at `nano`), because the CPU kernel of
scaled_dot_product_attention has no batching rule and vmap falls back to a loop over members.

The members keep their parameters: a stacked layer holds references to the members' own modules and stacks
their weights at each forward (autograd hands each member its own gradient), so every member's optimizer,
gradient clipping, checkpoint and sample stay exactly those of a run of its own, and a member that stops
(diverged) simply leaves the selection. Stacking copies the weights once per forward, a small share of a
step (see `python -m ablate.bench --sweep`).

A module type gets its stacked form by `@stacked_form(ModuleType)`; the form applies to subclasses that do
not override `forward`. A module with parameters and no stacked form makes the model unbatchable
(`NotBatchable` names it), and so does anything that mixes rows of the batch (a router's load-balancing
loss) or draws random numbers (dropout).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ablate.model import Transformer
from components.ffn import GatedMLP
from components.knobs import typed
from components.norms import RMSNorm
from components.positional import LearnedPositions


class NotBatchable(Exception):
    """This configuration cannot train as a batched ensemble; str() says why, in one line."""


class Selection:
    """The members (indices into every stacked layer's member list) that the next forward computes,
    shared by all stacked layers of one ensemble, in the order their rows are folded into the batch."""

    def __init__(self) -> None:
        self.indices: list[int] = []


class Stacked(nn.Module):
    """A layer of several members, computed at once from the members' own modules at one place in the model."""

    def __init__(self, members: Sequence[nn.Module], selection: Selection):
        super().__init__()
        self.__dict__["members"] = list(members)  # a plain list: the members own these modules and their weights
        self.selection = selection

    @property
    def n(self) -> int:
        return len(self.selection.indices)

    def stack(self, get: Callable[[nn.Module], torch.Tensor | None]) -> torch.Tensor | None:
        """(M, ...) from `get(member module)` of each selected member (None if the module has none)."""
        tensors = [get(self.members[i]) for i in self.selection.indices]
        return None if tensors[0] is None else torch.stack(tensors)

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        """(M * B, ..., features) -> (M, B * ..., features): each member's rows together."""
        return x.reshape(self.n, -1, x.shape[-1])


FORMS: dict[type, type[Stacked]] = {}


def stacked_form(module_type: type) -> Callable[[type[Stacked]], type[Stacked]]:
    def register(form: type[Stacked]) -> type[Stacked]:
        FORMS[module_type] = form
        return form
    return register


def form_of(module: nn.Module) -> type[Stacked] | None:
    """The stacked form for `module`: that of the nearest registered base class whose `forward` it inherits."""
    for cls in type(module).__mro__:
        if cls in FORMS:
            return FORMS[cls] if type(module).forward is cls.forward else None
    return None


def batched_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Per member x_i W_i^T + b_i: x (M, N, in), weight (M, out, in), bias (M, out) -> (M, N, out)."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


@stacked_form(nn.Linear)
class StackedLinear(Stacked):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.stack(lambda m: m.weight)
        y = batched_linear(self.unfold(x), weight, self.stack(lambda m: m.bias))
        return y.reshape(*x.shape[:-1], weight.shape[1])


@stacked_form(nn.Embedding)
class StackedEmbedding(Stacked):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        tables = self.stack(lambda m: m.weight)  # (M, V, D): member i's ids index rows i*V .. (i+1)*V - 1
        n, vocab = tables.shape[:2]
        offsets = torch.arange(n, device=idx.device).mul_(vocab).unsqueeze(1)
        ids = idx.reshape(n, -1) + offsets
        return F.embedding(ids, tables.flatten(0, 1)).reshape(*idx.shape, tables.shape[-1])


@stacked_form(RMSNorm)
class StackedRMSNorm(Stacked):
    """x / rms(x) over all rows at once, then member i's gain on its rows: what torch's (composite) CPU
    rms_norm computes for a run alone, to the bit (tests/test_batched.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalized = F.rms_norm(x, x.shape[-1:], None, self.members[0].eps)
        gain = self.stack(lambda m: m.weight)  # (M, D)
        return (normalized.unflatten(0, (self.n, -1)) * gain.view(self.n, *[1] * (x.dim() - 1), -1)).flatten(0, 1)


@stacked_form(nn.LayerNorm)
class StackedLayerNorm(Stacked):
    """Each member's own LayerNorm on its own rows, one call per member: torch's fused LayerNorm kernel
    rounds differently from normalize-then-scale (measured: 6.5e-4 relative after 30 `nano` steps, which
    Adam amplifies), and M calls of an element-wise kernel cost little."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.unflatten(0, (self.n, -1))
        return torch.cat([self.members[i](own) for i, own in zip(self.selection.indices, rows, strict=True)])


@stacked_form(GatedMLP)
class StackedGatedMLP(Stacked):
    """(act(x W) * x V) W2 per member; W and V are the halves of each member's fused gate_up matrix."""

    def __init__(self, members: Sequence[nn.Module], selection: Selection):
        super().__init__(members, selection)
        self.activation = members[0].activation
        self.down = StackedLinear([m.down for m in members], selection)
        self.dropout = members[0].dropout  # the identity (dropout > 0 is not batchable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d_ff = self.members[0].gate_up.weight.shape[0] // 2
        xs = self.unfold(x)
        bias = self.stack(lambda m: m.gate_up.bias)
        gate_bias, up_bias = (None, None) if bias is None else (bias[:, :d_ff], bias[:, d_ff:])
        gate = batched_linear(xs, self.stack(lambda m: m.gate_up.weight[:d_ff]), gate_bias)
        up = batched_linear(xs, self.stack(lambda m: m.gate_up.weight[d_ff:]), up_bias)
        hidden = (self.activation(gate) * up).reshape(*x.shape[:-1], d_ff)
        return self.dropout(self.down(hidden))


@stacked_form(LearnedPositions)
class StackedLearnedPositions(Stacked):
    """Each member's own position table added to its rows; the position hooks it does not use stay no-ops."""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        table = self.stack(lambda m: m.weight)[:, : x.shape[1]].to(x.dtype)  # (M, T, D)
        return (x.unflatten(0, (self.n, -1)) + table.unsqueeze(1)).flatten(0, 1)

    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.members[0].rotate(q, k)

    def attention_bias(self, length: int, device: torch.device) -> torch.Tensor | None:
        return self.members[0].attention_bias(length, device)


def why_not_batchable(cfg: Any) -> str | None:
    """Why a configuration cannot train as a batched ensemble, in one line; None when it can.

    Checks what the config says (dropout, compile) and then the model itself, built on the meta device
    (no memory, no time): every module with parameters needs a stacked form, nothing may mix the rows of
    members (a router's load-balancing loss over the batch)."""
    if cfg.model.dropout > 0:
        return (f"model.dropout={cfg.model.dropout}: dropout masks come from one random stream per process, so "
                f"an ensemble cannot reproduce each member's own masks")
    if cfg.train.compile:
        return "train.compile=true: the batched ensemble runs eagerly"
    with torch.device("meta"):
        model = Transformer(typed(cfg), 8)
    try:
        EnsembleModel([model])
    except NotBatchable as reason:
        return str(reason)
    return None


# hooks ablate.model.Transformer collects from its modules: each reads or acts on the whole batch's statistics
BATCH_WIDE = ("last_aux_losses", "last_diagnostics", "after_optimizer_step")


class EnsembleModel(nn.Module):
    """`forward(idx, members)`: the logits of the selected members, their rows folded as in `idx`.

    Built from the members' models (the same architecture): a copy of the first as the skeleton
    (its parameter-free modules and buffers: attention kernels, RoPE tables), with every module that holds
    parameters replaced by its stacked form over the members' modules at the same place."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.selection = Selection()
        self.n_members = len(models)
        skeleton = copy.deepcopy(models[0])
        self.skeleton = self._replace("model", skeleton, list(models))

    def _replace(self, path: str, module: nn.Module, members: list[nn.Module]) -> nn.Module:
        form = form_of(module)
        if form is not None:
            return form(members, self.selection)
        name = type(module).__name__
        if path != "model" and any(hasattr(module, hook) for hook in BATCH_WIDE):  # (the model's own: its modules')
            raise NotBatchable(f"{name} ({path}) computes over the whole batch or adapts between steps (a router's "
                               f"load-balancing losses, expert load, balancing biases), which would mix the members")
        if any(True for _ in module.parameters(recurse=False)):
            raise NotBatchable(f"{name} ({path}) holds parameters and has no stacked form in "
                               f"ablate/ensemble/stacked.py")
        for child_name, child in list(module._modules.items()):
            if child is not None:
                module._modules[child_name] = self._replace(f"{path}.{child_name}", child,
                                                            [m._modules[child_name] for m in members])
        return module

    def forward(self, idx: torch.Tensor, members: Sequence[int]) -> torch.Tensor:
        self.selection.indices = list(members)
        return self.skeleton(idx)
