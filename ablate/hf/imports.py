"""Hugging Face transformers models -> ablate: `model, cfg = from_hf(hf_model_or_path)`.

The other direction, and which configs convert at all, is in `ablate.hf.export` (see its docstring for
the weight layouts). Only exact conversions: anything ablate cannot compute raises NotExpressible.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ablate.config.schema import compose, structured
from ablate.hf.errors import NotExpressible, require_transformers
from ablate.hf.export import GATED_FROM_HF, PLAIN_FROM_HF, layer_norm_names
from ablate.model import Transformer
from components.ffn import hidden_size


def _ffn_size(d_model: int, d_ff: int) -> dict[str, Any]:
    for multiple_of in (8, 1):
        ratio = d_ff / d_model
        if hidden_size(d_model, ratio, multiple_of) == d_ff:
            return {"d_ff_ratio": ratio, "multiple_of": multiple_of}
    raise NotExpressible(f"intermediate_size={d_ff} cannot be expressed as ffn.d_ff_ratio * d_model={d_model}")


def _refuse(ok: bool, what: str) -> None:
    if not ok:
        raise NotExpressible(f"this Hugging Face model has no exact ablate equivalent: {what}.")


def _gemma2_attention(layer_types: list[str], window: int | None) -> dict[str, Any]:
    """Our attn option for Gemma 2's per-layer types: all full, all sliding, or local_global's rule."""
    if set(layer_types) == {"full_attention"}:
        return {"name": "full"}
    if set(layer_types) == {"sliding_attention"}:
        return {"name": "sliding_window", "window": window}
    every = layer_types.index("full_attention") + 1
    rule = ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(len(layer_types))]
    _refuse(layer_types == rule, f"layer_types={layer_types} (ablate's attn=local_global makes layer i global when "
                                 f"(i + 1) % global_every == 0)")
    return {"name": "local_global", "window": window, "global_every": every}


def config_from_hf(config) -> DictConfig:
    """Our composed config (architecture groups; data/optim/train at their defaults) for an HF config."""
    kind = config.model_type
    _refuse(kind in ("llama", "mistral", "mixtral", "gemma2", "olmo2", "gpt2"),
            f"model_type={kind!r}; supported: llama, mistral, mixtral, gemma2, olmo2, gpt2")
    tree: dict[str, Any] = {"softcap": {"name": "off"}, "qk_norm": {"name": "off"}, "z_loss": {"name": "off"},
                            "block": {"name": "serial"}, "attn": {"name": "full"}}
    if kind == "gpt2":
        act = config.activation_function
        _refuse(act in PLAIN_FROM_HF, f"activation_function={act!r}; supported: {', '.join(PLAIN_FROM_HF)}")
        _refuse(config.scale_attn_weights and not config.scale_attn_by_inverse_layer_idx,
                "scale_attn_weights=False or scale_attn_by_inverse_layer_idx=True (attention scale differs)")
        _refuse(not getattr(config, "add_cross_attention", False), "add_cross_attention=True")
        d = config.n_embd
        d_ff = config.n_inner or 4 * d
        tree.update(
            model={"name": "from_hf", "d_model": d, "n_layers": config.n_layer, "n_heads": config.n_head,
                   "n_kv_heads": None, "context_length": config.n_positions,
                   "tie_embeddings": bool(config.tie_word_embeddings), "dropout": float(config.resid_pdrop),
                   "bias": True, "init_std": config.initializer_range, "scale_embeddings": False},
            norm={"name": "ln", "eps": config.layer_norm_epsilon}, norm_pos={"name": "pre"},
            ffn={"name": PLAIN_FROM_HF[act], **_ffn_size(d, d_ff)}, pos={"name": "learned"}, moe={"name": "off"})
    else:
        act = config.hidden_activation if kind == "gemma2" else config.hidden_act
        _refuse(act in GATED_FROM_HF, f"hidden_act={act!r}; supported: {', '.join(GATED_FROM_HF)}")
        d, n_heads = config.hidden_size, config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or d // n_heads
        _refuse(head_dim * n_heads == d, f"head_dim={head_dim} x num_attention_heads={n_heads} != hidden_size={d} "
                                         f"(ablate ties head_dim to d_model / n_heads)")
        rope = getattr(config, "rope_parameters", None) or {}
        _refuse(rope.get("rope_type", "default") == "default",
                f"rope_parameters.rope_type={rope.get('rope_type')!r} (only plain RoPE)")
        attention_bias = bool(getattr(config, "attention_bias", False))
        mlp_bias = bool(getattr(config, "mlp_bias", False))
        context = config.max_position_embeddings
        window = getattr(config, "sliding_window", None)
        if kind == "gemma2":
            _refuse(config.query_pre_attn_scalar == head_dim,
                    f"query_pre_attn_scalar={config.query_pre_attn_scalar} != head_dim={head_dim} "
                    f"(ablate scales scores by head_dim^-1/2)")
            _refuse(not getattr(config, "use_bidirectional_attention", None), "use_bidirectional_attention=True")
            _refuse(not attention_bias, "attention_bias=True (Gemma 2's MLP has none, ablate biases all or none)")
            tree["attn"] = _gemma2_attention(list(config.layer_types), window)
            tree["softcap"] = {"name": "on", "attn": config.attn_logit_softcapping,
                               "logits": config.final_logit_softcapping}
        elif window is not None and window < context:
            tree["attn"] = {"name": "sliding_window", "window": window}
        if kind == "mixtral":
            tree["moe"] = {"name": "topk", "n_experts": config.num_local_experts,
                           "top_k": config.num_experts_per_tok, "n_shared": 0, "granularity": 1,
                           "router_z_loss": 0.0}
        else:
            tree["moe"] = {"name": "off"}
        if kind == "olmo2":
            tree["qk_norm"] = {"name": "on", "scope": "full"}
        tree.update(
            model={"name": "from_hf", "d_model": d, "n_layers": config.num_hidden_layers, "n_heads": n_heads,
                   "n_kv_heads": config.num_key_value_heads if config.num_key_value_heads != n_heads else None,
                   "context_length": context, "tie_embeddings": bool(config.tie_word_embeddings),
                   "dropout": 0.0, "bias": attention_bias or mlp_bias, "init_std": config.initializer_range,
                   "scale_embeddings": kind == "gemma2"},
            norm={"name": "rms", "eps": config.rms_norm_eps},
            norm_pos={"name": {"gemma2": "double", "olmo2": "output"}.get(kind, "pre")},
            ffn={"name": GATED_FROM_HF[act], **_ffn_size(d, config.intermediate_size)},
            pos={"name": "rope", "theta": float(rope.get("rope_theta", 10000.0))})
    tree["tokenizer"] = {"name": "bpe", "vocab_size": config.vocab_size}
    return structured(tree, base=compose())


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], cfg: DictConfig, model_type: str,
                       template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF weights renamed to our keys; `template` (our fresh state_dict) gives the keys and shapes
    that must be filled (missing HF biases become zeros)."""
    sd = {k: v.detach().clone() for k, v in hf_state.items()}
    m = cfg.model
    out: dict[str, torch.Tensor] = {}

    def put(key: str, value: torch.Tensor | None) -> None:
        if key in template:
            out[key] = torch.zeros_like(template[key]) if value is None else value

    if model_type == "gpt2":
        put("embed.weight", sd["transformer.wte.weight"])
        put("pos.weight", sd["transformer.wpe.weight"])
        for i in range(m.n_layers):
            ours, theirs = f"blocks.{i}", f"transformer.h.{i}"
            for a, b, conv in (("attn_residual.input_norm", "ln_1", False), ("attn.qkv", "attn.c_attn", True),
                               ("attn.out", "attn.c_proj", True), ("mlp_residual.input_norm", "ln_2", False),
                               ("mlp.up", "mlp.c_fc", True), ("mlp.down", "mlp.c_proj", True)):
                weight = sd[f"{theirs}.{b}.weight"]
                put(f"{ours}.{a}.weight", weight.t().contiguous() if conv else weight)
                put(f"{ours}.{a}.bias", sd[f"{theirs}.{b}.bias"])
        put("final_norm.weight", sd["transformer.ln_f.weight"])
        put("final_norm.bias", sd["transformer.ln_f.bias"])
        put("head.weight", sd.get("lm_head.weight", sd["transformer.wte.weight"]))
        return out

    gain = (lambda w: w + 1.0) if model_type == "gemma2" else (lambda w: w)
    put("embed.weight", sd["model.embed_tokens.weight"])
    for i in range(m.n_layers):
        ours, theirs = f"blocks.{i}", f"model.layers.{i}"
        attn = f"{theirs}.self_attn"
        put(f"{ours}.attn.qkv.weight", torch.cat([sd[f"{attn}.{p}_proj.weight"] for p in "qkv"]))
        put(f"{ours}.attn.out.weight", sd[f"{attn}.o_proj.weight"])
        if f"{attn}.q_proj.bias" in sd:
            put(f"{ours}.attn.qkv.bias", torch.cat([sd[f"{attn}.{p}_proj.bias"] for p in "qkv"]))
            put(f"{ours}.attn.out.bias", sd.get(f"{attn}.o_proj.bias"))
        else:
            put(f"{ours}.attn.qkv.bias", None)
            put(f"{ours}.attn.out.bias", None)
        for a, b in layer_norm_names(model_type).items():
            put(f"{ours}.{a}.weight", gain(sd[f"{theirs}.{b}.weight"]))
        mlp = f"{theirs}.mlp"
        if model_type == "mixtral":
            put(f"{ours}.mlp.router.weight", sd[f"{mlp}.gate.weight"])
            for e in range(cfg.moe.n_experts):
                put(f"{ours}.mlp.experts.{e}.gate_up.weight", sd[f"{mlp}.experts.gate_up_proj"][e].contiguous())
                put(f"{ours}.mlp.experts.{e}.down.weight", sd[f"{mlp}.experts.down_proj"][e].contiguous())
        else:
            put(f"{ours}.mlp.gate_up.weight", torch.cat([sd[f"{mlp}.gate_proj.weight"], sd[f"{mlp}.up_proj.weight"]]))
            put(f"{ours}.mlp.down.weight", sd[f"{mlp}.down_proj.weight"])
            if f"{mlp}.gate_proj.bias" in sd:
                put(f"{ours}.mlp.gate_up.bias", torch.cat([sd[f"{mlp}.gate_proj.bias"], sd[f"{mlp}.up_proj.bias"]]))
                put(f"{ours}.mlp.down.bias", sd[f"{mlp}.down_proj.bias"])
            else:
                put(f"{ours}.mlp.gate_up.bias", None)
                put(f"{ours}.mlp.down.bias", None)
    put("final_norm.weight", gain(sd["model.norm.weight"]))
    put("head.weight", sd.get("lm_head.weight", sd["model.embed_tokens.weight"]))
    return out


def from_hf(hf_model: Any) -> tuple[Transformer, DictConfig]:
    """(our Transformer in eval mode, its config) computing the same logits as `hf_model`
    (a transformers causal LM, or a path / hub id for AutoModelForCausalLM.from_pretrained)."""
    if isinstance(hf_model, (str, Path)):
        transformers = require_transformers()
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_model))
    config = hf_model.config
    cfg = config_from_hf(config)
    model = Transformer(cfg, config.vocab_size)
    state = from_hf_state_dict(hf_model.state_dict(), cfg, config.model_type, model.state_dict())
    model.load_state_dict(state, strict=True)
    return model.eval(), cfg


# ------------------------------------------------------------------------------------------------
# tokenizer: ablate's byte-level BPE as a transformers fast tokenizer
