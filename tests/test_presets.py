"""Architecture presets (`+experiment=NAME`): each composes through Hydra, keeps the size group
selectable, has the architecture its description promises, builds, runs, and is counted exactly."""
from __future__ import annotations

import pytest
import torch
import yaml

from ablate.accounting import count
from ablate.config.validate import check
from ablate.model import Transformer
from components.ffn import hidden_size
from components.registry import axes
from tests.conftest import ROOT, hydra_compose_once

EXPERIMENTS = ROOT / "conf" / "experiment"
PRESETS = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
ARCHITECTURE_GROUPS = axes("model")
SIZE_KEYS = ("name", "d_model", "n_layers", "n_heads", "context_length")
VOCAB = 97

# what each preset promises (README / INTERFACE / the comment in its YAML), key -> value
COMMON = {"attn.name": "full", "block.name": "serial", "qk_norm.name": "off", "softcap.name": "off",
          "z_loss.name": "off", "moe.name": "off", "model.bias": False, "model.scale_embeddings": False}
PROMISES = {
    "gpt2": {**COMMON, "norm.name": "ln", "norm_pos.name": "pre", "ffn.name": "gelu_tanh", "ffn.d_ff_ratio": 4.0,
             "pos.name": "learned", "model.tie_embeddings": True, "model.bias": True},
    "llama": {**COMMON, "norm.name": "rms", "norm_pos.name": "pre", "ffn.name": "swiglu", "pos.name": "rope",
              "pos.theta": 10000.0, "model.tie_embeddings": False},
    "palm": {**COMMON, "norm.name": "ln", "norm_pos.name": "pre", "ffn.name": "swiglu", "ffn.d_ff_ratio": 4.0,
             "block.name": "parallel", "pos.name": "rope", "z_loss.name": "on", "z_loss.coef": 1e-4,
             "model.n_kv_heads": 1, "model.tie_embeddings": True},
    "gemma2": {**COMMON, "norm.name": "rms", "norm.eps": 1e-6, "norm_pos.name": "double", "ffn.name": "geglu",
               "pos.name": "rope", "attn.name": "local_global", "attn.window": 4096, "attn.global_every": 2,
               "softcap.name": "on", "softcap.attn": 50.0, "softcap.logits": 30.0,
               "model.scale_embeddings": True, "model.tie_embeddings": True},
    "olmo2": {**COMMON, "norm.name": "rms", "norm_pos.name": "output", "qk_norm.name": "on", "qk_norm.scope": "full",
              "ffn.name": "swiglu", "pos.name": "rope", "pos.theta": 500000.0, "z_loss.name": "on", "model.tie_embeddings": False},
    "mixtral": {**COMMON, "norm.name": "rms", "norm_pos.name": "pre", "ffn.name": "swiglu", "pos.name": "rope",
                "moe.name": "topk", "moe.n_experts": 8, "moe.top_k": 2, "moe.n_shared": 0, "moe.granularity": 1,
                "model.tie_embeddings": False},
    "cs336": {**COMMON, "norm.name": "rms", "norm.eps": 1e-5, "norm_pos.name": "pre", "ffn.name": "swiglu",
              "ffn.multiple_of": 64, "pos.name": "rope", "pos.theta": 10000.0, "model.tie_embeddings": False},
}


def select(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def test_every_preset_file_is_described_here():
    assert set(PRESETS) == set(PROMISES)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_file_sets_architecture_only_and_documents_its_source(name):
    text = (EXPERIMENTS / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert "Differs from" in text  # says what differs from the paper / model card
    body = yaml.safe_load(text)
    overridden = [next(iter(entry)) for entry in body["defaults"]]
    assert all(key.startswith("override /") for key in overridden)
    assert sorted(key.removeprefix("override /") for key in overridden) == sorted(ARCHITECTURE_GROUPS)
    assert set(body) - {"defaults"} <= set(ARCHITECTURE_GROUPS) | {"model"}  # no logger / data / train keys
    assert not set(body.get("model", {})) & set(SIZE_KEYS)  # sizes stay with the model group


@pytest.mark.parametrize("size", [None, "micro"])
@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_through_hydra_with_the_promised_architecture(name, size):
    overrides = [f"+experiment={name}"] + ([f"model={size}"] if size else [])
    cfg = hydra_compose_once(*overrides)
    assert cfg.model.name == (size or "nano")
    for key, value in PROMISES[name].items():
        assert select(cfg, key) == value, (name, key)
    check(cfg)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_runs_and_is_counted_in_closed_form(name):
    cfg = hydra_compose_once(f"+experiment={name}", "model=micro")
    torch.manual_seed(0)
    model = Transformer(cfg, VOCAB).eval()
    idx = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        logits = model(idx)
    assert logits.shape == (2, 12, VOCAB) and torch.isfinite(logits).all()
    assert count(cfg, VOCAB)["params_total"] == sum(p.numel() for p in model.parameters())
    assert (model.head.weight is model.embed.weight) == cfg.model.tie_embeddings


def test_presets_keep_the_size_group_and_command_line_overrides_win():
    cfg = hydra_compose_once("+experiment=llama", "model=small")
    assert (cfg.model.name, cfg.model.d_model, cfg.model.n_layers) == ("small", 384, 6)
    assert cfg.model.tie_embeddings is False  # the preset's choice survives the size group
    cfg = hydra_compose_once("+experiment=llama", "norm=ln", "model.n_kv_heads=2", "model.tie_embeddings=true")
    assert (cfg.norm.name, cfg.model.n_kv_heads, cfg.model.tie_embeddings) == ("ln", 2, True)


def test_gemma2_scales_embeddings_by_sqrt_d_model():
    cfg = hydra_compose_once("+experiment=gemma2", "model=micro", "softcap=off")
    torch.manual_seed(0)
    model = Transformer(cfg, VOCAB).eval()
    plain = Transformer(hydra_compose_once("+experiment=gemma2", "model=micro", "softcap=off",
                                           "model.scale_embeddings=false"), VOCAB).eval()
    plain.load_state_dict(model.state_dict())
    idx = torch.randint(0, VOCAB, (1, 8))
    with torch.no_grad():
        plain.embed.weight.mul_(cfg.model.d_model ** 0.5)  # scaling the table by hand is the same function,
        plain.head.weight = torch.nn.Parameter(model.head.weight.clone())  # untie: the head is not scaled
        torch.testing.assert_close(model(idx), plain(idx), rtol=1e-5, atol=1e-5)


def test_olmo2_norms_sublayer_outputs_only():
    cfg = hydra_compose_once("+experiment=olmo2", "model=micro")
    block = Transformer(cfg, VOCAB).blocks[0]
    for residual in (block.attn_residual, block.mlp_residual):
        assert isinstance(residual.input_norm, torch.nn.Identity)
        assert not isinstance(residual.output_norms[0], torch.nn.Identity)
        assert isinstance(residual.sum_norm, torch.nn.Identity)


def test_cs336_assignment_sizes_give_its_d_ff():
    """The overrides named in cs336.yaml give the handout's TinyStories model: d_ff = 1344."""
    cfg = hydra_compose_once("+experiment=cs336", "model.d_model=512", "model.n_layers=4", "model.n_heads=16",
                             "model.context_length=256", "tokenizer.vocab_size=10000")
    assert hidden_size(cfg.model.d_model, cfg.ffn.d_ff_ratio, cfg.ffn.multiple_of) == 1344
    check(cfg)
