"""Typed schemas for every config group, registered in Hydra's ConfigStore.

`conf/config.yaml` starts its defaults list with `schema`, so every YAML option and every
command-line override is merged into these dataclasses: an unknown key or a wrong type fails
at composition, before anything runs. One dataclass per design axis; the YAML of an option
sets `name` (the registry key) and the knobs the option uses. A knob states its allowed values
once, on its field (`components.knobs.knob`); `ablate.validate` checks every value against it.

This module imports no torch, so `python ablate/run.py --cfg job` stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from hydra.core.config_store import ConfigStore

from components.knobs import knob


@dataclass
class ModelConfig:
    name: str = "nano"
    d_model: int = knob(128, ge=1, doc="width of the residual stream")
    n_layers: int = knob(4, ge=1, doc="number of transformer blocks")
    n_heads: int = knob(4, ge=1, doc="attention heads; must divide model.d_model")
    n_kv_heads: Optional[int] = knob(None, ge=1, doc="key/value heads: null = n_heads (MHA), 1 = MQA, between = GQA")
    context_length: int = knob(128, ge=1, doc="tokens per training window")
    tie_embeddings: bool = True
    dropout: float = knob(0.0, ge=0, lt=1, doc="dropout probability")
    bias: bool = False  # biases in linear layers and LayerNorm (GPT-2 has them, LLaMA does not)
    init_std: float = knob(0.02, gt=0, doc="std of the normal initialization of weights")
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(d_model) (Vaswani et al. 2017; Gemma)


@dataclass
class NormConfig:
    name: str = "rms"
    eps: float = knob(1e-5, gt=0, doc="added to the variance before the square root")


@dataclass
class NormPosConfig:
    name: str = "pre"


@dataclass
class FFNConfig:
    name: str = "swiglu"
    d_ff_ratio: float = knob(8 / 3, gt=0, doc="hidden size = d_ff_ratio * d_model, rounded to ffn.multiple_of")
    multiple_of: int = knob(8, ge=1, doc="the hidden size is rounded up to a multiple of this")


@dataclass
class BlockConfig:
    name: str = "serial"


@dataclass
class PosConfig:
    name: str = "rope"
    theta: float = knob(10000.0, gt=0, doc="base of the rotation / sinusoid frequencies")


@dataclass
class AttnConfig:
    name: str = "full"
    window: Optional[int] = knob(None, ge=1, doc="attn=sliding_window and attn=strided: keys within this many positions")
    stride: Optional[int] = knob(None, ge=1, doc="attn=strided: also every stride-th earlier position")
    chunk_size: int = knob(64, ge=1, doc="attn=linear: tokens per chunk, quadratic inside, recurrent across chunks")


@dataclass
class QKNormConfig:
    name: str = "off"


@dataclass
class SoftcapConfig:
    name: str = "off"
    attn: Optional[float] = knob(None, gt=0, doc="cap on attention logits; null = no cap")
    logits: Optional[float] = knob(None, gt=0, doc="cap on output logits; null = no cap")


@dataclass
class ZLossConfig:
    name: str = "off"
    coef: float = knob(0.0, ge=0, doc="weight of log(Z)^2 in the loss; 0 = off")


@dataclass
class MoEConfig:
    name: str = "off"
    n_experts: int = knob(8, ge=1, doc="routed experts (before granularity)")
    top_k: int = knob(2, ge=1, doc="experts each token is routed to")
    n_shared: int = knob(0, ge=0, doc="experts every token goes through")
    granularity: int = knob(1, ge=1, doc="each expert split into this many finer experts")
    aux_loss: float = knob(0.01, ge=0, doc="load-balancing loss coefficient; 0 = off")
    router_z_loss: float = knob(0.001, ge=0, doc="router z-loss coefficient; 0 = off")


@dataclass
class DataConfig:
    name: str = "shakespeare"
    path: Optional[str] = None  # data=text: a file, a directory or a glob
    archive: Optional[str] = None  # a local copy of the corpus's source archive (skips the download)
    val_fraction: float = knob(0.1, ge=0, lt=1, doc="share of whole documents held out for validation")
    url: Optional[str] = None  # where an online corpus is fetched from


@dataclass
class TokenizerConfig:
    name: str = "bpe"
    vocab_size: int = knob(2048, ge=257, le=2**32,
                           doc="256 byte tokens + <|endoftext|> + BPE merges, so at least 257")


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = knob(3e-3, gt=0, doc="peak learning rate")
    weight_decay: float = knob(0.1, ge=0, doc="decoupled weight decay on matrices")
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = knob(1e-8, gt=0, doc="added to the denominator of Adam's update")
    grad_clip: float = knob(1.0, ge=0, doc="max global gradient norm; 0 disables clipping")


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    warmup_steps: int = knob(50, ge=0, doc="steps of linear warmup")
    min_lr_ratio: float = knob(0.1, ge=0, le=1, doc="cosine / wsd: final lr = min_lr_ratio * optim.lr")
    decay_fraction: float = knob(0.2, ge=0, le=1, doc="wsd: share of steps spent decaying at the end")


@dataclass
class LoggerConfig:
    name: str = "wandb"
    project: str = "ablate"
    entity: Optional[str] = None


@dataclass
class TrainConfig:
    max_steps: int = knob(800, ge=1, doc="optimizer steps")
    batch_size: int = knob(16, ge=1, doc="sequences per optimizer step (the global batch)")
    grad_accum: int = knob(1, ge=1, doc="micro-steps per optimizer step; must divide train.batch_size")
    seed: int = knob(0, ge=0, lt=2**63, doc="seeds the weights and the data order")
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (checked against this machine by validate)
    dtype: str = knob("auto", choices=("auto", "fp32", "bf16"),
                      doc="auto: bf16 autocast where it measures fast (ablate.hardware), fp32 elsewhere")
    compile: bool = False
    eval_interval: Optional[int] = knob(None, ge=1, doc="steps between validation losses; null = max_steps / 10 "
                                        "(ablate/evaluation.py)")
    eval_batches: int = knob(8, ge=1, doc="fixed validation windows, the same for every run of a sweep")
    log_interval: int = knob(10, ge=1, doc="steps between rows of metrics.jsonl")
    resume: str = knob("auto", choices=("auto", "never"),
                       doc="auto: continue from the run directory's checkpoint if there is one")
    threads: Optional[int] = knob(None, ge=1, doc="torch CPU threads; null = torch's default")
    sample_tokens: int = knob(200, ge=0, doc="tokens sampled into samples.txt at the end")
    sample_temperature: float = knob(0.8, ge=0, doc="0 = greedy")
    sample_top_p: float = knob(0.95, gt=0, le=1, doc="nucleus sampling mass")
    sample_prompt: str = "\n"
    divergence_factor: float = knob(3.0, gt=1, finite=False,
                                    doc="stop as diverged when the loss exceeds factor * initial loss; inf = never")


@dataclass
class CompareConfig:
    """How the sweep report compares options; analysis reads it from each run's config, so a sweep
    file sets it (`compare: {baseline: {ffn: gelu}, tuned: [optim.lr]}`)."""

    baseline: Dict[str, str] = knob(default_factory=dict, doc="axis -> the option every other option of "
                                    "that axis is compared with; an axis not named uses its conf/config.yaml default")
    tuned: List[str] = knob(default_factory=list, doc="config keys tuned per variant (e.g. optim.lr), "
                            "not compared: each variant is judged at its own best value")
    alpha: float = knob(0.05, gt=0, lt=1, doc="family-wise error rate of the report's tests (Holm-corrected)")
    stage: str = knob("verdict", choices=("verdict", "tune"), doc="set by the tuning sweeper: `tune` runs "
                      "only choose the tuned values and never enter the verdict")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    norm_pos: NormPosConfig = field(default_factory=NormPosConfig)
    ffn: FFNConfig = field(default_factory=FFNConfig)
    block: BlockConfig = field(default_factory=BlockConfig)
    pos: PosConfig = field(default_factory=PosConfig)
    attn: AttnConfig = field(default_factory=AttnConfig)
    qk_norm: QKNormConfig = field(default_factory=QKNormConfig)
    softcap: SoftcapConfig = field(default_factory=SoftcapConfig)
    z_loss: ZLossConfig = field(default_factory=ZLossConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)


def register_configs() -> None:
    ConfigStore.instance().store(name="schema", node=Config)
    from ablate.plugins import expose

    expose()  # hydra/sweeper=ablate_tuned (hydra_plugins/), before Hydra scans for plugins


register_configs()
