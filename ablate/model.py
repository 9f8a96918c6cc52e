"""The model, assembled from registered components the way the lecture draws it:

    tokens -> embed (+ positions) -> N x block(attention, feed-forward) -> final norm -> head -> logits

Every choice comes from the config by name through the registry; nothing here branches on an
option's name. `Transformer(cfg, vocab_size)` takes the composed Hydra config (see conf/).
"""
from __future__ import annotations

from functools import partial

import torch
from omegaconf import DictConfig
from torch import nn

from components.attention import SelfAttention
from components.ffn import hidden_size
from components.layers import dropout as dropout_layer
from components.registry import build, call, knobs, lookup


class Transformer(nn.Module):
    def __init__(self, cfg: DictConfig, vocab_size: int):
        super().__init__()
        m = cfg.model
        self.cfg, self.vocab_size = cfg, vocab_size
        n_kv_heads = m.n_kv_heads or m.n_heads
        head_dim = m.d_model // m.n_heads
        self.d_ff = hidden_size(m.d_model, cfg.ffn.d_ff_ratio, cfg.ffn.multiple_of)

        make_norm = partial(build, "norm", cfg.norm.name, dim=m.d_model, bias=m.bias, **knobs(cfg.norm))
        make_head_norm = partial(build, "norm", cfg.norm.name, dim=head_dim, bias=m.bias, **knobs(cfg.norm))
        placement = partial(build, "norm_pos", cfg.norm_pos.name, make_norm=make_norm)
        make_ffn = partial(build, "ffn", cfg.ffn.name, d_model=m.d_model, bias=m.bias, dropout=m.dropout)

        def block() -> nn.Module:
            attention = SelfAttention(m.d_model, m.n_heads, n_kv_heads, kernel=cfg.attn.name,
                                      bias=m.bias, dropout=m.dropout, qk_norm=cfg.qk_norm.name,
                                      make_head_norm=make_head_norm, softcap=cfg.softcap.attn,
                                      context_length=m.context_length, **knobs(cfg.attn))
            feedforward = call(lookup("moe", cfg.moe.name).feedforward,
                               make_ffn=lambda hidden: make_ffn(d_ff=hidden), d_model=m.d_model, d_ff=self.d_ff,
                               bias=m.bias, **knobs(cfg.moe))
            return build("block", cfg.block.name, attention=attention, feedforward=feedforward,
                         placement=lambda n_branches: placement(n_branches=n_branches))

        self.embed = nn.Embedding(vocab_size, m.d_model)
        self.embed_scale = m.d_model ** 0.5 if m.scale_embeddings else None  # Gemma: embeddings * sqrt(d_model)
        self.pos = build("pos", cfg.pos.name, d_model=m.d_model, head_dim=head_dim, n_heads=m.n_heads,
                         context_length=m.context_length, init_std=m.init_std, **knobs(cfg.pos))
        self.dropout = dropout_layer(m.dropout)
        self.blocks = nn.ModuleList(block() for _ in range(m.n_layers))
        needs_final_norm = lookup("norm_pos", cfg.norm_pos.name).final_norm
        self.final_norm = make_norm() if needs_final_norm else nn.Identity()
        self.head = nn.Linear(m.d_model, vocab_size, bias=False)
        self.logit_softcap = cfg.softcap.logits  # cap * tanh(logits / cap) (Gemma 2); None = off
        if m.tie_embeddings:
            self.head.weight = self.embed.weight  # one matrix reads and writes tokens (Press & Wolf 2017)
        self.reset_parameters(m.init_std, m.n_layers)
        # Modules that report losses or measurements after a forward (MoE routers), found once here
        # rather than by walking every module at every step.
        self.reporting = [(path, module) for path, module in self.named_modules()
                          if hasattr(module, "last_aux_losses") or hasattr(module, "last_diagnostics")]

    def reset_parameters(self, std: float, n_layers: int) -> None:
        """N(0, std) weights, zero biases; residual output projections scaled by 1/sqrt(2 L) (GPT-2)."""
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                scale = (2 * n_layers) ** -0.5 if name.endswith((".out", ".down")) else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (batch, time) -> next-token logits (batch, time, vocab)."""
        x = self.embed(idx)
        if self.embed_scale is not None:
            x = x * self.embed_scale
        x = self.dropout(self.pos.embed(x))
        for block in self.blocks:
            x = block(x, self.pos)
        logits = self.head(self.final_norm(x))
        if self.logit_softcap is not None:
            logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)
        return logits

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """Extra training losses the last forward produced (e.g. MoE load balancing), summed by name."""
        totals: dict[str, torch.Tensor] = {}
        for _, module in self.reporting:
            for name, value in getattr(module, "last_aux_losses", {}).items():
                totals[name] = totals[name] + value if name in totals else value
        return totals

    def diagnostics(self) -> dict[str, float | list[float]]:
        """Per-module measurements of the last forward (e.g. MoE expert load), keyed by module path."""
        found = {}
        for path, module in self.reporting:
            for name, value in getattr(module, "last_diagnostics", {}).items():
                found[f"{name}/{path}"] = value.detach().float().tolist() if torch.is_tensor(value) else value
        return found

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample continuations with temperature and nucleus (top-p) sampling (Holtzman et al. 2020)."""
        context = self.cfg.model.context_length
        for _ in range(max_new_tokens):
            logits = self(idx[:, -context:])[:, -1, :].float()
            if temperature <= 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                sorted_probs, order = probs.sort(dim=-1, descending=True)
                outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p  # keep the smallest set reaching top_p
                sorted_probs[outside] = 0.0
                choice = torch.multinomial(sorted_probs, 1, generator=generator)
                next_id = order.gather(-1, choice)
            idx = torch.cat([idx, next_id], dim=1)
        return idx
