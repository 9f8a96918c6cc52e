"""The model, assembled from registered components the way the lecture draws it:

    tokens -> embed (+ positions) -> N x block(attention, feed-forward) -> final norm -> head -> logits

Each config group is a typed option config that builds its component (`cfg.norm.build(dim)`), and
components receive built modules, never option names, so nothing here branches on a choice.
`Transformer(cfg, vocab_size)` takes the composed config (a DictConfig or its typed object).
"""
from __future__ import annotations

import functools
import hashlib
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from components.attention import SelfAttention
from components.knobs import typed
from components.layers import dropout as dropout_layer


def make_block(cfg: Any, softcap: nn.Module, layer: int) -> nn.Module:
    """Block `layer` (0-based): attention built from attn (its kernel may depend on the layer: local or
    global) + qk_norm (+ the soft-cap of its scores), a feed-forward from ffn or moe, norms placed by
    norm_pos, joined serially or in parallel by block."""
    m = cfg.model

    def norm(dim: int = m.d_model) -> nn.Module:  # a fresh norm wherever the placement (or qk_norm) puts one
        return cfg.norm.build(dim, m.bias)

    def ffn(d_ff: int) -> nn.Module:  # one expert's (or the dense block's) feed-forward
        return cfg.ffn.build(m.d_model, d_ff, m.bias, m.dropout)

    attention = SelfAttention(m, kernel=cfg.attn.build(m, softcap=softcap.attn, layer=layer),
                              qk_norm=cfg.qk_norm.build(m, make_norm=norm))
    feedforward = cfg.moe.build(make_ffn=ffn, d_model=m.d_model, d_ff=cfg.ffn.hidden_size(m.d_model))
    return cfg.block.build(attention, feedforward, placement=functools.partial(cfg.norm_pos.build, norm))


class Transformer(nn.Module):
    def __init__(self, cfg: DictConfig | Any, vocab_size: int):
        super().__init__()
        self.cfg = cfg = typed(cfg)
        m = cfg.model
        # drawn before any component consumes the global stream: what reset_parameters seeds each name from
        # (a model built on the meta device, to count or check it, draws nothing)
        on_meta = torch.empty(0).device.type == "meta"
        init_seed = int(torch.randint(0, 2**62, (1,)).item()) if m.init_by_name and not on_meta else None
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, m.d_model)
        self.embed_scale = m.d_model ** 0.5 if m.scale_embeddings else None  # Gemma: embeddings * sqrt(d_model)
        self.pos = cfg.pos.build(m)
        self.dropout = dropout_layer(m.dropout)
        self.softcap = cfg.softcap.build()
        self.blocks = nn.ModuleList(make_block(cfg, self.softcap, layer) for layer in range(m.n_layers))
        needs_final_norm = type(cfg.norm_pos).component.final_norm  # post-norm blocks already end in a norm
        self.final_norm = cfg.norm.build(m.d_model, m.bias) if needs_final_norm else nn.Identity()
        self.head = nn.Linear(m.d_model, vocab_size, bias=False)
        if m.tie_embeddings:
            self.head.weight = self.embed.weight  # one matrix reads and writes tokens (Press & Wolf 2017)
        self.reset_parameters(m.init_std, m.n_layers, init_seed)
        # Modules that report losses or measurements after a forward (MoE routers), found once here
        # rather than by walking every module at every step.
        self.reporting = [(path, module) for path, module in self.named_modules()
                          if hasattr(module, "last_aux_losses") or hasattr(module, "last_diagnostics")]
        # Modules that adapt between optimizer steps outside the gradient (MoE balancing biases).
        self.adapting = [module for module in self.modules()
                         if module is not self and hasattr(module, "after_optimizer_step")]

    def reset_parameters(self, std: float, n_layers: int, init_seed: int | None = None) -> None:
        """N(0, std) weights, zero biases; residual output projections scaled by 1/sqrt(2 L) (GPT-2).
        With `init_seed`, each weight from a generator seeded by (init_seed, its module's name), so two
        variants' weights of one name and shape start equal: a pair differs where the design does, not
        because an extra or resized matrix earlier in the model shifted every later draw of one stream."""
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                scale = (2 * n_layers) ** -0.5 if name.endswith((".out", ".down")) else 1.0
                generator = None if init_seed is None else torch.Generator().manual_seed(
                    int.from_bytes(hashlib.blake2b(f"{init_seed}/{name}".encode(), digest_size=8).digest(), "big") >> 1)
                nn.init.normal_(module.weight, mean=0.0, std=std * scale, generator=generator)
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
        return self.softcap(self.head(self.final_norm(x)))

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """Extra training losses the last forward produced (e.g. MoE load balancing), summed by name."""
        totals: dict[str, torch.Tensor] = {}
        for _, module in self.reporting:
            for name, value in getattr(module, "last_aux_losses", {}).items():
                totals[name] = totals[name] + value if name in totals else value
        return totals

    def after_optimizer_step(self) -> None:
        """Called by the training loop after every optimizer step: each module that adapts outside the
        gradient (e.g. DeepSeek-V3's expert biases, moe.balance=bias) takes its step."""
        for module in self.adapting:
            module.after_optimizer_step()

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
