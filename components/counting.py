"""Parameter and FLOP counts read off a built model (nanoGPT's `sum(p.numel() ...)`), not kept as a
second, hand-written copy of each component's shape.

- A module that a token only partly uses (a routed mixture of experts) says so itself with
  `matmul_weights_per_token()` and `inactive_params_per_token()`; every other module counts in full.
- An attention kernel states the FLOPs of its scores with `score_flops_per_token()` (forward), the
  only matmul work that is not a weight matrix.
Build the model on the `meta` device to count it for free.
"""
from __future__ import annotations

from torch import nn


def n_params(module: nn.Module) -> int:
    """Trainable parameters, each shared tensor once."""
    return sum(p.numel() for p in module.parameters())


def matmul_weights(module: nn.Module) -> float:
    """Weights of the matmuls one token passes through in a forward pass: every nn.Linear in full,
    except inside modules that state their own per-token share (routed experts)."""
    if hasattr(module, "matmul_weights_per_token"):
        return module.matmul_weights_per_token()
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return sum(matmul_weights(child) for child in module.children())


def inactive_params(module: nn.Module) -> int:
    """Parameters a token does not use (unchosen experts), summed over the modules that have any."""
    return sum(m.inactive_params_per_token() for m in module.modules() if hasattr(m, "inactive_params_per_token"))


def score_flops(module: nn.Module) -> int:
    """Forward FLOPs per token of the attention scores of every kernel in `module`."""
    return sum(m.score_flops_per_token() for m in module.modules() if hasattr(m, "score_flops_per_token"))
