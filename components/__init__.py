"""Registered building blocks of the model, one module per design axis.

Importing this package registers every model-side option (and its Config schema in Hydra's
ConfigStore); the training-side axes (data, tokenizer, optim, schedule, logger) register from
their own modules in `ablate`. This package imports nothing from `ablate`.
"""
# Imported in the lecture's order, which is the order of the axes in a composed config.
from components import norms  # noqa: F401,I001  (registers norm)
from components import blocks  # noqa: F401  (norm_pos, block)
from components import ffn  # noqa: F401
from components import positional  # noqa: F401  (pos)
from components import attention  # noqa: F401  (attn, qk_norm)
from components import softcap  # noqa: F401
from components import losses  # noqa: F401  (z_loss)
from components import moe  # noqa: F401
from components.registry import AXES, OptionConfig, axis, config_of, lookup, options, register

__all__ = ["AXES", "OptionConfig", "axis", "config_of", "lookup", "options", "register"]
