"""Hugging Face conversion (ablate.hf, ablate.export_hf): for random weights the logits agree in both
directions, ours -> transformers and transformers -> ours; configs transformers cannot express are
refused naming the reason; the export CLI writes a folder AutoModelForCausalLM loads."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

transformers = pytest.importorskip("transformers")

from ablate import load_run  # noqa: E402
from ablate.config.schema import with_option  # noqa: E402
from ablate.hf import NotExpressible, hf_family, to_hf  # noqa: E402
from ablate.hf import from_hf  # noqa: E402
from ablate.model import Transformer  # noqa: E402
from tests.conftest import POEMS, ROOT, hydra_compose_once  # noqa: E402

VOCAB, T, ATOL = 101, 16, 1e-4
TINY = ("model=micro", "model.n_layers=3")  # d_model 64, 4 heads, context 64


def compose(*overrides: str):
    """Hydra's composition (+experiment), cached. An attn option switched on top of a preset that sets attn knobs
    (gemma2's attn.window) gets the option's own settings, as Hydra's defaults list would for a plain run."""
    switch = [o for o in overrides if o.startswith("attn=")]
    cfg = hydra_compose_once(*(o for o in overrides if not (switch and o.startswith("attn"))))
    for override in switch:
        cfg = with_option(cfg, "attn", override.partition("=")[2])
    for override in (o for o in overrides if switch and o.startswith("attn.")):
        key, _, value = override.partition("=")
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    return cfg


def randomize(module: torch.nn.Module, seed: int, gemma_norms: bool = False) -> None:
    """Every parameter random and far from its init (gains != 1, biases != 0), so a misplaced or
    untransformed tensor shows up in the logits. Gemma's HF norms store w with gain 1 + w."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 1 and ("norm" in name or ".ln_" in name):
                p.copy_((0.0 if gemma_norms else 1.0) + 0.3 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            elif "embed" in name or "wte" in name or "wpe" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(seed))


def assert_same_logits(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert ours.abs().max() > 1.0  # logits of a meaningful size, not all near zero
    assert (ours - theirs).abs().max().item() < ATOL


OURS_TO_HF = {  # id -> (overrides, HF class)
    "llama-gqa": (("+experiment=llama", *TINY, "model.n_kv_heads=2"), "LlamaForCausalLM"),
    "llama-biased-tied": (("+experiment=llama", *TINY, "model.bias=true", "model.tie_embeddings=true"),
                          "LlamaForCausalLM"),
    "mistral-sliding-window": (("+experiment=llama", *TINY, "attn=sliding_window", "attn.window=5"),
                               "MistralForCausalLM"),
    "gpt2": (("+experiment=gpt2", *TINY), "GPT2LMHeadModel"),
    "gpt2-unbiased-untied": (("+experiment=gpt2", *TINY, "model.bias=false", "model.tie_embeddings=false"),
                             "GPT2LMHeadModel"),
    "mixtral-gqa": (("+experiment=mixtral", "model=micro", "model.n_kv_heads=2"), "MixtralForCausalLM"),
    "gemma2-gqa": (("+experiment=gemma2", *TINY, "model.n_kv_heads=2"), "Gemma2ForCausalLM"),
    "gemma2-sliding-window": (("+experiment=gemma2", *TINY, "attn=sliding_window", "attn.window=5"),
                              "Gemma2ForCausalLM"),
    "gemma2-local-global": (("+experiment=gemma2", *TINY, "attn.window=5"), "Gemma2ForCausalLM"),
    "gemma3-pattern": (("+experiment=gemma2", *TINY, "attn.window=4", "attn.global_every=3"), "Gemma2ForCausalLM"),
    "olmo2": (("+experiment=olmo2", *TINY), "Olmo2ForCausalLM"),
    "olmo2-gqa-tied": (("+experiment=olmo2", *TINY, "model.n_kv_heads=2", "model.tie_embeddings=true"),
                       "Olmo2ForCausalLM"),
}


@pytest.mark.parametrize("case", list(OURS_TO_HF))
def test_ours_to_hf_and_back_gives_the_same_logits(case):
    overrides, hf_class = OURS_TO_HF[case]
    cfg = compose(*overrides)
    model = Transformer(cfg, VOCAB).eval()
    randomize(model, seed=1)
    hf_model = to_hf(model, cfg)
    assert type(hf_model).__name__ == hf_class
    idx = tokens()
    with torch.no_grad():
        ours = model(idx)
        assert_same_logits(ours, hf_model(idx).logits)
        back, back_cfg = from_hf(hf_model)  # and the way back lands on the same architecture
        assert_same_logits(ours, back(idx))
    for group in ("norm", "norm_pos", "ffn", "pos", "attn", "moe", "softcap", "qk_norm"):
        assert back_cfg[group].name == cfg[group].name, group
    for group in ("attn", "qk_norm"):  # the pattern (window, global_every) and the q/k norm's scope too
        assert back_cfg[group] == cfg[group], group
    assert back.cfg.ffn.hidden_size(back.cfg.model.d_model) == model.cfg.ffn.hidden_size(model.cfg.model.d_model)


def hf_models():
    c = transformers
    size = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, vocab_size=VOCAB,
                max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return {
        "llama-gqa": lambda: c.LlamaForCausalLM(c.LlamaConfig(intermediate_size=176, num_key_value_heads=2,
                                                              rope_parameters={"rope_type": "default",
                                                                               "rope_theta": 500000.0},
                                                              **size)),
        "gpt2": lambda: c.GPT2LMHeadModel(c.GPT2Config(n_embd=64, n_layer=3, n_head=4, vocab_size=VOCAB,
                                                       n_positions=32, bos_token_id=None, eos_token_id=None)),
        "mixtral-top2-of-8": lambda: c.MixtralForCausalLM(c.MixtralConfig(
            intermediate_size=96, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
            **{**size, "num_hidden_layers": 2})),
        # Gemma 2 as released alternates sliding-window (4096 here) and global layers: no window binds at T = 16
        "gemma2": lambda: c.Gemma2ForCausalLM(c.Gemma2Config(intermediate_size=256, num_key_value_heads=2,
                                                             head_dim=16, query_pre_attn_scalar=16,
                                                             attn_implementation="eager", **size)),
        # a window that binds at T = 16: layers 0 and 2 local, layer 1 global
        "gemma2-window-5": lambda: c.Gemma2ForCausalLM(c.Gemma2Config(
            intermediate_size=256, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=5,
            attn_implementation="eager", **size)),
        "olmo2": lambda: c.Olmo2ForCausalLM(c.Olmo2Config(intermediate_size=176, num_key_value_heads=2,
                                                          rms_norm_eps=1e-6, **size)),
    }


@pytest.mark.parametrize("case", ["llama-gqa", "gpt2", "mixtral-top2-of-8", "gemma2", "gemma2-window-5", "olmo2"])
def test_hf_to_ours_gives_the_same_logits(case):
    torch.manual_seed(0)
    hf_model = hf_models()[case]().eval()
    randomize(hf_model, seed=2, gemma_norms=case.startswith("gemma2"))
    model, cfg = from_hf(hf_model)
    idx = tokens(1)
    with torch.no_grad():
        assert_same_logits(model(idx), hf_model(idx).logits)
    if case.startswith("gemma2"):
        assert (cfg.norm_pos.name, cfg.softcap.attn, cfg.softcap.logits) == ("double", 50.0, 30.0)
        assert cfg.model.scale_embeddings and cfg.model.context_length == 64
        window = 5 if case == "gemma2-window-5" else 4096
        assert (cfg.attn.name, cfg.attn.window, cfg.attn.global_every) == ("local_global", window, 2)
    if case == "olmo2":
        assert (cfg.norm_pos.name, cfg.qk_norm.name, cfg.qk_norm.scope, cfg.norm.eps) == ("output", "on", "full", 1e-6)
    if case == "mixtral-top2-of-8":
        assert (cfg.moe.name, cfg.moe.n_experts, cfg.moe.top_k) == ("topk", 8, 2)
    if case == "llama-gqa":
        assert (cfg.model.n_kv_heads, cfg.pos.theta, cfg.model.tie_embeddings) == (2, 500000.0, False)


@pytest.mark.parametrize("overrides,reason", [
    (("+experiment=llama", "norm=none"), "norm=none"),
    (("+experiment=palm",), "block=parallel"),
    (("+experiment=llama", "pos=alibi"), "pos=alibi"),
    (("+experiment=olmo2", "qk_norm.scope=head"), "qk_norm.scope=head"),
    (("+experiment=llama", "qk_norm=on"), "qk_norm=on"),
    (("+experiment=llama", "attn=local_global"), "attn=local_global"),
    (("+experiment=mixtral", "moe.balance=bias"), "moe.balance=bias"),
    (("+experiment=gpt2", "model.n_kv_heads=2"), "model.n_kv_heads=2"),
    (("+experiment=llama", "softcap=on"), "softcap=on"),
    (("+experiment=mixtral", "moe.n_shared=1"), "moe.n_shared=1"),
], ids=["norm", "block", "pos", "qk_norm-per-head", "qk_norm", "local_global", "balance-bias", "gqa-gpt2", "softcap",
        "shared-experts"])
def test_inexpressible_configs_are_refused_naming_the_option(overrides, reason):
    cfg = compose(*overrides, "model=micro")
    with pytest.raises(NotExpressible, match=reason.replace(".", r"\.")):
        hf_family(cfg)
    with pytest.raises(NotExpressible, match=reason.replace(".", r"\.")):
        to_hf(Transformer(cfg, VOCAB), cfg)


def train_tiny(run_dir: Path, *overrides: str) -> Path:
    from ablate.training.loop import train

    cfg = compose(*overrides, "model=micro", "data=text", f"data.path={POEMS}", "tokenizer.vocab_size=300",
                  "logger=none", "train.max_steps=2", "train.batch_size=4", "train.eval_batches=1",
                  "train.sample_tokens=4")
    train(cfg, run_dir, progress=False)
    return run_dir


def export(run_dir: Path, out_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "ablate.export_hf", str(run_dir), str(out_dir)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_export_cli_writes_a_folder_automodel_loads_with_the_runs_logits(tmp_path):
    run_dir = train_tiny(tmp_path / "run", "+experiment=llama", "model.n_kv_heads=2")
    out = tmp_path / "hf"
    done = export(run_dir, out)
    assert done.returncode == 0, done.stderr
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert "LlamaForCausalLM" in done.stdout and "config.json" in done.stdout
    model, cfg, tokenizer = load_run(run_dir)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf_model).__name__ == "LlamaForCausalLM"
    idx = torch.tensor([tokenizer.encode("From fairest creatures we desire increase,")])
    with torch.no_grad():
        ours, theirs = model(idx), hf_model(idx).logits
    assert (ours - theirs).abs().max().item() < ATOL
    text = (POEMS / "sonnets.txt").read_text()[:5000] + "<|endoftext|> héllo 🙂\n\n\t x"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tokenizer.encode(text) == tokenizer.encode(text)
    assert hf_tokenizer.eos_token_id == tokenizer.eot_id == hf_model.config.eos_token_id
    from ablate.data.tokenizers import load_tokenizer

    assert load_tokenizer(out / "ablate_tokenizer.json").encode(text) == tokenizer.encode(text)


def test_export_cli_refuses_an_inexpressible_run_with_exit_2(tmp_path):
    run_dir = train_tiny(tmp_path / "run", "norm=none")
    out = tmp_path / "hf"
    done = export(run_dir, out)
    assert done.returncode == 2
    assert "norm=none" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # one paragraph
    assert not out.exists()
    missing = export(tmp_path / "not-a-run", out)
    assert missing.returncode == 2 and "checkpoints/latest.pt" in missing.stderr


def test_a_missing_transformers_install_is_named_with_the_fix(monkeypatch, tmp_path, capsys):
    from ablate import export_hf
    from ablate.hf import TransformersMissing, require_transformers

    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    with pytest.raises(TransformersMissing, match="pip install transformers"):
        require_transformers()
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest.pt").touch()
    assert export_hf.main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 2
    assert "pip install transformers" in capsys.readouterr().err
