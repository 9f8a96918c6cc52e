"""The model's shape (the `model` config group: nano, micro, small, gpt2_124m): sizes every
component is built from. Torch-free, so composing a config stays cheap."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from components.knobs import knob


@dataclass
class ModelConfig:
    name: str = "nano"
    d_model: int = knob(128, ge=1, doc="width of the residual stream")
    n_layers: int = knob(4, ge=1, doc="number of blocks")
    n_heads: int = knob(4, ge=1, doc="query heads per attention layer")
    n_kv_heads: Optional[int] = knob(None, ge=1, doc="key/value heads: null = n_heads (MHA), 1 = MQA, between = GQA")
    context_length: int = knob(128, ge=1, doc="tokens per training sequence")
    tie_embeddings: bool = True
    dropout: float = knob(0.0, ge=0, lt=1, doc="dropout probability")
    bias: bool = False  # biases in linear layers and LayerNorm (GPT-2 has them, LLaMA does not)
    init_std: float = knob(0.02, gt=0, doc="std of the normal initialization")
    init_by_name: bool = knob(True, doc="each weight drawn from its own stream, seeded by train.seed and its "
                              "name: a weight two variants share starts equal in both (a paired comparison)")
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(d_model) (Vaswani et al. 2017; Gemma)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads
