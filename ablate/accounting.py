"""Parameter and FLOP counts of a config, read off the model it builds (on the `meta` device, so
counting allocates nothing); tests check them against torch's FLOP counter.

Conventions (stated in every summary):
- params_non_embedding = params_total minus the token-embedding table and any learned position
  table; an untied output head is a matmul and counts as non-embedding.
- params_active = parameters one token uses (differs from params_total only with MoE).
- flops_per_token = 6 x (matmul weights a token passes through, the output head included)
  + 3 x attention-score FLOPs over the full T x T matrix (PaLM appendix B; Kaplan et al. 2020).
  Forward is one third of it; elementwise work (norms, activations) is left out.
"""
from __future__ import annotations

from typing import Any

import torch

from ablate.model import Transformer
from components.counting import inactive_params, matmul_weights, n_params, score_flops
from components.knobs import typed


def counts_of(model: Transformer) -> dict[str, Any]:
    """The counts of a built model."""
    total = n_params(model)
    embedding = model.embed.weight.numel() + n_params(model.pos)
    return {
        "params_total": total,
        "params_non_embedding": total - embedding,
        "params_active": total - inactive_params(model),
        "flops_per_token": int(round(6 * matmul_weights(model) + 3 * score_flops(model))),
        "d_ff": model.cfg.ffn.hidden_size(model.cfg.model.d_model),
        "vocab_size": model.vocab_size,
    }


def count(cfg: Any, vocab_size: int) -> dict[str, Any]:
    """Counts of the model `cfg` builds, without allocating it."""
    with torch.device("meta"):
        model = Transformer(typed(cfg), vocab_size)
    return counts_of(model)
