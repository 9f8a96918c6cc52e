"""Registered building blocks, one module per design axis (norms, ffn, positional, attention, blocks).

Modules register their options when imported; `components.registry.lookup` imports them on demand.
"""
from components.registry import build, lookup, options, register

__all__ = ["build", "lookup", "options", "register"]
