"""Dense or mixture-of-experts feed-forward (the `moe` axis).

A `moe` option is a feed-forward *factory*: `feedforward(make_ffn, d_model, d_ff, ...)` returns
the module that sits in the block's feed-forward slot, where `make_ffn(hidden)` builds one dense
`ffn` of the chosen type. `n_params(...)` gives (total, active) parameters in closed form.

Modules may expose, after each forward, `last_aux_losses` (name -> weighted scalar tensor, added to
the training loss) and `last_diagnostics` (name -> tensor, logged), which the model collects.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from components.ffn import hidden_size
from components.registry import register

MakeFFN = Callable[[int], nn.Module]


@register("moe", "off")
class Dense:
    """The dense feed-forward of the chosen `ffn`, in every block."""

    reads = ()  # none of the moe.* knobs

    @staticmethod
    def feedforward(make_ffn: MakeFFN, d_ff: int) -> nn.Module:
        return make_ffn(d_ff)

    @staticmethod
    def n_params(ffn_params: Callable[[int], int], d_ff: int) -> tuple[int, int]:
        """(total, active) parameters of one block's feed-forward; `ffn_params(hidden)` counts one dense ffn."""
        params = ffn_params(d_ff)
        return params, params

    @staticmethod
    def matmul_params(ffn_matmul_params: Callable[[int], int], d_ff: int, d_model: int) -> int:
        """Matmul weights one token passes through (for FLOPs)."""
        return ffn_matmul_params(d_ff)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@register("moe", "topk")
class TopKMoE(nn.Module):
    """Token-choice top-k mixture of experts (Shazeer et al. 2017; Fedus et al. 2021; Mixtral, Jiang et al. 2024),
    with fine-grained and shared experts (DeepSeekMoE, Dai et al. 2024). Dropless: no capacity factor.

    Sizes. With granularity m, each of the `n_experts` dense experts of hidden size d_ff is split into m
    experts of hidden size d_ff / m, so there are E = m * n_experts routed experts and every token goes
    to m * top_k of them: the routed parameters a token uses equal top_k dense experts of size d_ff
    (for an ffn whose parameters are linear in the hidden size, i.e. up to biases). `n_shared` shared
    experts, each also of hidden size d_ff / m (one fine-grained expert, as in DeepSeekMoE, where
    shared experts are isolated out of the fine-grained ones), process every token and are added
    ungated. They add n_shared * ffn(d_ff / m) active parameters on top of the routed ones.

    Router (exactly Mixtral's): logits = x W_r (d_model -> E, no bias); the chosen experts are the
    top m * top_k logits, and their gate weights are softmax over those chosen logits (equal to the
    full softmax probabilities renormalized over the chosen experts), computed in float32. Consequence:
    with m * top_k = 1 every gate is exactly 1 and the router learns only from the auxiliary losses
    (Switch Transformer instead gates with the unnormalized probability).

    Dispatch: the (token, slot) assignments are sorted by expert, the tokens gathered, each expert runs
    on its contiguous slice, and gate-weighted outputs are scattered back with index_add_.

    Losses (set after each forward in `last_aux_losses`, already weighted; a zero coefficient omits a term):
    - moe_aux_loss = aux_loss * E * sum_e f_e P_e (Switch Transformer load balancing, Fedus et al. 2021),
      f_e = share of all (token, slot) assignments that went to expert e (so uniform routing gives exactly
      aux_loss; HF's Mixtral loss normalizes per token instead and gives top_k there),
      P_e = mean router probability (full softmax) of expert e.
    - moe_router_z_loss = router_z_loss * mean(logsumexp(logits)^2) (ST-MoE, Zoph et al. 2022).
    `last_diagnostics["expert_load"]` is f (E values summing to 1).
    """

    def __init__(self, make_ffn: MakeFFN, d_model: int, d_ff: int, n_experts: int = 8, top_k: int = 2,
                 n_shared: int = 0, granularity: int = 1, aux_loss: float = 0.01, router_z_loss: float = 0.001):
        super().__init__()
        problem = self._problem(n_experts, top_k, n_shared, granularity, aux_loss, router_z_loss, d_ff)
        if problem:
            raise ValueError(problem)
        self.d_model, self.hidden = d_model, d_ff // granularity
        self.n_routed, self.k = n_experts * granularity, top_k * granularity
        self.aux_loss, self.router_z_loss = aux_loss, router_z_loss
        self.router = nn.Linear(d_model, self.n_routed, bias=False)
        self.experts = nn.ModuleList(make_ffn(self.hidden) for _ in range(self.n_routed))
        self.shared = nn.ModuleList(make_ffn(self.hidden) for _ in range(n_shared))
        self.last_aux_losses: dict[str, torch.Tensor] = {}
        self.last_diagnostics: dict[str, torch.Tensor] = {}

    @classmethod
    def feedforward(cls, make_ffn: MakeFFN, d_model: int, d_ff: int, n_experts: int = 8, top_k: int = 2,
                    n_shared: int = 0, granularity: int = 1, aux_loss: float = 0.01,
                    router_z_loss: float = 0.001) -> nn.Module:
        return cls(make_ffn, d_model, d_ff, n_experts=n_experts, top_k=top_k, n_shared=n_shared,
                   granularity=granularity, aux_loss=aux_loss, router_z_loss=router_z_loss)

    @staticmethod
    def n_params(ffn_params: Callable[[int], int], d_model: int, d_ff: int, n_experts: int = 8, top_k: int = 2,
                 n_shared: int = 0, granularity: int = 1) -> tuple[int, int]:
        """(total, active): router d_model * E plus E routed and n_shared shared experts of hidden d_ff / m;
        a token uses the router, m * top_k routed experts and the shared ones."""
        n_routed, expert = n_experts * granularity, ffn_params(d_ff // granularity)
        router = d_model * n_routed
        return router + (n_routed + n_shared) * expert, router + (top_k * granularity + n_shared) * expert

    @staticmethod
    def matmul_params(ffn_matmul_params: Callable[[int], int], d_model: int, d_ff: int, n_experts: int = 8,
                      top_k: int = 2, n_shared: int = 0, granularity: int = 1) -> int:
        """Matmul weights one token passes through: the router, m * top_k routed and n_shared shared experts."""
        expert = ffn_matmul_params(d_ff // granularity)
        return d_model * n_experts * granularity + (top_k * granularity + n_shared) * expert

    @staticmethod
    def _problem(n_experts, top_k, n_shared, granularity, aux_loss, router_z_loss, d_ff,
                 d_ff_origin: str = "") -> str | None:
        if n_experts < 1:
            return f"moe.n_experts={n_experts} is not allowed: at least 1 expert."
        if not 1 <= top_k <= n_experts:
            return (f"moe.top_k={top_k} is not allowed with moe.n_experts={n_experts}: each token is routed to "
                    f"top_k of the n_experts experts. Allowed top_k: 1 to {n_experts}.")
        if granularity < 1 or d_ff % granularity:
            return (f"moe.granularity={granularity} does not divide the feed-forward hidden size d_ff={d_ff}"
                    f"{d_ff_origin}: each of the granularity x n_experts fine-grained experts has d_ff / granularity "
                    f"hidden units. Allowed granularity for d_ff={d_ff}: {_divisors(d_ff)}.")
        if n_shared < 0:
            return f"moe.n_shared={n_shared} is not allowed: the number of shared experts is 0 or more."
        for key, value in (("aux_loss", aux_loss), ("router_z_loss", router_z_loss)):
            if value < 0:
                return f"moe.{key}={value} is not allowed: a loss coefficient is 0 (off) or positive."
        return None

    @classmethod
    def check_config(cls, moe_n_experts: int, moe_top_k: int, moe_n_shared: int, moe_granularity: int,
                     moe_aux_loss: float, moe_router_z_loss: float, d_model: int, ffn_d_ff_ratio: float,
                     ffn_multiple_of: int) -> str | None:
        d_ff = hidden_size(d_model, ffn_d_ff_ratio, ffn_multiple_of)
        origin = (f" (model.d_model={d_model} x ffn.d_ff_ratio={ffn_d_ff_ratio:.4g}, rounded to a multiple of "
                  f"ffn.multiple_of={ffn_multiple_of})")
        return cls._problem(moe_n_experts, moe_top_k, moe_n_shared, moe_granularity, moe_aux_loss,
                            moe_router_z_loss, d_ff, origin)

    def route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router logits (N, E) -> gate weights (N, k) float32 and chosen experts (N, k), as Mixtral:
        softmax over the top-k logits."""
        top_logits, chosen = torch.topk(logits, self.k, dim=-1)
        return F.softmax(top_logits, dim=-1, dtype=torch.float32), chosen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        n_tokens = x.shape[0]
        logits = self.router(x)
        gates, chosen = self.route(logits)

        # dispatch: sort the N * k (token, slot) assignments by expert; each expert gets a contiguous slice
        flat_expert = chosen.flatten()
        order = torch.argsort(flat_expert, stable=True)
        token = order // self.k
        counts = torch.bincount(flat_expert, minlength=self.n_routed)
        slices = torch.split(x[token], counts.tolist())
        out = torch.cat([expert(part) for expert, part in zip(self.experts, slices, strict=True)])
        weighted = out * gates.flatten()[order].to(out.dtype).unsqueeze(-1)
        y = out.new_zeros(n_tokens, shape[-1]).index_add_(0, token, weighted)
        for expert in self.shared:
            y = y + expert(x)

        load = counts.float() / flat_expert.numel()
        losses = {}
        if self.aux_loss:
            probs = F.softmax(logits, dim=-1, dtype=torch.float32)
            losses["moe_aux_loss"] = self.aux_loss * self.n_routed * (load * probs.mean(0)).sum()
        if self.router_z_loss:
            losses["moe_router_z_loss"] = self.router_z_loss * torch.logsumexp(logits.float(), -1).square().mean()
        self.last_aux_losses = losses
        self.last_diagnostics = {"expert_load": load.detach()}
        return y.reshape(*shape[:-1], y.shape[-1])
