"""Extending a variant's tuning grid past its edge (`hydra.sweeper.extend`), as pure functions.

A value chosen at the grid's lowest or highest point says only that the optimum may lie beyond it;
comparing variants there compares them away from their own optimum. So the tuning sweeper tries one
grid step further on that side, on the same tuning seeds, and repeats while the best stays at the
new edge, at most `extend` steps per key and side. With several tuned keys only the key(s) whose
best value is at an edge move; the others stay at the chosen point.

The step continues the grid's own spacing at that edge: a ratio (x2 for 0.0015,0.003,0.006) when
the grid is closer to geometric than to arithmetic (all values of one sign, log-ratios more even
than differences), else a difference. Integer grids stay integers. Non-numeric keys, keys with
fewer than two values, and a step that would reach or cross zero (a rate, a decay, a probability
has its bound there) never extend: the report then still flags the choice as at the edge.

Everything here is a function of the scores of the runs done so far, so a re-run of the same sweep
(whose finished jobs return their recorded losses) reaches the same extensions.
"""
# No `from __future__ import annotations` (see tuning_sweeper.py: Hydra imports this with the plugin).
import math
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

Point = Tuple[str, ...]  # one override per tuned key, e.g. ("optim.lr=0.003",)
LOW, HIGH = 0, 1


def number(text: str) -> Optional[float]:
    """The finite number a grid value spells, or None (a name, a list, true/false, nan)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _spread(xs: Sequence[float]) -> float:
    """Relative range: 0 for evenly spaced steps."""
    mean = abs(sum(xs) / len(xs))
    return (max(xs) - min(xs)) / mean if mean > 0 else math.inf


@dataclass(frozen=True)
class Step:
    """How one key's grid continues past each edge."""
    geometric: bool
    low: float    # factor (geometric) or difference (arithmetic) taking the lowest value one step down
    high: float   # the same for the highest value, one step up
    integer: bool

    def beyond(self, edge: float, side: int) -> Optional[str]:
        """The value one step past `edge` on `side` as an override value, or None where none exists."""
        move = self.low if side == LOW else self.high
        value = edge * move if self.geometric else edge + move
        if self.integer:
            value = float(round(value))
        if value == edge or edge == 0 or value == 0 or (value > 0) != (edge > 0):
            return None  # would stall, leave zero or cross it
        if self.integer:
            return str(int(value))
        text = f"{value:.12g}"
        return text if re.search(r"[.eE]", text) else text + ".0"  # stays a float for Hydra


def grid_step(values: Sequence[str]) -> Optional[Step]:
    """The step of one key's grid, or None when the key cannot be extended."""
    numbers = [number(v) for v in values]
    if any(n is None for n in numbers):
        return None
    xs = sorted(set(numbers))  # type: ignore[arg-type]
    if len(xs) < 2:
        return None
    integer = all(re.fullmatch(r"[+-]?\d+", v.strip()) for v in values)
    differences = [b - a for a, b in zip(xs, xs[1:])]
    one_sign = all(x > 0 for x in xs) or all(x < 0 for x in xs)
    if one_sign and _spread([math.log(b / a) for a, b in zip(xs, xs[1:])]) <= _spread(differences):
        return Step(True, xs[0] / xs[1], xs[-1] / xs[-2], integer)
    return Step(False, -differences[0], differences[-1], integer)


def _split(override: str) -> Tuple[str, str]:
    key, value = override.split("=", 1)
    return key, value


def best_point(means: Dict[Point, float]) -> Optional[Point]:
    """The point with the lowest mean (ties: the one tried first); None when every run failed."""
    best, best_mean = None, math.inf
    for point, mean in means.items():
        if mean < best_mean:
            best, best_mean = point, mean
    return best


def next_points(means: Dict[Point, float], grid: Dict[str, List[str]], extend: int) -> List[Point]:
    """The points one variant tries next: for each key whose best value is at the lowest or highest
    value tried so far, one step past it (the other keys held at the best point), unless `extend`
    steps past the grid's own edge were already taken on that side. `means`: the mean score over
    the tuning seeds of every point tried (in the order tried); `grid`: each key's grid values."""
    best = best_point(means)
    if best is None or extend <= 0:
        return []
    tried = [tuple(number(_split(o)[1]) for o in point) for point in means]
    proposals: List[Point] = []
    for k, override in enumerate(best):
        key, value = _split(override)
        step = grid_step(grid.get(key, []))
        x = number(value)
        if step is None or x is None:
            continue
        seen = sorted({p[k] for p in tried if p[k] is not None})
        grid_numbers = [number(v) for v in grid[key]]
        for side, edge, past in ((LOW, seen[0], [v for v in seen if v < min(grid_numbers)]),
                                 (HIGH, seen[-1], [v for v in seen if v > max(grid_numbers)])):
            if x != edge or len(past) >= extend:
                continue
            new = step.beyond(x, side)
            if new is None:
                continue
            point = best[:k] + (f"{key}={new}",) + best[k + 1:]
            numbers = tuple(number(_split(o)[1]) for o in point)
            if numbers not in tried and point not in proposals:
                proposals.append(point)
    return proposals


def max_extra_points(grid: Dict[str, List[str]], extend: int) -> int:
    """An upper bound on the points one variant adds: one side per extendable key (once the best
    moves off an edge it never returns to the other), `extend` steps each."""
    return sum(extend for values in grid.values() if grid_step(values) is not None) if extend > 0 else 0
