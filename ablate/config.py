"""Typed schemas for every config group, registered in Hydra's ConfigStore.

`conf/config.yaml` starts its defaults list with `schema`, so every YAML option and every
command-line override is merged into these dataclasses: an unknown key or a wrong type fails
at composition, before anything runs. One dataclass per design axis; the YAML of an option
sets `name` (the registry key) and the knobs the option uses.

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
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # null = n_heads (MHA); 1 = MQA; in between = GQA
    context_length: int = 128
    tie_embeddings: bool = True
    dropout: float = 0.0
    bias: bool = False  # biases in linear layers and LayerNorm (GPT-2 has them, LLaMA does not)
    init_std: float = 0.02
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(d_model) (Vaswani et al. 2017; Gemma)


@dataclass
class NormConfig:
    name: str = "rms"
    eps: float = 1e-5


@dataclass
class NormPosConfig:
    name: str = "pre"


@dataclass
class FFNConfig:
    name: str = "swiglu"
    d_ff_ratio: float = 8 / 3  # hidden size = ratio * d_model, rounded to multiple_of
    multiple_of: int = 8


@dataclass
class BlockConfig:
    name: str = "serial"


@dataclass
class PosConfig:
    name: str = "rope"
    theta: float = 10000.0  # RoPE base; sinusoidal uses the same base


@dataclass
class AttnConfig:
    name: str = "full"
    window: Optional[int] = None  # sliding_window / strided: keys within this many positions
    stride: Optional[int] = None  # strided: also every stride-th earlier position
    chunk_size: int = 64  # linear: tokens per chunk (quadratic inside a chunk, recurrent across chunks)


@dataclass
class QKNormConfig:
    name: str = "off"


@dataclass
class SoftcapConfig:
    name: str = "off"
    attn: Optional[float] = None  # cap on attention logits; null = no cap
    logits: Optional[float] = None  # cap on output logits; null = no cap


@dataclass
class ZLossConfig:
    name: str = "off"
    coef: float = 0.0


@dataclass
class MoEConfig:
    name: str = "off"
    n_experts: int = 8
    top_k: int = 2
    n_shared: int = 0
    granularity: int = 1
    aux_loss: float = 0.01
    router_z_loss: float = 0.001


@dataclass
class DataConfig:
    name: str = "shakespeare"
    path: Optional[str] = None  # data=text: a file, a directory or a glob
    archive: Optional[str] = None  # a local copy of the corpus's source archive (skips the download)
    val_fraction: float = 0.1  # share of whole documents held out for validation
    url: Optional[str] = None  # where an online corpus is fetched from


@dataclass
class TokenizerConfig:
    name: str = "bpe"
    vocab_size: int = 2048


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine / wsd: final lr = min_lr_ratio * lr
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying at the end


@dataclass
class LoggerConfig:
    name: str = "wandb"
    project: str = "ablate"
    entity: Optional[str] = None


@dataclass
class TrainConfig:
    max_steps: int = 800
    batch_size: int = 16  # sequences per optimizer step (the global batch)
    grad_accum: int = 1  # micro-steps per optimizer step; batch_size is split across them
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 autocast where it measures fast: see ablate.hardware) | fp32 | bf16
    compile: bool = False
    eval_interval: Optional[int] = None  # steps between evaluations; null = max_steps / 10 (ablate/evaluation.py)
    eval_batches: int = 8  # fixed validation windows, the same for every run of a sweep
    log_interval: int = 10
    resume: str = "auto"  # auto: continue from the run directory's checkpoint if there is one; never
    threads: Optional[int] = None  # torch CPU threads; null = torch's default
    sample_tokens: int = 200
    sample_temperature: float = 0.8
    sample_top_p: float = 0.95
    sample_prompt: str = "\n"
    divergence_factor: float = 3.0  # stop as diverged when train loss exceeds factor * initial loss


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
