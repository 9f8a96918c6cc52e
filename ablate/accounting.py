"""Parameter and FLOP counts from the config alone, in closed form.

Every component class states its own count (`n_params`, `flops_per_token`), so this module
only adds them up; tests check the totals against counted parameters and torch's FLOP counter.

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

from omegaconf import DictConfig

from components.attention import SelfAttention
from components.ffn import hidden_size
from components.registry import call, knobs, lookup


def count(cfg: DictConfig, vocab_size: int) -> dict[str, Any]:
    m = cfg.model
    d, n_kv = m.d_model, m.n_kv_heads or m.n_heads
    d_ff = hidden_size(d, cfg.ffn.d_ff_ratio, cfg.ffn.multiple_of)
    norm_cls = lookup("norm", cfg.norm.name)
    norm = norm_cls.n_params(d, m.bias)
    placement = lookup("norm_pos", cfg.norm_pos.name)
    ffn, moe = lookup("ffn", cfg.ffn.name), lookup("moe", cfg.moe.name)
    moe_knobs = knobs(cfg.moe)

    attention = SelfAttention.n_params(d, m.n_heads, n_kv, m.bias)
    attention += lookup("qk_norm", cfg.qk_norm.name).n_params(norm_cls.n_params(d // m.n_heads, m.bias))
    ff_total, ff_active = call(moe.n_params, ffn_params=lambda hidden: ffn.n_params(d, hidden, m.bias),
                               d_model=d, d_ff=d_ff, bias=m.bias, **moe_knobs)
    residual_norms = sum(placement.n_norms(n) for n in lookup("block", cfg.block.name).residual_branches)
    per_layer = attention + ff_total + residual_norms * norm

    token_embedding = vocab_size * d
    position_table = lookup("pos", cfg.pos.name).n_params(d, m.context_length)
    final_norm = norm if placement.final_norm else 0
    head = 0 if m.tie_embeddings else vocab_size * d
    total = token_embedding + position_table + m.n_layers * per_layer + final_norm + head
    active = total - m.n_layers * (ff_total - ff_active)

    ff_matmul = call(moe.matmul_params, ffn_matmul_params=lambda hidden: ffn.n_matrices * d * hidden,
                     d_model=d, d_ff=d_ff, **moe_knobs)
    matmul_per_layer = SelfAttention.n_params(d, m.n_heads, n_kv, False) + ff_matmul
    score_flops = call(lookup("attn", cfg.attn.name).flops_per_token, d_model=d, context_length=m.context_length,
                       head_dim=d // m.n_heads, n_heads=m.n_heads, **knobs(cfg.attn))
    flops = 6 * (m.n_layers * matmul_per_layer + vocab_size * d) + 3 * m.n_layers * score_flops
    return {
        "params_total": total,
        "params_non_embedding": total - token_embedding - position_table,
        "params_active": active,
        "flops_per_token": flops,
        "d_ff": d_ff,
        "vocab_size": vocab_size,
    }
