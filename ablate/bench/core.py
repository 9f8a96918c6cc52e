"""The benchmark's core: building each benchmarked model (a `Candidate`), its batches, and the interleaved run.

What one step is, for every model alike: zero_grad, forward, next-token cross-entropy (ours: the whole
training objective of `ablate.training.loop.loss_terms`), backward, gradient clipping at 1.0, and the `optim`
option's optimizer (AdamW by default, the training loop's parameter groups). Every model sees the same
random batches; models of one family start from the same weights (the peers get a copy of ours), so
their final losses agree, which shows that the peers compute the same function.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ablate.bench.candidate import Candidate
from ablate.bench.configs import Shape, preset_config
from ablate.bench.memory import measure_memory
from components.knobs import typed

MIB = 2 ** 20


PRESETS = ("gpt2", "llama")
PEERS = ("nanogpt", "hf_gpt2", "hf_llama")
PEER_OF = {"nanogpt": "gpt2", "hf_gpt2": "gpt2", "hf_llama": "llama"}  # peer -> the preset it mirrors
SEED = 0
# Extra overrides for the --data section's corpus (tests point it at a small text corpus).
DATA_OVERRIDES: tuple[str, ...] = ()

def our_objective(cfg) -> Callable:
    from ablate.training.loop import loss_terms

    terms = typed(cfg).z_loss.build()

    def objective(model, logits, targets):
        return sum(loss_terms(model, terms, logits, targets).values())

    return objective


def plain_objective(model, logits, targets):
    from ablate.training.loop import lm_loss

    return lm_loss(logits, targets)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors once


def build_ours(cfg, vocab: int, device: torch.device):
    from ablate.config import validate
    from ablate.model import Transformer

    validate.check(cfg)
    torch.manual_seed(SEED)
    return Transformer(cfg, vocab).to(device)


def make_candidate(name: str, kind: str, shape_name: str, shape: Shape, dtype: str, device: torch.device,
                   preset: str | None = None, extra_overrides: list[str] = (), cfg=None,
                   extra: dict | None = None) -> Candidate:
    """Our preset (kind ours/option) or a peer, on `device`, with the optimizer the training loop makes.
    `cfg` (a composed config) replaces preset + shape + extra_overrides."""
    from ablate import accounting

    base = PEER_OF.get(name, preset) if kind == "peer" else preset
    cfg = preset_config(base, shape, list(extra_overrides)) if cfg is None else cfg
    ours = build_ours(cfg, shape.vocab, device)
    if kind == "peer" and name == "nanogpt":
        from ablate.bench.peers import copy_from_ours, nanogpt_like

        model = copy_from_ours(nanogpt_like(cfg, shape.vocab), ours).to(device)
    elif kind == "peer":
        from ablate.bench.peers import hf_peer

        model = hf_peer(ours.cpu(), cfg).to(device)
    else:
        model = ours
    model.train()
    return Candidate(name=name, kind=kind, shape=shape_name, dtype=dtype, model=model,
                     optimizer=typed(cfg).optim.build(model, device),
                     flops_per_token=accounting.count(cfg, shape.vocab)["flops_per_token"], params=n_params(model),
                     objective=our_objective(cfg) if kind != "peer" else plain_objective, device=device,
                     tokens_per_step=shape.tokens, extra=dict(extra or {}))


def make_batches(shape: Shape, count: int, device: torch.device, seed: int = SEED) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        tokens = torch.randint(0, shape.vocab, (shape.batch, shape.context + 1), generator=gen)
        batches.append((tokens[:, :-1].contiguous().to(device), tokens[:, 1:].contiguous().to(device)))
    return batches


# ------------------------------------------------------------------------------------------------
# the interleaved run
def run_interleaved(candidates: list[Candidate], batches, warmup: int, steps: int, memory: bool,
                    eval_batch) -> None:
    """Memory probe (2 steps each), warm-up, then `steps` rounds of one step per model, order rotating."""
    for c in candidates:
        if memory:
            c.peak_bytes = measure_memory(c, batches)
        for i in range(warmup):
            c.step(*batches[i % len(batches)])
    n = len(candidates)
    for s in range(steps):
        x, y = batches[(warmup + s) % len(batches)]
        for c in candidates[s % n:] + candidates[:s % n]:
            c.step_s.append(c.step(x, y))
    for c in candidates:
        c.final_loss = c.evaluate(*eval_batch)


def row_of(c: Candidate, peaks: dict[str, float]) -> dict[str, Any]:
    tps = c.tokens_per_s
    peak = peaks.get(c.dtype)
    return {
        "shape": c.shape, "model": c.name, "kind": c.kind, "dtype": c.dtype, "params": c.params,
        "flops_per_token": c.flops_per_token, "steps": len(c.step_s),
        "step_ms": None if c.median_step_s is None else 1e3 * c.median_step_s,
        "step_ms_min": 1e3 * min(c.step_s) if c.step_s else None,
        "step_ms_max": 1e3 * max(c.step_s) if c.step_s else None,
        "tokens_per_s": tps,
        "mfu": (c.flops_per_token * tps / (peak * 1e9)) if tps and peak else None,
        "peak_mib": None if c.peak_bytes is None else c.peak_bytes / MIB,
        "first_loss": c.losses[0] if c.losses else None,
        "final_loss": c.final_loss,
        **c.extra,
    }


def compiled(candidate: Candidate, batch) -> Candidate:
    """The candidate's model under torch.compile (as train.compile=true), compiled by one training step
    whose effect is then undone, so it starts from the same weights as the eager models."""
    import copy

    eager = candidate.model
    saved = copy.deepcopy((eager.state_dict(), candidate.optimizer.state_dict()))
    candidate.model = torch.compile(eager)
    candidate.extra["compile_s"] = candidate.step(*batch)
    eager.load_state_dict(saved[0])
    candidate.optimizer.load_state_dict(saved[1])
    candidate.losses.clear()
    return candidate
