"""The benchmark's shapes, and configs composed the way `python ablate/run.py` composes them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ablate.config.schema
from ablate.config.schema import with_option  # noqa: F401  (re-exported for the sections)

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


@dataclass(frozen=True)
class Shape:
    n_layers: int
    n_heads: int
    d_model: int
    context: int
    batch: int
    vocab: int = 2048

    @property
    def tokens(self) -> int:
        return self.batch * self.context


SHAPES = {
    "tiny": Shape(n_layers=2, n_heads=2, d_model=32, context=16, batch=2, vocab=512),  # tests
    "A": Shape(n_layers=4, n_heads=4, d_model=128, context=64, batch=12),
    "B": Shape(n_layers=6, n_heads=6, d_model=384, context=256, batch=16),
    # GPT-2 small (conf/model/gpt2_124m.yaml) with GPT-2's vocabulary: a GPU size (ablate/bench/gpu.sh)
    "G": Shape(n_layers=12, n_heads=12, d_model=768, context=1024, batch=16, vocab=50257),
}


def compose(overrides: list[str]):
    """The config `python ablate/run.py OVERRIDES` would train."""
    return ablate.config.schema.compose(*overrides)


def shape_overrides(shape: Shape) -> list[str]:
    return [f"model.n_layers={shape.n_layers}", f"model.n_heads={shape.n_heads}", f"model.d_model={shape.d_model}",
            f"model.context_length={shape.context}", "model.n_kv_heads=null", "model.dropout=0.0",
            f"tokenizer.vocab_size={shape.vocab}", f"train.batch_size={shape.batch}", "logger=none"]


def preset_config(preset: str | None, shape: Shape, extra: list[str] = ()):
    return compose(([f"+experiment={preset}"] if preset else []) + shape_overrides(shape) + list(extra))
