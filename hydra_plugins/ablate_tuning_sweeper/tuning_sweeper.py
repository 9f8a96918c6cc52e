"""Per-variant tuning without selection bias: a two-stage Hydra sweeper (`hydra/sweeper=ablate_tuned`).

Comparing variants at one shared learning rate answers "which variant suits this rate", not "which
design is better". This sweeper tunes the keys in `tune` (usually `optim.lr`) per variant, then
judges each variant at its own best value:

1. tuning stage: every variant x every value of the `tune` grid x every `tune_seeds` seed, with
   `compare.stage=tune` (the report never tests these runs);
2. extension: where a variant's best value of a numeric key lies at the grid's lowest or highest
   value, that variant tries one grid step further (x2 on 0.0015,0.003,0.006) on the same tuning
   seeds, again while the best stays at the new edge, at most `extend` steps per side (extension.py);
3. choice: per variant the value with the lowest mean final validation loss over the tuning seeds,
   among all its tuning runs (the job's return value; a failed or diverged run counts as +inf);
4. verdict stage: every variant x the verdict seeds of `params` (`train.seed: 0,1,2`), fresh runs at
   the chosen value.

The verdict's seeds never take part in the choice, so the luck that made a value look best on the
tuning seeds does not flatter the verdict (choosing and judging on the same runs would; cf.
Cawley & Talbot 2010 on selection bias). Cost: V variants x (G grid values x T tuning seeds + S
verdict seeds) runs, against V x S untuned: at most 2x when G x T <= S (e.g. 3 rates, 1 tuning seed,
3 verdict seeds), plus at most V x extend x T runs per tuned key where choices land on an edge.

Config (hydra.sweeper.*): `params` as the basic sweeper (variants and verdict seeds); `tune`
{key: comma list}; `tune_seeds` (list, disjoint from the verdict's); `seed_key` (train.seed);
`extend` (steps past the grid's edge per side, 0 = off); `max_batch_size` (jobs per launcher call,
null = all of a stage at once). Job numbers: stage 1, then each extension round, then the verdict;
sweep_dir/tuning.json records every tuning run and each variant's values tried and choice.
"""
# No `from __future__ import annotations`: Hydra executes this module before it is in sys.modules,
# and dataclasses then cannot resolve string annotations.
import itertools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from hydra_plugins.ablate_tuning_sweeper.extension import Point, best_point, max_extra_points, next_points

log = logging.getLogger(__name__)
TARGET = "hydra_plugins.ablate_tuning_sweeper.tuning_sweeper.TuningSweeper"


@dataclass
class TuningSweeperConf:
    _target_: str = TARGET
    params: Optional[Dict[str, str]] = None
    tune: Any = None  # {key: "v1,v2,..."}; untyped so that a dict given on the command line replaces it
    tune_seeds: List[int] = field(default_factory=lambda: [1000])
    seed_key: str = "train.seed"
    extend: int = 2  # grid steps tried past an edge the best value lands on, per key and side (0: off)
    max_batch_size: Optional[int] = None


ConfigStore.instance().store(group="hydra/sweeper", name="ablate_tuned", node=TuningSweeperConf,
                             provider="ablate")


@dataclass
class TuningPlan:
    """The jobs of both stages, as override lists (the verdict's tuned values still to be filled)."""
    variants: List[List[str]]          # overrides of each variant, seed and tuned keys left out
    seeds: List[str]                   # the verdict's seeds
    grid: List[List[str]]              # each tuned combination, e.g. [["optim.lr=0.003"], ...]
    tune_seeds: List[str]
    seed_key: str
    tuned_keys: List[str]
    axes: Dict[str, List[str]] = field(default_factory=dict)  # each tuned key's grid values

    def tuning_jobs(self) -> List[List[str]]:
        return [job for v in self.variants for g in self.grid for job in self.point_jobs(v, g)]

    def point_jobs(self, variant: List[str], point: Any) -> List[List[str]]:
        """The tuning runs of one variant at one point of the (possibly extended) grid."""
        marks = self.marks("tune")
        return [[*variant, *point, f"{self.seed_key}={s}", *marks] for s in self.tune_seeds]

    def verdict_jobs(self, chosen: List[Optional[List[str]]]) -> List[List[str]]:
        marks = self.marks("verdict")
        return [[*v, *(c or []), f"{self.seed_key}={s}", *marks]
                for v, c in zip(self.variants, chosen) for s in self.seeds]

    def marks(self, stage: str) -> List[str]:
        # recorded in every run's config, so the report knows which runs to test and what was tuned
        return [f"compare.stage={stage}", f"compare.tuned=[{','.join(self.tuned_keys)}]"]

    @property
    def n_jobs(self) -> int:
        """Jobs of both stages without extension."""
        return len(self.variants) * (len(self.grid) * len(self.tune_seeds) + len(self.seeds))

    def max_extension_jobs(self, extend: int) -> int:
        """At most this many tuning runs are added where choices land on the grid's edge."""
        return len(self.variants) * max_extra_points(self.axes, extend) * len(self.tune_seeds)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def grid_axes(tune: Dict[str, Any], parser: Any = None) -> Dict[str, List[str]]:
    """Each tuned key's grid values as written, e.g. {"optim.lr": ["0.0015", "0.003", "0.006"]}."""
    parser = parser or OverridesParser.create()
    axes = {}
    for key, values in tune.items():
        override = parser.parse_override(f"{key}={values}")
        axes[str(key)] = list(override.sweep_string_iterator()) if override.is_sweep_override() else [str(values)]
    return axes


def plan(params: List[str], tune: Dict[str, str], tune_seeds: List[Any], seed_key: str = "train.seed",
         parser: Any = None) -> TuningPlan:
    """Expand `params` (basic-sweeper syntax, command-line overrides included) and the `tune` grid."""
    parser = parser or OverridesParser.create()
    if not tune:
        raise HydraException("hydra.sweeper.tune is empty: name the keys to tune per variant and their "
                             "values, e.g. hydra.sweeper.tune={optim.lr: '0.0015,0.003,0.006'}")
    jobs = BasicSweeper.split_arguments(parser.parse_overrides(params), None)[0]
    tuned = list(tune)
    clash = sorted({_key(o) for job in jobs for o in job} & set(tuned))
    if clash:
        raise HydraException(f"{', '.join(clash)} is both swept and tuned: a tuned key is chosen per "
                             f"variant, so leave it out of hydra.sweeper.params and the command line")
    seeds: List[str] = []
    variants: List[List[str]] = []
    for job in jobs:
        seed = [o.split("=", 1)[1] for o in job if _key(o) == seed_key]
        rest = [o for o in job if _key(o) != seed_key]
        seeds += [s for s in seed if s not in seeds]
        if rest not in variants:
            variants.append(rest)
    seeds = seeds or ["0"]
    tune_seeds = [str(s) for s in tune_seeds]
    if set(tune_seeds) & set(seeds) or not tune_seeds:
        raise HydraException(f"hydra.sweeper.tune_seeds={tune_seeds} must be non-empty and share no seed "
                             f"with the verdict's {seed_key}={','.join(seeds)}: choosing a value on the "
                             f"seeds that then judge it would flatter the chosen value")
    axes = grid_axes(tune, parser)
    grid = [list(combo) for combo in itertools.product(*([f"{k}={v}" for v in vs] for k, vs in axes.items()))]
    return TuningPlan(variants, seeds, grid, tune_seeds, seed_key, tuned, axes)


class Tried:
    """Every tuning run so far, per variant and point, in the order tried (stage 1's grid first)."""

    def __init__(self, plan_: TuningPlan) -> None:
        self.plan = plan_
        self.scores: List[Dict[Point, List[float]]] = [{} for _ in plan_.variants]
        self.runs: List[List[Any]] = []  # [*overrides, score] per tuning run, in job order

    def add(self, variant: int, point: Point, scores: List[float], jobs: List[List[str]]) -> None:
        self.scores[variant].setdefault(point, []).extend(scores)
        self.runs += [[*job, score] for job, score in zip(jobs, scores)]

    def add_stage(self, points: List[List[Point]], scores: List[float]) -> None:
        """One launch: `points[v]` the points of variant v, its runs' scores in job order."""
        i = 0
        for variant, variant_points in enumerate(points):
            for point in variant_points:
                jobs = self.plan.point_jobs(self.plan.variants[variant], point)
                self.add(variant, point, scores[i:i + len(jobs)], jobs)
                i += len(jobs)

    def means(self, variant: int) -> Dict[Point, float]:
        return {p: sum(s) / len(s) for p, s in self.scores[variant].items()}

    def chosen(self) -> List[Optional[List[str]]]:
        """Per variant the point with the lowest mean score over the tuning seeds (None if every run
        of the variant failed); ties go to the point tried first."""
        best = [best_point(self.means(v)) for v in range(len(self.plan.variants))]
        return [list(b) if b is not None else None for b in best]

    def extensions(self, extend: int) -> List[List[Point]]:
        return [next_points(self.means(v), self.plan.axes, extend) for v in range(len(self.plan.variants))]


def choose(plan_: TuningPlan, scores: List[float]) -> List[Optional[List[str]]]:
    """The choice among stage 1's runs alone (scores in the order of plan_.tuning_jobs())."""
    tried = Tried(plan_)
    tried.add_stage([[tuple(g) for g in plan_.grid]] * len(plan_.variants), scores)
    return tried.chosen()


def _score(job_return: Any) -> float:
    try:
        value = float(job_return.return_value)
    except Exception:  # the job raised (its own summary.json says why)
        return math.inf
    return value if math.isfinite(value) else math.inf


class TuningSweeper(BasicSweeper):
    def __init__(self, params: Optional[Dict[str, str]], tune: Optional[Dict[str, str]], tune_seeds: List[int],
                 seed_key: str, max_batch_size: Optional[int], extend: int = 2) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.tune = {str(k): str(v) for k, v in (tune or {}).items()}
        self.tune_seeds = list(tune_seeds)
        self.seed_key = seed_key
        if not isinstance(extend, int) or isinstance(extend, bool) or extend < 0:
            raise HydraException(f"hydra.sweeper.extend={extend!r} must be a whole number >= 0: the grid "
                                 f"steps tried past an edge a variant's best value lands on (0 turns it off)")
        self.extend = extend

    def _launch(self, jobs: List[List[str]], first: int) -> List[Any]:
        size = self.max_batch_size or max(len(jobs), 1)
        results = []
        for start in range(0, len(jobs), size):
            batch = jobs[start:start + size]
            self.validate_batch_is_legal(batch)
            results += list(self.launcher.launch(batch, initial_job_idx=first + start))
        return results

    def _extend_for(self, sweep_dir: Path) -> int:
        """`extend`, except for a sweep directory begun before grids were extended (its tuning.json has no
        "extend"): there the verdict runs sit right after stage 1's job numbers, where extension runs would
        now go, so its resume keeps the grid as it was (and is refused nothing)."""
        record = sweep_dir / "tuning.json"
        try:
            begun_without = record.exists() and "extend" not in json.loads(record.read_text())
        except (OSError, ValueError):
            begun_without = False
        if begun_without and self.extend:
            log.info(f"ablate_tuned: {record} was written before grids were extended past their edge: this "
                     f"sweep resumes with hydra.sweeper.extend=0, as it began")
            return 0
        return self.extend

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        the_plan = plan(self._parse_config() + list(arguments), self.tune, self.tune_seeds, self.seed_key,
                        parser)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self.extend = self._extend_for(sweep_dir)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        tuning = the_plan.tuning_jobs()
        log.info(f"ablate_tuned: stage 1, {len(tuning)} tuning runs ({len(the_plan.variants)} variants x "
                 f"{len(the_plan.grid)} values x {len(the_plan.tune_seeds)} tuning seeds)")
        tuning_returns = self._launch(tuning, 0)
        tried = Tried(the_plan)
        tried.add_stage([[tuple(g) for g in the_plan.grid]] * len(the_plan.variants),
                        [_score(r) for r in tuning_returns])
        returns, next_job = [tuning_returns], len(tuning)
        while True:  # terminates: each key and side extends at most `extend` steps per variant
            points = tried.extensions(self.extend)
            jobs = [job for v, ps in zip(the_plan.variants, points) for p in ps for job in the_plan.point_jobs(v, p)]
            if not jobs:
                break
            for variant, ps in zip(the_plan.variants, points):
                for p in ps:
                    log.info(f"ablate_tuned: {' '.join(self._own(the_plan, variant)) or 'the variant'} chose at "
                             f"the grid's edge: extending to {' '.join(p)}")
            extension_returns = self._launch(jobs, next_job)
            tried.add_stage(points, [_score(r) for r in extension_returns])
            returns.append(extension_returns)
            next_job += len(jobs)
        chosen = tried.chosen()
        for variant, point in zip(the_plan.variants, chosen):
            log.info(f"ablate_tuned: {' '.join(self._own(the_plan, variant)) or 'the variant'} -> "
                     f"{' '.join(point) if point else 'every tuning run failed: the default value'}")
        (sweep_dir / "tuning.json").write_text(json.dumps({
            "tuned": the_plan.tuned_keys, "tune_seeds": the_plan.tune_seeds, "verdict_seeds": the_plan.seeds,
            "grid": the_plan.axes, "extend": self.extend, "n_extension_runs": next_job - len(tuning),
            "choices": [{"variant": v, "chosen": c, "tried": [list(p) for p in tried.scores[i]],
                         "extended": [list(p) for p in tried.scores[i] if list(p) not in the_plan.grid]}
                        for i, (v, c) in enumerate(zip(the_plan.variants, chosen))],
            "scores": tried.runs,
        }, indent=1) + "\n")
        verdict = the_plan.verdict_jobs(chosen)
        log.info(f"ablate_tuned: stage 2, {len(verdict)} verdict runs at the chosen values")
        return [*returns, self._launch(verdict, next_job)]

    @staticmethod
    def _own(plan_: TuningPlan, variant: List[str]) -> List[str]:
        """The overrides that tell this variant from the others (for the log)."""
        shared = set.intersection(*(set(v) for v in plan_.variants)) if plan_.variants else set()
        return [o for o in variant if o not in shared]
