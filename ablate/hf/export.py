"""Weights and config between ablate's `Transformer` and Hugging Face transformers models.

    hf_model = to_hf(model, cfg)          # -> LlamaForCausalLM / MistralForCausalLM / MixtralForCausalLM /
                                          #    Gemma2ForCausalLM / Olmo2ForCausalLM / GPT2LMHeadModel, same logits
    model, cfg = from_hf(hf_model)        # back, in ablate.hf.imports (also from a path: from_hf("OUT_DIR"))

Only exact conversions are made: a config a transformers model cannot compute is refused with
`NotExpressible`, whose message names the option(s) that are the reason. Which HF model a config
maps to (checked in this order; the first one the config fits is used, otherwise the closest one
names what does not fit):

    llama    norm=rms, norm_pos=pre, block=serial, pos=rope, gated ffn (swiglu, geglu, reglu), moe=off,
             attn=full; model.bias -> attention_bias and mlp_bias; attn=sliding_window -> Mistral (no biases)
    mixtral  the same with moe=topk (n_shared=0, granularity=1, balance=aux_loss), no biases
    gemma2   norm=rms, norm_pos=double, pos=rope, gated ffn, model.scale_embeddings=true, no biases,
             any softcap; attn=full (every HF layer full attention), sliding_window (every layer sliding)
             or local_global (HF layer_types: layer i full when (i + 1) % global_every == 0)
    olmo2    norm=rms, norm_pos=output, pos=rope, gated ffn, qk_norm=on with qk_norm.scope=full, attn=full,
             moe=off, no biases, no soft-capping
    gpt2     norm=ln, norm_pos=pre, block=serial, pos=learned, plain ffn (gelu_tanh, gelu, relu, silu,
             relu2), n_kv_heads = n_heads; model.bias=false exports zero biases

Everywhere but olmo2: qk_norm=off (only OLMo 2 has a q/k norm, over whole projections); no ALiBi, sinusoidal
or NoPE positions, block=parallel has no HF counterpart with one shared norm. Training-only settings
(z_loss, moe.aux_loss, moe.router_z_loss, dropout outside GPT-2) do not change the function and are not
carried over; from_hf leaves z_loss and the router z-loss off and moe.aux_loss at ablate's default.
from_hf of Gemma 2 with sliding-window and global layers (as released) gives attn=local_global when
the layer types follow its rule, and is refused otherwise.

Layout notes. Ours fuses q, k, v into one `qkv` Linear ([q; k; v] rows) and gate and up into
`gate_up` ([gate; up] rows); HF Llama keeps them separate, HF Mixtral stores experts as 3-D
`gate_up_proj` ([gate; up] rows, the same layout) and `down_proj`; GPT-2's Conv1D stores x W (in, out),
so its weights are transposed. Gemma's RMSNorm multiplies by (1 + w): our gain g = 1 + w.
RoPE: both use the half-split rotate_half convention, so no permutation is needed.

The tokenizer converts in ablate.hf.fast_tokenizer (`hf_tokenizer`). transformers is imported only inside
these functions (ablate.hf.errors.require_transformers: it is an optional extra).
"""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from ablate.hf.errors import NotExpressible, require_transformers
from ablate.model import Transformer
from components.ffn import hidden_size
from components.knobs import typed


def layer_norm_names(family: str) -> dict[str, str]:
    """Our per-layer norm paths -> the Llama-family names (Gemma 2 has four norms per layer)."""
    if family == "olmo2":  # norms on the sublayers' outputs, and over the whole q and k projections
        return {"attn_residual.output_norms.0": "post_attention_layernorm",
                "mlp_residual.output_norms.0": "post_feedforward_layernorm",
                "attn.qk_norm.q_norm": "self_attn.q_norm", "attn.qk_norm.k_norm": "self_attn.k_norm"}
    if family == "gemma2":
        return {"attn_residual.input_norm": "input_layernorm",
                "attn_residual.output_norms.0": "post_attention_layernorm",
                "mlp_residual.input_norm": "pre_feedforward_layernorm",
                "mlp_residual.output_norms.0": "post_feedforward_layernorm"}
    return {"attn_residual.input_norm": "input_layernorm", "mlp_residual.input_norm": "post_attention_layernorm"}

# ------------------------------------------------------------------------------------------------
# activations: ablate ffn option <-> HF activation name
GATED_ACT = {"swiglu": "silu", "geglu": "gelu_pytorch_tanh", "reglu": "relu"}
PLAIN_ACT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu", "relu2": "relu2"}
GATED_FROM_HF = {"silu": "swiglu", "swish": "swiglu", "gelu_pytorch_tanh": "geglu", "gelu_new": "geglu",
                 "gelu_fast": "geglu", "relu": "reglu"}
PLAIN_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
                 "silu": "silu", "swish": "silu", "relu2": "relu2"}

FAMILIES = ("llama", "mixtral", "gemma2", "olmo2", "gpt2")
HF_CLASS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "mixtral": "MixtralForCausalLM",
            "gemma2": "Gemma2ForCausalLM", "olmo2": "Olmo2ForCausalLM", "gpt2": "GPT2LMHeadModel"}
# attention patterns each family can state: one per model (Mistral's window), or per layer (Gemma 2's layer_types)
FAMILY_ATTN = {"llama": ("full", "sliding_window"), "mixtral": ("full", "sliding_window"),
               "gemma2": ("full", "sliding_window", "local_global"), "olmo2": ("full",), "gpt2": ("full",)}
NORM_POS = {"gemma2": "double", "olmo2": "output"}


def _need(problems: list[str], ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        problems.append(f"{key}={value} (it needs {allowed})")


def _family_problems(cfg: DictConfig, family: str) -> list[str]:
    """What keeps `cfg` from being exactly the HF model `family` (empty: it converts)."""
    m, p = cfg.model, []
    moe = cfg.moe.name
    if family == "olmo2":
        _need(p, cfg.qk_norm.name == "on", "qk_norm", cfg.qk_norm.name, "on: OLMo 2 normalizes q and k")
        if cfg.qk_norm.name == "on":
            _need(p, cfg.qk_norm.scope == "full", "qk_norm.scope", cfg.qk_norm.scope,
                  "full: OLMo 2 normalizes the whole q and k projections, not each head")
    else:
        _need(p, cfg.qk_norm.name == "off", "qk_norm", cfg.qk_norm.name,
              f"off: {HF_CLASS[family]} has no q/k norm (OLMo 2's, qk_norm.scope=full, exports as Olmo2ForCausalLM)")
    attn = FAMILY_ATTN[family]
    _need(p, cfg.attn.name in attn, "attn", cfg.attn.name, " or ".join(attn))
    if family == "gpt2":
        _need(p, cfg.norm.name == "ln", "norm", cfg.norm.name, "ln")
        _need(p, cfg.norm_pos.name == "pre", "norm_pos", cfg.norm_pos.name, "pre")
        _need(p, cfg.pos.name == "learned", "pos", cfg.pos.name, "learned")
        _need(p, cfg.ffn.name in PLAIN_ACT, "ffn", cfg.ffn.name, "one of " + ", ".join(PLAIN_ACT))
        _need(p, (m.n_kv_heads or m.n_heads) == m.n_heads, "model.n_kv_heads", m.n_kv_heads,
              "null: GPT-2 has no grouped-query attention")
    else:
        _need(p, cfg.norm.name == "rms", "norm", cfg.norm.name, "rms")
        _need(p, cfg.pos.name == "rope", "pos", cfg.pos.name, "rope")
        _need(p, cfg.ffn.name in GATED_ACT, "ffn", cfg.ffn.name, "a gated ffn: " + ", ".join(GATED_ACT))
        want_pos = NORM_POS.get(family, "pre")
        _need(p, cfg.norm_pos.name == want_pos, "norm_pos", cfg.norm_pos.name, want_pos)
    _need(p, cfg.block.name == "serial", "block", cfg.block.name,
          "serial: transformers has no parallel block with one shared norm")
    if family == "mixtral":
        _need(p, moe == "topk", "moe", moe, "topk")
        if moe == "topk":
            _need(p, cfg.moe.n_shared == 0, "moe.n_shared", cfg.moe.n_shared, "0: Mixtral has no shared experts")
            _need(p, cfg.moe.granularity == 1, "moe.granularity", cfg.moe.granularity, "1")
            _need(p, cfg.moe.balance == "aux_loss", "moe.balance", cfg.moe.balance,
                  "aux_loss: Mixtral routes by the logits alone, without balancing biases")
    else:
        _need(p, moe == "off", "moe", moe, "off (moe=topk exports as Mixtral)")
    if family != "gemma2":
        caps = cfg.softcap.build()
        _need(p, caps.attn is None and caps.logits is None, "softcap", cfg.softcap.name,
              "off (soft-capping exports only with Gemma 2's double norm)")
        _need(p, not m.scale_embeddings, "model.scale_embeddings", m.scale_embeddings, "false")
    else:
        _need(p, m.scale_embeddings, "model.scale_embeddings", m.scale_embeddings,
              "true: Gemma 2 multiplies embeddings by sqrt(d_model)")
    if family in ("mixtral", "gemma2", "olmo2") or (family == "llama" and cfg.attn.name == "sliding_window"):
        _need(p, not m.bias, "model.bias", m.bias, f"false: {_hf_name(cfg, family)} has no biases")
    return p


def _hf_name(cfg: DictConfig, family: str) -> str:
    if family == "llama" and cfg.attn.name == "sliding_window":
        return HF_CLASS["mistral"]
    return HF_CLASS[family]


def hf_family(cfg: DictConfig) -> str:
    """The HF model family that computes exactly what `cfg` does; NotExpressible names what does not fit."""
    cfg = typed(cfg)
    problems = {family: _family_problems(cfg, family) for family in FAMILIES}
    for family in FAMILIES:
        if not problems[family]:
            return family
    signature = {  # the option that makes a config look like one family, to name the closest one
        "mixtral": cfg.moe.name != "off",
        "gemma2": cfg.norm_pos.name == "double" or bool(cfg.model.scale_embeddings),
        "olmo2": cfg.norm_pos.name == "output" or cfg.qk_norm.name == "on",
        "gpt2": cfg.pos.name == "learned" or cfg.norm.name == "ln" and cfg.ffn.name in PLAIN_ACT}
    signature["llama"] = not any(signature.values())
    closest = min(FAMILIES, key=lambda f: (len(problems[f]), not signature[f], FAMILIES.index(f)))
    raise NotExpressible(
        f"this config has no exact Hugging Face transformers equivalent. The closest model, "
        f"{_hf_name(cfg, closest)}, cannot compute it because of "
        f"{'; '.join(problems[closest])}. Exportable presets: llama, mixtral, gemma2, olmo2, gpt2 "
        f"(and their variations listed in ablate/hf/export.py).")


# ------------------------------------------------------------------------------------------------
# ours -> HF
def hf_config(cfg: DictConfig, vocab_size: int, *, bos_token_id: int | None = None,
              eos_token_id: int | None = None):
    """The transformers config of the model `cfg` describes."""
    cfg = typed(cfg)
    transformers = require_transformers()
    family = hf_family(cfg)
    m = cfg.model
    n_kv = m.n_kv_heads or m.n_heads
    head_dim = m.d_model // m.n_heads
    d_ff = hidden_size(m.d_model, cfg.ffn.d_ff_ratio, cfg.ffn.multiple_of)
    tokens = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=None)
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab_size, n_positions=m.context_length, n_embd=m.d_model, n_layer=m.n_layers,
            n_head=m.n_heads, n_inner=d_ff, activation_function=PLAIN_ACT[cfg.ffn.name],
            resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout, layer_norm_epsilon=cfg.norm.eps,
            initializer_range=m.init_std, scale_attn_weights=True, tie_word_embeddings=m.tie_embeddings,
            **tokens)
    window = cfg.attn.window if cfg.attn.name in ("sliding_window", "local_global") else None
    common = dict(
        vocab_size=vocab_size, hidden_size=m.d_model, intermediate_size=d_ff, num_hidden_layers=m.n_layers,
        num_attention_heads=m.n_heads, num_key_value_heads=n_kv, head_dim=head_dim,
        max_position_embeddings=m.context_length, initializer_range=m.init_std, rms_norm_eps=cfg.norm.eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.pos.theta)},
        tie_word_embeddings=m.tie_embeddings, attention_dropout=m.dropout, **tokens)
    if family == "llama" and window is None:
        return transformers.LlamaConfig(hidden_act=GATED_ACT[cfg.ffn.name], attention_bias=m.bias,
                                        mlp_bias=m.bias, **common)
    if family == "llama":
        return transformers.MistralConfig(hidden_act=GATED_ACT[cfg.ffn.name], sliding_window=window, **common)
    if family == "mixtral":
        return transformers.MixtralConfig(hidden_act=GATED_ACT[cfg.ffn.name], num_local_experts=cfg.moe.n_experts,
                                          num_experts_per_tok=cfg.moe.top_k, sliding_window=window,
                                          router_jitter_noise=0.0, **common)
    if family == "olmo2":
        return transformers.Olmo2Config(hidden_act=GATED_ACT[cfg.ffn.name], attention_bias=False, **common)
    # gemma2: each layer's pattern in layer_types; the scale is head_dim^-1/2
    return transformers.Gemma2Config(
        hidden_activation=GATED_ACT[cfg.ffn.name], query_pre_attn_scalar=head_dim,
        sliding_window=window or m.context_length, layer_types=gemma2_layer_types(cfg),
        attn_logit_softcapping=cfg.softcap.build().attn, final_logit_softcapping=cfg.softcap.build().logits,
        attention_bias=False, **common)


def gemma2_layer_types(cfg: Any) -> list[str]:
    """HF Gemma 2's layer_types of the attention `cfg.attn` chooses, layer by layer."""
    def is_global(layer: int) -> bool:
        if cfg.attn.name == "local_global":
            return cfg.attn.is_global(layer)
        return cfg.attn.name == "full"

    return ["full_attention" if is_global(i) else "sliding_attention" for i in range(cfg.model.n_layers)]


def _split_rows(t: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return [part.contiguous() for part in t.split(sizes, dim=0)]


def to_hf_state_dict(model: Transformer, cfg: DictConfig) -> dict[str, torch.Tensor]:
    """Our state_dict renamed and reshaped to the HF model's keys (family from `hf_family(cfg)`)."""
    cfg = typed(cfg)
    family = hf_family(cfg)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    m = cfg.model
    d, n_kv = m.d_model, m.n_kv_heads or m.n_heads
    kv = n_kv * (d // m.n_heads)
    d_ff = cfg.ffn.hidden_size(cfg.model.d_model)
    out: dict[str, torch.Tensor] = {}

    if family == "gpt2":
        def norm(ours: str, theirs: str) -> None:
            out[f"{theirs}.weight"] = sd[f"{ours}.weight"]
            out[f"{theirs}.bias"] = sd.get(f"{ours}.bias", torch.zeros(d))

        def conv(ours: str, theirs: str, width: int) -> None:  # Conv1D: weight (in, out)
            out[f"{theirs}.weight"] = sd[f"{ours}.weight"].t().contiguous()
            out[f"{theirs}.bias"] = sd.get(f"{ours}.bias", torch.zeros(width))

        out["transformer.wte.weight"] = sd["embed.weight"]
        out["transformer.wpe.weight"] = sd["pos.weight"]
        for i in range(m.n_layers):
            ours, theirs = f"blocks.{i}", f"transformer.h.{i}"
            norm(f"{ours}.attn_residual.input_norm", f"{theirs}.ln_1")
            conv(f"{ours}.attn.qkv", f"{theirs}.attn.c_attn", 3 * d)
            conv(f"{ours}.attn.out", f"{theirs}.attn.c_proj", d)
            norm(f"{ours}.mlp_residual.input_norm", f"{theirs}.ln_2")
            conv(f"{ours}.mlp.up", f"{theirs}.mlp.c_fc", d_ff)
            conv(f"{ours}.mlp.down", f"{theirs}.mlp.c_proj", d)
        norm("final_norm", "transformer.ln_f")
        out["lm_head.weight"] = sd["head.weight"]
        return out

    gain = (lambda w: w - 1.0) if family == "gemma2" else (lambda w: w)  # Gemma: (1 + w) x / rms(x)
    out["model.embed_tokens.weight"] = sd["embed.weight"]
    for i in range(m.n_layers):
        ours, theirs = f"blocks.{i}", f"model.layers.{i}"
        for kind in ("weight", "bias"):
            if f"{ours}.attn.qkv.{kind}" in sd:
                q, k, v = _split_rows(sd[f"{ours}.attn.qkv.{kind}"], [d, kv, kv])
                out.update({f"{theirs}.self_attn.q_proj.{kind}": q, f"{theirs}.self_attn.k_proj.{kind}": k,
                            f"{theirs}.self_attn.v_proj.{kind}": v,
                            f"{theirs}.self_attn.o_proj.{kind}": sd[f"{ours}.attn.out.{kind}"]})
        for a, b in layer_norm_names(family).items():
            out[f"{theirs}.{b}.weight"] = gain(sd[f"{ours}.{a}.weight"])
        if family == "mixtral":
            n_experts = cfg.moe.n_experts
            out[f"{theirs}.mlp.gate.weight"] = sd[f"{ours}.mlp.router.weight"]
            out[f"{theirs}.mlp.experts.gate_up_proj"] = torch.stack(
                [sd[f"{ours}.mlp.experts.{e}.gate_up.weight"] for e in range(n_experts)])  # [gate; up] rows both
            out[f"{theirs}.mlp.experts.down_proj"] = torch.stack(
                [sd[f"{ours}.mlp.experts.{e}.down.weight"] for e in range(n_experts)])
        else:
            for kind in ("weight", "bias"):
                if f"{ours}.mlp.gate_up.{kind}" in sd:
                    gate, up = _split_rows(sd[f"{ours}.mlp.gate_up.{kind}"], [d_ff, d_ff])
                    out.update({f"{theirs}.mlp.gate_proj.{kind}": gate, f"{theirs}.mlp.up_proj.{kind}": up,
                                f"{theirs}.mlp.down_proj.{kind}": sd[f"{ours}.mlp.down.{kind}"]})
    out["model.norm.weight"] = gain(sd["final_norm.weight"])
    out["lm_head.weight"] = sd["head.weight"]
    return out


def to_hf(model: Transformer, cfg: DictConfig | None = None, *, bos_token_id: int | None = None,
          eos_token_id: int | None = None):
    """A transformers model (eval mode, float32) that computes the same logits as `model`."""
    cfg = model.cfg if cfg is None else typed(cfg)
    config = hf_config(cfg, model.vocab_size, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    transformers = require_transformers()
    if config.model_type == "gemma2":
        config._attn_implementation = "eager"  # soft-capping needs the eager kernel (HF's own advice)
    state = to_hf_state_dict(model, cfg)
    hf_model = getattr(transformers, HF_CLASS[config.model_type])(config)
    hf_model.load_state_dict(state, strict=True)
    return hf_model.float().eval()


__all__ = ["hf_config", "hf_family", "to_hf", "to_hf_state_dict"]
