"""Successive halving over the tuning grid (Jamieson & Talwalkar 2016; Hyperband and ASHA, Li et al. 2018,
2020): every value trains a short budget, the better part goes on, only those reach the last budget.

Each judgement is made after a short cooldown branched from a constant-rate trunk (WSD, Hagele et al.
2024): a run judged mid-schedule, at its full rate, ranks rates as its decayed self would not (Wen et
al. 2025). A rung's job trains `schedule=wsd` for `train.max_steps` = its budget + its cooldown, the
last `cooldown` steps decaying to 0, and keeps its trunk (the state after the budget's steps at the
stable rate, checkpoints/trunk.pt); a value that goes on branches from that trunk
(`train.branch_from`), so no step at the stable rate is trained twice: a value that reaches the last
rung costs that rung's budget plus one cooldown per rung it was judged at.

Everything here is a function of the configuration and of the scores so far, so a re-run of the same
sweep plans the same jobs (each then skipped as finished, or resumed from its checkpoint).
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

Point = Tuple[str, ...]  # one override per tuned key, e.g. ("optim.lr=0.003",)
# Keys whose value a rung's job sets itself: a sweep that varies or tunes them cannot be halved.
RUNG_KEYS = ("schedule", "train.max_steps", "train.save_trunk", "train.branch_from", "ladder")
MIN_RATIO = 1.5  # budgets closer than this judge nearly the same runs: the smaller is dropped


@dataclass(frozen=True)
class Rung:
    steps: int     # at the stable rate: the trunk a value that goes on continues from
    cooldown: int  # decay steps after the trunk, to 0, before the judgement

    @property
    def max_steps(self) -> int:
        return self.steps + self.cooldown

    def overrides(self, warmup_steps: int, branch_from: Optional[str]) -> List[str]:
        """The job's schedule and length (and the trunk it continues, from rung 1 on)."""
        return ["schedule=wsd", f"schedule.warmup_steps={warmup_steps}", "schedule.min_lr_ratio=0.0",
                f"schedule.decay_fraction={self.cooldown / self.max_steps!r}", f"train.max_steps={self.max_steps}",
                "train.save_trunk=true", *([f"train.branch_from={branch_from}"] if branch_from else [])]

    def trained(self, previous: Optional["Rung"]) -> int:
        """Steps a job of this rung trains: its trunk beyond the previous rung's, then its cooldown."""
        return self.steps - (previous.steps if previous else 0) + self.cooldown


def rungs(max_steps: int, warmup_steps: int, budgets: Sequence[float], cooldown: float) -> List[Rung]:
    """The budgets (fractions of train.max_steps) as rungs. A budget ends past the warmup by at least 5 % of
    the run (the stable phase a longer run shares must have begun); of two budgets closer than x1.5 the
    larger stays. Empty when the run is too short for a stable phase."""
    floor = warmup_steps + max(1, math.ceil(0.05 * max_steps))
    if floor >= max_steps:
        return []
    steps = sorted({min(max_steps, max(floor, round(f * max_steps))) for f in budgets})
    kept: List[int] = []
    for s in reversed(steps):
        if not kept or kept[-1] >= MIN_RATIO * s:
            kept.append(s)
    return [Rung(s, max(1, round(cooldown * s))) for s in reversed(kept)]


def survivors(scores: Dict[Point, float], eta: int) -> List[Point]:
    """The points that go on to the next rung: the best ceil(n / eta) of the n judged, at least 2 (a last
    rung with one value would judge nothing), finite scores only; in the order tried, ties to the first."""
    keep = max(2, math.ceil(len(scores) / eta))
    finite = [p for p in scores if math.isfinite(scores[p])]
    best = set(sorted(finite, key=lambda p: scores[p])[:keep])  # sorted() is stable: ties to the first tried
    return [p for p in scores if p in best]


def is_rung_key(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return any(key == r or key.startswith(r + ".") for r in RUNG_KEYS)


def why_not_halved(variants: Sequence[Sequence[str]], tuned_keys: Sequence[str], n_rungs: int) -> Optional[str]:
    """Why this sweep's tuning must train every value at full length, or None when it can be halved. A
    setting every variant shares (the command line's train.max_steps=...) is fine: the rungs are cut from
    it; one that tells variants apart (a schedule ablation) is not."""
    shared = set.intersection(*(set(v) for v in variants)) if variants else set()
    varied = sorted({o.split("=", 1)[0].lstrip("+~") for v in variants for o in v if is_rung_key(o) and o not in shared})
    if varied:
        return (f"the variants differ in {', '.join(varied)}, which a halving rung sets itself (its wsd schedule, "
                f"its length, the trunk it continues)")
    tuned = [k for k in tuned_keys if is_rung_key(k)]
    if tuned:
        return f"it tunes {', '.join(tuned)}, which a halving rung sets itself"
    if n_rungs == 0:
        return "the runs are too short for a stable phase after warmup to judge rates on"
    return None
