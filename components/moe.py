"""Dense or mixture-of-experts feed-forward (the `moe` axis).

A `moe` option is built as `Option(cfg, make_ffn, d_model, d_ff)` and is the module that sits in
the block's feed-forward slot, where `make_ffn(hidden)` builds one dense `ffn` of the chosen type.
A routed module states what a token uses of it (`matmul_weights_per_token`,
`inactive_params_per_token`), which components.counting reads.

Modules may expose, after each forward, `last_aux_losses` (name -> weighted scalar tensor, added to
the training loss) and `last_diagnostics` (name -> tensor, logged), which the model collects.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from components.counting import matmul_weights, n_params
from components.knobs import knob
from components.registry import OptionConfig, axis, register

axis("moe", "dense feed-forward or a top-k routed mixture of experts")

MakeFFN = Callable[[int], nn.Module]


@register("moe", "off")
class Dense:
    """The dense feed-forward of the chosen `ffn`, in every block: building it returns that module itself."""

    def __new__(cls, cfg: OptionConfig, make_ffn: MakeFFN, d_model: int, d_ff: int) -> nn.Module:
        return make_ffn(d_ff)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass
class TopKConfig(OptionConfig):
    n_experts: int = knob(4, ge=1, doc="routed experts (before granularity)")
    top_k: int = knob(1, ge=1, doc="experts each token is routed to (before granularity)")
    n_shared: int = knob(0, ge=0, doc="shared experts every token passes through")
    granularity: int = knob(2, ge=1, doc="each expert split into this many smaller ones")
    aux_loss: float = knob(0.01, ge=0, doc="coefficient of the load-balancing loss of balance=aux_loss (0 = off)")
    router_z_loss: float = knob(0.001, ge=0, doc="router z-loss coefficient (0 = off)")
    balance: str = knob("aux_loss", choices=("aux_loss", "bias"),
                        doc="aux_loss: Switch Transformer's balancing loss (moe.aux_loss); bias: DeepSeek-V3's "
                        "auxiliary-loss-free per-expert routing bias (moe.bias_rate), no balancing loss")
    bias_rate: float = knob(1e-3, gt=0, doc="balance=bias: each expert's bias moves by this much after every "
                            "optimizer step, up if the expert was underloaded, down if overloaded (DeepSeek-V3: 1e-3)")


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

    Balancing (`balance`). aux_loss: a loss term (below). bias: DeepSeek-V3's auxiliary-loss-free
    balancing (DeepSeek-AI 2024, sec. 2.1.2; Wang et al. 2024): a per-expert bias b_e (a buffer, saved
    in checkpoints) is added to the routing scores for the top-k choice only, topk(p + b) with p the
    router's softmax probabilities (the affinities); the gates stay softmax over the chosen experts'
    logits, so b never scales an output. After every optimizer step (`after_optimizer_step`, called by
    the training loop) b_e += bias_rate * sign(mean load - load_e) over the step's training tokens (all
    micro-batches, all ranks): overloaded experts become less attractive. No balancing loss is added
    (moe.aux_loss is not used); the router z-loss still is.

    Losses (set after each forward in `last_aux_losses`, already weighted; a zero coefficient omits a term):
    - moe_aux_loss = aux_loss * E * sum_e f_e P_e (balance=aux_loss only) (Switch Transformer load balancing, Fedus et al. 2021),
      f_e = share of all (token, slot) assignments that went to expert e (so uniform routing gives exactly
      aux_loss; HF's Mixtral loss normalizes per token instead and gives top_k there),
      P_e = mean router probability (full softmax) of expert e.
    - moe_router_z_loss = router_z_loss * mean(logsumexp(logits)^2) (ST-MoE, Zoph et al. 2022).
    `last_diagnostics["expert_load"]` is f (E values summing to 1).
    """

    Config = TopKConfig

    def __init__(self, cfg: TopKConfig, make_ffn: MakeFFN, d_model: int, d_ff: int):
        super().__init__()
        problem = self._problem(cfg, d_ff)
        if problem:
            raise ValueError(problem)
        self.d_model, self.hidden = d_model, d_ff // cfg.granularity
        self.n_routed, self.k = cfg.n_experts * cfg.granularity, cfg.top_k * cfg.granularity
        self.aux_loss = cfg.aux_loss if cfg.balance == "aux_loss" else 0.0
        self.router_z_loss = cfg.router_z_loss
        self.bias_rate = cfg.bias_rate if cfg.balance == "bias" else None
        if self.bias_rate is not None:
            self.register_buffer("expert_bias", torch.zeros(self.n_routed))
            # assignments per expert since the last optimizer step; zero at every checkpoint (taken between steps)
            self.register_buffer("load_since_step", torch.zeros(self.n_routed), persistent=False)
        self.router = nn.Linear(d_model, self.n_routed, bias=False)
        self.experts = nn.ModuleList(make_ffn(self.hidden) for _ in range(self.n_routed))
        self.shared = nn.ModuleList(make_ffn(self.hidden) for _ in range(cfg.n_shared))
        self.last_aux_losses: dict[str, torch.Tensor] = {}
        self.last_diagnostics: dict[str, torch.Tensor] = {}

    def matmul_weights_per_token(self) -> float:
        """Matmul weights one token passes through: the router, k of the routed experts, the shared ones."""
        experts = self.k * matmul_weights(self.experts[0])
        return matmul_weights(self.router) + experts + sum(matmul_weights(e) for e in self.shared)

    def inactive_params_per_token(self) -> int:
        """Parameters of the routed experts a token does not use."""
        return (self.n_routed - self.k) * n_params(self.experts[0])

    @staticmethod
    def _problem(cfg: TopKConfig, d_ff: int, d_ff_origin: str = "") -> str | None:
        if cfg.top_k > cfg.n_experts:
            return (f"moe.top_k={cfg.top_k} is not allowed with moe.n_experts={cfg.n_experts}: each token is "
                    f"routed to top_k of the n_experts experts. Allowed top_k: 1 to {cfg.n_experts}.")
        if d_ff % cfg.granularity:
            return (f"moe.granularity={cfg.granularity} does not divide the feed-forward hidden size d_ff={d_ff}"
                    f"{d_ff_origin}: each of the granularity x n_experts fine-grained experts has d_ff / "
                    f"granularity hidden units. Allowed granularity for d_ff={d_ff}: {_divisors(d_ff)}.")
        return None

    @classmethod
    def check_config(cls, cfg) -> str | None:
        d_model, ffn = cfg.model.d_model, cfg.ffn
        origin = (f" (model.d_model={d_model} x ffn.d_ff_ratio={ffn.d_ff_ratio:.4g}, rounded to a multiple of "
                  f"ffn.multiple_of={ffn.multiple_of})")
        return cls._problem(cfg.moe, ffn.hidden_size(d_model), origin)

    def route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router logits (N, E) -> gate weights (N, k) float32 and chosen experts (N, k), as Mixtral:
        softmax over the top-k logits. With balance=bias the choice is topk(softmax(logits) + bias)."""
        if self.bias_rate is None:
            top_logits, chosen = torch.topk(logits, self.k, dim=-1)
        else:
            scores = F.softmax(logits, dim=-1, dtype=torch.float32) + self.expert_bias
            chosen = torch.topk(scores, self.k, dim=-1).indices
            top_logits = logits.gather(-1, chosen)
        return F.softmax(top_logits, dim=-1, dtype=torch.float32), chosen

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """balance=bias: move each expert's bias toward equal load (DeepSeek-V3's sign rule)."""
        if self.bias_rate is None:
            return
        load = self.load_since_step
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)  # every rank nudges by the global load, so biases stay equal
        if load.sum() > 0:
            self.expert_bias += self.bias_rate * torch.sign(load.mean() - load)
        load.zero_()

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
        if self.bias_rate is not None and self.training:  # evaluation forwards (eval mode) do not count
            self.load_since_step += counts.to(self.load_since_step.dtype)
        losses = {}
        if self.aux_loss:
            probs = F.softmax(logits, dim=-1, dtype=torch.float32)
            losses["moe_aux_loss"] = self.aux_loss * self.n_routed * (load * probs.mean(0)).sum()
        if self.router_z_loss:
            losses["moe_router_z_loss"] = self.router_z_loss * torch.logsumexp(logits.float(), -1).square().mean()
        self.last_aux_losses = losses
        self.last_diagnostics = {"expert_load": load.detach()}
        if self.bias_rate is not None:
            self.last_diagnostics["expert_bias"] = self.expert_bias.clone()
        return y.reshape(*shape[:-1], y.shape[-1])
