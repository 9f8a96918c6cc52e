"""How an override value compares with another as the report spells it: the sweeper (which variants
enter a comparison) and the report (which option is the baseline) must agree, so both ask here."""
from __future__ import annotations

from typing import Any


def same_value(a: Any, b: Any) -> bool:
    """Option names compare as text; numbers also by value (`3e-3` is `0.003`)."""
    if str(a) == str(b):
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False
