"""Peers for `python -m ablate.bench`: a plain nanoGPT-style GPT written out by hand, and the Hugging
Face transformers models (GPT2LMHeadModel, LlamaForCausalLM) at the same shapes as our presets.

`NanoGPT` is Karpathy's nanoGPT model reduced to what training needs: fused qkv, torch's SDPA with
is_causal, pre-LN blocks with a GELU MLP (tanh approximation, as GPT-2 and our `gpt2` preset), learned
positions, tied embeddings, N(0, 0.02) init with the residual projections scaled by 1/sqrt(2L). It
computes exactly what `+experiment=gpt2` computes; `copy_from_ours` loads our weights into it (the
parity test in tests/test_bench.py checks equal logits and an equal AdamW step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    bias: bool = True
    eps: float = 1e-5


class CausalSelfAttention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.n_head = c.n_head
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(c.n_embd, eps=c.eps, bias=c.bias), CausalSelfAttention(c)
        self.ln_2, self.mlp = nn.LayerNorm(c.n_embd, eps=c.eps, bias=c.bias), MLP(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.config = c
        self.wte, self.wpe = nn.Embedding(c.vocab_size, c.n_embd), nn.Embedding(c.block_size, c.n_embd)
        self.h = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, eps=c.eps, bias=c.bias)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * c.n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


# ------------------------------------------------------------------------------------------------
def nanogpt_like(cfg, vocab_size: int) -> NanoGPT:
    """The nanoGPT peer at the shape of `cfg` (our composed config; its model group gives the shape)."""
    m = cfg.model
    return NanoGPT(GPTConfig(vocab_size=vocab_size, n_layer=m.n_layers, n_head=m.n_heads, n_embd=m.d_model,
                             block_size=m.context_length, bias=True, eps=1e-5))


def copy_from_ours(peer: NanoGPT, ours: nn.Module) -> NanoGPT:
    """Load the weights of our `+experiment=gpt2` Transformer into the nanoGPT peer (same layout:
    fused qkv rows [q; k; v], nn.Linear (out, in) weights)."""
    sd = ours.state_dict()
    out = {"wte.weight": sd["embed.weight"], "wpe.weight": sd["pos.weight"],
           "ln_f.weight": sd["final_norm.weight"], "ln_f.bias": sd["final_norm.bias"],
           "lm_head.weight": sd["head.weight"]}
    names = {"ln_1": "attn_residual.input_norm", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.out",
             "ln_2": "mlp_residual.input_norm", "mlp.c_fc": "mlp.up", "mlp.c_proj": "mlp.down"}
    for i in range(len(peer.h)):
        for theirs, mine in names.items():
            for kind in ("weight", "bias"):
                out[f"h.{i}.{theirs}.{kind}"] = sd[f"blocks.{i}.{mine}.{kind}"]
    peer.load_state_dict(out, strict=True)
    return peer


class HFLogits(nn.Module):
    """A transformers causal LM as `idx -> logits`, training mode, SDPA attention, no KV cache."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=idx, use_cache=False).logits


def hf_peer(ours: nn.Module, cfg) -> HFLogits:
    """The transformers model our config maps to (ablate.hf.to_hf: GPT2LMHeadModel for the gpt2 preset,
    LlamaForCausalLM for llama), holding a copy of our weights, with torch's SDPA attention."""
    from ablate.hf.export import to_hf

    hf_model = to_hf(ours, cfg)
    hf_model.config._attn_implementation = "sdpa"
    return HFLogits(hf_model.train())
