"""Per-variant tuning without selection bias: a two-stage Hydra sweeper (`hydra/sweeper=ablate_tuned`).

Comparing variants at one shared learning rate answers "which variant suits this rate", not "which
design is better". This sweeper tunes the keys in `tune` (usually `optim.lr`) per variant, then
judges each variant at its own best value:

1. tuning stage: every variant x every value of the `tune` grid x every `tune_seeds` seed, with
   `compare.stage=tune` (the report never tests these runs);
2. extension: where a variant's best value of a numeric key lies at the grid's lowest or highest
   value, that variant tries one grid step further (x2 on 0.0015,0.003,0.006) on the same tuning
   seeds, again while the best stays at the new edge, at most `extend` steps per side (extension.py);
   With `halving` (the default), stages 1 and 2 are successive halving (halving.py): every value
   trains a fraction of the run (`halving.budgets`) and is judged after a short cooldown branched from
   its constant-rate trunk; the best third (at least 2) goes on from that trunk to the next budget;
   the extension happens at the first budget. `hydra.sweeper.halving=null`: every value at full length.
3. choice: per variant the value with the lowest mean final validation loss over the tuning seeds,
   among all its tuning runs (with halving: among those judged at the last budget; the job's return
   value; a failed or diverged run counts as +inf);
4. verdict stage: every variant x the verdict seeds of `params` (`train.seed: 0,1,2`), fresh runs at
   the chosen value. With `compare.looks` (e.g. [3, 6, 10], `train.seed: range(0,10)`) the seeds come in
   looks (class Looks): after each look the judge (`judge`, analysis/interim.py: the report's own decision
   on the runs so far, each look at its share of alpha, analysis/sequential.py) says which comparisons are
   still open and worth more seeds, and only their variants train the next look; `compare.budget`
   ({runs: N} or {minutes: M}) caps it; sweep_dir/looks.json records every look.

The verdict's seeds never take part in the choice, so the luck that made a value look best on the
tuning seeds does not flatter the verdict (choosing and judging on the same runs would; cf.
Cawley & Talbot 2010 on selection bias). Cost: V variants x (G grid values x T tuning seeds + S
verdict seeds) runs, against V x S untuned: at most 2x when G x T <= S (e.g. 3 rates, 1 tuning seed,
3 verdict seeds), plus at most V x extend x T runs per tuned key where choices land on an edge.

Config (hydra.sweeper.*): `params` as the basic sweeper (variants and verdict seeds); `tune`
{key: comma list}; `tune_seeds` (list, disjoint from the verdict's); `seed_key` (train.seed);
`extend` (steps past the grid's edge per side, 0 = off); `halving` ({budgets: fractions of
train.max_steps, eta: 1 / the share that goes on, cooldown: decay steps per budget step}, null = off);
`tune_only` (stop after the choice, for measuring tuning); `max_batch_size` (jobs per launcher call,
null = all of a stage at once). Job numbers: stage 1, then each extension round, then the verdict;
sweep_dir/tuning.json records every tuning run and each variant's values tried and choice.
"""
# No `from __future__ import annotations`: Hydra executes this module before it is in sys.modules,
# and dataclasses then cannot resolve string annotations.
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from ablate.config.values import same_value
from hydra_plugins.ablate_tuning_sweeper.extension import Point, best_point, max_extra_points, next_points
from hydra_plugins.ablate_tuning_sweeper.halving import Rung, is_rung_key, rungs, survivors, why_not_halved

log = logging.getLogger(__name__)
TARGET = "hydra_plugins.ablate_tuning_sweeper.tuning_sweeper.TuningSweeper"


@dataclass
class HalvingConf:
    budgets: List[float] = field(default_factory=lambda: [0.2, 0.4])  # fractions of train.max_steps
    eta: int = 3             # a budget keeps the best 1/eta (at least 2) of the values it judged
    cooldown: float = 0.2    # decay steps per step of the budget, before each judgement


@dataclass
class TuningSweeperConf:
    _target_: str = TARGET
    params: Optional[Dict[str, str]] = None
    tune: Any = None  # {key: "v1,v2,..."}; untyped so that a dict given on the command line replaces it
    tune_seeds: List[int] = field(default_factory=lambda: [1000])
    seed_key: str = "train.seed"
    extend: int = 2  # grid steps tried past an edge the best value lands on, per key and side (0: off)
    halving: Optional[HalvingConf] = field(default_factory=HalvingConf)  # null: every value at full length
    tune_only: bool = False  # stop once tuning.json holds the choice: no verdict runs
    max_batch_size: Optional[int] = None
    judge: str = "analysis.interim.judge"  # the interim analysis after each look of compare.looks


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

    def verdict_jobs(self, chosen: List[Optional[List[str]]], seeds: Optional[List[str]] = None,
                     variants: Optional[List[int]] = None, look: Optional[int] = None) -> List[List[str]]:
        """The verdict runs at the chosen values: every variant x seed, or (a look of a sequential plan) the
        variants numbered in `variants` x `seeds`, marked with their look."""
        marks = self.marks("verdict") + ([f"compare.look={look}"] if look is not None else [])
        which = range(len(self.variants)) if variants is None else variants
        return [[*self.variants[i], *(chosen[i] or []), f"{self.seed_key}={s}", *marks]
                for i in which for s in (self.seeds if seeds is None else seeds)]

    def marks(self, stage: str) -> List[str]:
        # recorded in every run's config, so the report knows which runs to test and what was tuned
        return [f"compare.stage={stage}", f"compare.tuned=[{','.join(self.tuned_keys)}]"]

    @property
    def n_jobs(self) -> int:
        """Jobs of both stages without extension."""
        return len(self.variants) * (len(self.grid) * len(self.tune_seeds) + len(self.seeds))

    def halving_outline(self, the_rungs: List[Rung], eta: int) -> List[int]:
        """Tuning runs per budget of successive halving before any extension: every grid value at the
        first, then as many as `survivors` keeps of those (every variant and tuning seed counted)."""
        counts, n = [], len(self.grid)
        for _ in the_rungs:
            counts.append(n * len(self.variants) * len(self.tune_seeds))
            n = min(n, max(2, math.ceil(n / eta)))
        return counts

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

    def add_stage(self, points: List[List[Point]], scores: List[float],
                  launched: Optional[List[List[str]]] = None) -> None:
        """One launch: `points[v]` the points of variant v, its runs' scores in job order (and the jobs as
        launched, when they carry more than the point's overrides)."""
        i = 0
        for variant, variant_points in enumerate(points):
            for point in variant_points:
                jobs = self.plan.point_jobs(self.plan.variants[variant], point)
                self.add(variant, point, scores[i:i + len(jobs)], launched[i:i + len(jobs)] if launched else jobs)
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
                 seed_key: str, max_batch_size: Optional[int], extend: int = 2, halving: Any = None,
                 tune_only: bool = False, judge: str = "analysis.interim.judge") -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.tune = {str(k): str(v) for k, v in (tune or {}).items()}
        self.tune_seeds = list(tune_seeds)
        self.seed_key = seed_key
        if not isinstance(extend, int) or isinstance(extend, bool) or extend < 0:
            raise HydraException(f"hydra.sweeper.extend={extend!r} must be a whole number >= 0: the grid "
                                 f"steps tried past an edge a variant's best value lands on (0 turns it off)")
        self.extend = extend
        self.halving = checked_halving(halving)
        self.tune_only = bool(tune_only)
        self.judge = judge

    def _launch(self, jobs: List[List[str]], first: int) -> List[Any]:
        size = self.max_batch_size or max(len(jobs), 1)
        results = []
        for start in range(0, len(jobs), size):
            batch = jobs[start:start + size]
            self.validate_batch_is_legal(batch)
            results += list(self.launcher.launch(batch, initial_job_idx=first + start))
        return results

    def _begun_without(self, sweep_dir: Path, key: str) -> bool:
        """Whether this sweep directory's tuning.json was written before `key` existed (a resume keeps the
        tuning as it began: its later jobs sit at the job numbers the old plan gave them)."""
        record = sweep_dir / "tuning.json"
        try:
            return record.exists() and key not in json.loads(record.read_text())
        except (OSError, ValueError):
            return False

    def _extend_for(self, sweep_dir: Path) -> int:
        """`extend`, except for a sweep directory begun before grids were extended (its tuning.json has no
        "extend"): there the verdict runs sit right after stage 1's job numbers, where extension runs would
        now go, so its resume keeps the grid as it was (and is refused nothing)."""
        if self._begun_without(sweep_dir, "extend") and self.extend:
            log.info(f"ablate_tuned: {sweep_dir / 'tuning.json'} was written before grids were extended past their "
                     f"edge: this sweep resumes with hydra.sweeper.extend=0, as it began")
            return 0
        return self.extend

    def _halving_for(self, sweep_dir: Path, the_plan: TuningPlan) -> Tuple[List[Rung], Optional[str]]:
        """The rungs this sweep's tuning halves over (empty: full length) and why not, if it is not."""
        if self.halving is None:
            return [], "hydra.sweeper.halving=null"
        if self._begun_without(sweep_dir, "halving"):
            return [], f"{sweep_dir / 'tuning.json'} was written before tuning was halved: it resumes at full length"
        max_steps = int(OmegaConf.select(self.config, "train.max_steps"))
        warmup = warmup_steps(self.config)
        ladder = OmegaConf.select(self.config, "ladder.name", default=None)
        the_rungs = rungs(max_steps, warmup, self.halving["budgets"], self.halving["cooldown"])
        if ladder:
            return [], f"+ladder={ladder} sets each rung's length and rate"
        reason = why_not_halved(the_plan.variants, the_plan.tuned_keys, len(the_rungs))
        return ([], reason) if reason else (the_rungs, None)

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        the_plan = plan(self._parse_config() + list(arguments), self.tune, self.tune_seeds, self.seed_key,
                        parser)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        looks = checked_looks(self.config, the_plan.seeds, self.seed_key)  # refused before any run
        budget = checked_budget(self.config)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self.extend = self._extend_for(sweep_dir)
        the_rungs, not_halved = self._halving_for(sweep_dir, the_plan)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        if the_rungs:
            tuning = Halving(self, the_plan, the_rungs, sweep_dir)
        else:
            if self.halving is not None:
                log.info(f"ablate_tuned: every tuning run trains at full length: {not_halved}")
            tuning = FullLength(self, the_plan)
        tuning.run()
        chosen = tuning.tried.chosen()
        for variant, point in zip(the_plan.variants, chosen):
            log.info(f"ablate_tuned: {' '.join(self._own(the_plan, variant)) or 'the variant'} -> "
                     f"{' '.join(point) if point else 'every tuning run failed: the default value'}")
        tried = tuning.tried
        (sweep_dir / "tuning.json").write_text(json.dumps({
            "tuned": the_plan.tuned_keys, "tune_seeds": the_plan.tune_seeds, "verdict_seeds": the_plan.seeds,
            "grid": the_plan.axes, "extend": self.extend, "n_extension_runs": tuning.n_extension_runs,
            "halving": tuning.describe(not_halved), "tune_only": self.tune_only,
            "tuning_steps": tuning.steps, "full_length_steps": tuning.full_length_steps,
            "choices": [{"variant": v, "chosen": c, "tried": [list(p) for p in tried.scores[i]],
                         "extended": [list(p) for p in tried.scores[i] if list(p) not in the_plan.grid],
                         **tuning.variant_record(i)}
                        for i, (v, c) in enumerate(zip(the_plan.variants, chosen))],
            "scores": tried.runs,
        }, indent=1) + "\n")
        if self.tune_only:
            log.info(f"ablate_tuned: hydra.sweeper.tune_only=true: the choice is in {sweep_dir / 'tuning.json'}; "
                     f"no verdict runs")
            return tuning.returns
        if looks:
            return [*tuning.returns, *Looks(self, the_plan, chosen, looks, budget, sweep_dir, tuning.next_job).run()]
        verdict = the_plan.verdict_jobs(chosen)
        log.info(f"ablate_tuned: stage 2, {len(verdict)} verdict runs at the chosen values")
        return [*tuning.returns, self._launch(verdict, tuning.next_job)]

    @staticmethod
    def _own(plan_: TuningPlan, variant: List[str]) -> List[str]:
        """The overrides that tell this variant from the others (for the log)."""
        shared = set.intersection(*(set(v) for v in plan_.variants)) if plan_.variants else set()
        return [o for o in variant if o not in shared]


def checked_halving(halving: Any) -> Optional[Dict[str, Any]]:
    """`hydra.sweeper.halving` as plain values, or None (off); HydraException naming a bad setting."""
    if halving is None:
        return None
    values = OmegaConf.to_container(halving) if OmegaConf.is_config(halving) else dict(halving)
    budgets, eta, cooldown = values.get("budgets"), values.get("eta"), values.get("cooldown")
    problems = []
    if not isinstance(budgets, list) or not budgets or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b <= 1 for b in budgets):
        problems.append(f"halving.budgets={budgets!r} must be a non-empty list of fractions of train.max_steps in "
                        f"(0, 1], e.g. [0.2, 0.4]")
    if not isinstance(eta, int) or isinstance(eta, bool) or eta < 2:
        problems.append(f"halving.eta={eta!r} must be a whole number >= 2: each budget keeps the best 1/eta of the "
                        f"values it judged (at least 2)")
    if not isinstance(cooldown, (int, float)) or isinstance(cooldown, bool) or not 0 < cooldown <= 1:
        problems.append(f"halving.cooldown={cooldown!r} must lie in (0, 1]: the decay steps before each judgement, "
                        f"per step of its budget")
    if problems:
        raise HydraException("hydra.sweeper: " + "; ".join(problems) + ". Or hydra.sweeper.halving=null to train "
                             "every value at full length.")
    return {"budgets": [float(b) for b in budgets], "eta": eta, "cooldown": float(cooldown)}


def warmup_steps(config: Any) -> int:
    """The sweep's schedule.warmup_steps: every rung's job keeps it, so its trunk is a prefix of a longer run."""
    return int(OmegaConf.select(config, "schedule.warmup_steps", default=0) or 0)


def _run_dir(job_return: Any, sweep_dir: Path, job_num: int) -> str:
    """Where a job trained: Hydra's record of its output directory, else the sweep's default subdir."""
    for key in ("runtime.output_dir", "hydra.runtime.output_dir"):
        found = OmegaConf.select(job_return.hydra_cfg, key, default=None) if job_return.hydra_cfg is not None else None
        if found:
            return str(found)
    return str(sweep_dir / str(job_num))


class FullLength:
    """Stage 1 and its extension as before halving: every value of the grid at full length."""

    def __init__(self, sweeper: TuningSweeper, the_plan: TuningPlan) -> None:
        self.sweeper, self.plan = sweeper, the_plan
        self.tried = Tried(the_plan)
        self.returns: List[Any] = []
        self.next_job = 0
        self.n_extension_runs = 0
        self.steps = 0

    def launch(self, tried: "Tried", points: List[List[Point]], extra: Any = None) -> List[Tuple[int, Point, str]]:
        """Launch the tuning runs of `points[v]` for each variant v (with `extra(v, point, seed)` overrides)
        and record their scores in `tried`; returns each run's (variant, point, seed), in job order."""
        keys = [(v, p, s) for v, ps in enumerate(points) for p in ps for s in self.plan.tune_seeds]
        jobs = [[*(o for o in job if not is_rung_key(o)), *extra(v, p, s)] if extra else job
                for v, ps in enumerate(points) for p in ps
                for s, job in zip(self.plan.tune_seeds, self.plan.point_jobs(self.plan.variants[v], p))]
        rets = self.sweeper._launch(jobs, self.next_job)
        self.returns.append(rets)
        self.next_job += len(jobs)
        tried.add_stage(points, [_score(r) for r in rets], jobs)
        return keys

    def run(self) -> None:
        grid = [[tuple(g) for g in self.plan.grid]] * len(self.plan.variants)
        log.info(f"ablate_tuned: stage 1, {sum(map(len, grid)) * len(self.plan.tune_seeds)} tuning runs "
                 f"({len(self.plan.variants)} variants x {len(self.plan.grid)} values x "
                 f"{len(self.plan.tune_seeds)} tuning seeds)")
        self.launch(self.tried, grid)
        first = self.next_job
        self.extend(self.tried, lambda points: self.launch(self.tried, points))
        self.n_extension_runs = self.next_job - first
        self.steps = self.full_length_steps

    def extend(self, tried: "Tried", launch: Any, where: str = "") -> None:
        while True:  # terminates: each key and side extends at most `extend` steps per variant
            points = tried.extensions(self.sweeper.extend)
            if not any(points):
                return
            for variant, ps in zip(self.plan.variants, points):
                for p in ps:
                    log.info(f"ablate_tuned: {' '.join(self.sweeper._own(self.plan, variant)) or 'the variant'} "
                             f"chose at the grid's edge{where}: extending to {' '.join(p)}")
            launch(points)

    def first_tried(self) -> "Tried":
        return self.tried

    @property
    def full_length_steps(self) -> int:
        """What training every value tried (at the first budget) would cost at full length."""
        max_steps = int(OmegaConf.select(self.sweeper.config, "train.max_steps"))
        return max_steps * sum(len(scores) for v in self.first_tried().scores for scores in v.values())

    def describe(self, not_halved: Optional[str]) -> Dict[str, Any]:
        return {"rungs": [], "off": not_halved}

    def variant_record(self, variant: int) -> Dict[str, Any]:
        return {}


class Halving(FullLength):
    """Stage 1 as successive halving (halving.py): the grid at the first budget, extended there, then the
    best of each budget continued from their trunks to the next."""

    def __init__(self, sweeper: TuningSweeper, the_plan: TuningPlan, the_rungs: List[Rung], sweep_dir: Path) -> None:
        super().__init__(sweeper, the_plan)
        self.rungs, self.sweep_dir = the_rungs, sweep_dir
        self.warmup = warmup_steps(sweeper.config)
        self.rung_tried = [Tried(the_plan) for _ in the_rungs]  # per rung: its scores per variant and point
        self.dirs: List[Dict[Tuple[int, Point, str], str]] = [{} for _ in the_rungs]
        self.kept: List[List[List[Point]]] = []  # per rung after the first: each variant's points that went on

    def first_tried(self) -> "Tried":
        return self.rung_tried[0]

    def launch_rung(self, k: int, points: List[List[Point]]) -> None:
        rung, previous = self.rungs[k], self.rungs[k - 1] if k else None

        def extra(v: int, p: Point, s: str) -> List[str]:
            return rung.overrides(self.warmup, self.dirs[k - 1][(v, p, s)] if k else None)

        first = self.next_job
        keys = self.launch(self.rung_tried[k], points, extra)
        for i, (key, ret) in enumerate(zip(keys, self.returns[-1])):
            self.dirs[k][key] = _run_dir(ret, self.sweep_dir, first + i)
        self.steps += rung.trained(previous) * len(keys)

    def run(self) -> None:
        plan_, rung0 = self.plan, self.rungs[0]
        grid = [[tuple(g) for g in plan_.grid]] * len(plan_.variants)
        log.info(f"ablate_tuned: halving, budget 1 of {len(self.rungs)}: {sum(map(len, grid)) * len(plan_.tune_seeds)} "
                 f"tuning runs of {rung0.steps} steps + {rung0.cooldown} cooldown ({len(plan_.variants)} variants x "
                 f"{len(plan_.grid)} values x {len(plan_.tune_seeds)} tuning seeds)")
        self.launch_rung(0, grid)
        first = self.next_job
        self.extend(self.rung_tried[0], lambda points: self.launch_rung(0, points), " at the first budget")
        self.n_extension_runs = self.next_job - first
        for k in range(1, len(self.rungs)):
            going_on = [survivors(self.rung_tried[k - 1].means(v), self.sweeper.halving["eta"])
                        for v in range(len(plan_.variants))]
            self.kept.append(going_on)
            log.info(f"ablate_tuned: halving, budget {k + 1} of {len(self.rungs)}: {sum(map(len, going_on))} values "
                     f"go on from their trunks to {self.rungs[k].steps} steps + {self.rungs[k].cooldown} cooldown")
            self.launch_rung(k, going_on)
        self.tried = self.rung_tried[-1]  # the choice: among the values judged at the last budget
        self.tried.runs = [run for tried in self.rung_tried for run in tried.runs]

    def describe(self, not_halved: Optional[str]) -> Dict[str, Any]:
        return {**self.sweeper.halving, "rungs": [{"steps": r.steps, "cooldown": r.cooldown} for r in self.rungs],
                "off": None}

    def variant_record(self, variant: int) -> Dict[str, Any]:
        """Each budget's mean score per value this variant had judged there, and which went on."""
        out = []
        for k, tried in enumerate(self.rung_tried):
            went_on = self.kept[k][variant] if k < len(self.kept) else []
            out.append({"steps": self.rungs[k].steps, "cooldown": self.rungs[k].cooldown,
                        "scores": {" ".join(p): m for p, m in tried.means(variant).items()},
                        "went_on": [" ".join(p) for p in went_on]})
        return {"rungs": out}


def checked_looks(config: Any, seeds: List[str], seed_key: str) -> List[int]:
    """`compare.looks` as a list of seed counts (empty: every verdict seed at once); HydraException naming
    the problem before any run."""
    looks = OmegaConf.select(config, "compare.looks", default=None)
    if looks is None:
        return []
    looks = list(looks)
    fine = bool(looks) and all(isinstance(n, int) and not isinstance(n, bool) for n in looks)
    if not fine or looks[0] < 2 or any(b <= a for a, b in zip(looks, looks[1:])):
        raise HydraException(f"compare.looks={looks!r} must be whole numbers of verdict seeds growing from look to look, "
                             f"the first at least 2 (a t-test needs 2 seeds), e.g. [3, 6, 10]; or null for every seed at "
                             f"once")
    if looks[-1] != len(seeds):
        raise HydraException(f"compare.looks={looks} plans {looks[-1]} verdict seeds at its last look, but {seed_key} "
                             f"gives {len(seeds)} ({','.join(seeds)}): list {looks[-1]}, e.g. "
                             f"{seed_key}=range(0,{looks[-1]}), or change the looks")
    if OmegaConf.select(config, "ladder.name", default=None):
        raise HydraException("compare.looks with +ladder=...: a ladder's verdict is read per rung and over the fit, "
                             "which the looks do not plan for yet; set compare.looks=null")
    return looks if len(looks) > 1 else []


def checked_budget(config: Any) -> Dict[str, float]:
    """`compare.budget` as {runs: N} or {minutes: M} (empty: no cap); HydraException before any run."""
    budget = OmegaConf.select(config, "compare.budget", default=None)
    budget = dict(OmegaConf.to_container(budget) if OmegaConf.is_config(budget) else budget or {})
    if not budget:
        return {}
    (key, value), *rest = budget.items()
    if rest or key not in ("runs", "minutes") or isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not value > 0:
        raise HydraException(f"compare.budget={budget!r} must name one cap: {{runs: N}} (every job of the sweep "
                             f"counted) or {{minutes: M}} (wall clock: this invocation's, plus the time resumed looks took "
                             f"before), with a number > 0")
    return {key: float(value)}


def _in(variant: List[str], comparison: Dict[str, Any]) -> bool:
    """Whether a variant's runs enter a comparison: its value of the comparison's axis is the option or
    the baseline (as the report spells them; numbers also by value)."""
    axis = str(comparison["axis"]).lstrip("+~")
    return any(_key(o) == axis and (same_value(o.split("=", 1)[1], comparison["option"]) or
                                    same_value(o.split("=", 1)[1], comparison["baseline"])) for o in variant)


class Looks:
    """The verdict stage in looks (`compare.looks`, analysis/sequential.py): look 1 trains every variant on
    the first seeds; after each look the judge (`hydra.sweeper.judge`, the report's own decision on the
    runs so far) says which comparisons are still open and worth more seeds, and only their variants
    train the next look's seeds. Deterministic given the runs, so a re-run plans the same jobs."""

    def __init__(self, sweeper: TuningSweeper, the_plan: TuningPlan, chosen: List[Optional[List[str]]],
                 looks: List[int], budget: Dict[str, float], sweep_dir: Path, next_job: int) -> None:
        self.sweeper, self.plan, self.chosen, self.looks = sweeper, the_plan, chosen, looks
        self.budget, self.sweep_dir, self.next_job = budget, sweep_dir, next_job
        self.rounds: List[Dict[str, Any]] = []
        self.recorded, self.resumed_s = self.recorded_times(), 0.0

    def recorded_times(self) -> Dict[int, float]:
        """Each look's wall time as an earlier invocation of this sweep recorded it in looks.json."""
        try:
            rounds = json.loads((self.sweep_dir / "looks.json").read_text())["rounds"]
            return {int(r["look"]): float(r["wall_s"]) for r in rounds}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def run(self) -> List[Any]:
        from hydra.utils import get_method

        judge = get_method(self.sweeper.judge)
        started, returns, active, done = time.monotonic(), [], list(range(len(self.plan.variants))), 0
        for k, n in enumerate(self.looks, 1):
            seeds = self.plan.seeds[done:n]
            jobs = self.plan.verdict_jobs(self.chosen, seeds, active, look=k)
            log.info(f"ablate_tuned: verdict look {k} of {len(self.looks)}: {len(jobs)} runs ({len(active)} variants "
                     f"x seeds {','.join(seeds)})")
            began = time.monotonic()
            returns.append(self.sweeper._launch(jobs, self.next_job))
            self.next_job += len(jobs)
            took = time.monotonic() - began
            if took < self.recorded.get(k, 0.0):  # resumed: its runs were skipped, they took their time before
                self.resumed_s += self.recorded[k] - took
                took = self.recorded[k]
            self.rounds.append({"look": k, "seeds": seeds, "variants": active, "runs": len(jobs), "wall_s": took})
            done = n
            if k == len(self.looks):
                break
            verdict = judge(str(self.sweep_dir), k)
            for c in verdict["comparisons"]:
                log.info(f"ablate_tuned: after look {k}: {c['axis']}={c['option']} vs {c['baseline']}: {c['state']}"
                         + (f" (conditional power {c['conditional_power']:.2f})"
                            if c["state"] in ("open", "futile") and c["conditional_power"] == c["conditional_power"]
                            else ""))
            spent = time.monotonic() - started + self.resumed_s
            per_run = sum(r["wall_s"] for r in self.rounds) / max(sum(r["runs"] for r in self.rounds), 1)
            active = self.affordable([c for c in verdict["comparisons"] if c["state"] == "open"],
                                     len(self.plan.seeds[done:self.looks[k]]), spent, per_run)
            self.rounds[-1]["states"] = {c["axis"] + "=" + c["option"]: c["state"] for c in verdict["comparisons"]}
            self.write()
            if not active:
                log.info(f"ablate_tuned: no comparison left open after look {k} "
                         f"({', '.join(sorted(set(self.rounds[-1]['states'].values())))}): "
                         f"the verdict stops at {n} seeds")
                break
        self.write()
        return returns

    def affordable(self, still_open: List[Dict[str, Any]], n_seeds: int, elapsed_s: float,
                   per_run: float) -> List[int]:
        """The variants the next look trains: those of the open comparisons, most promising (highest
        conditional power) first while the budget lasts (`per_run`: seconds one more run is expected to take)."""
        ranked = sorted(still_open, key=lambda c: -(c["conditional_power"] if c["conditional_power"] ==
                                                   c["conditional_power"] else 1.0))
        chosen: List[int] = []
        for c in ranked:
            more = [i for i, v in enumerate(self.plan.variants) if _in(v, c) and i not in chosen]
            runs = (len(chosen) + len(more)) * n_seeds
            if "runs" in self.budget and self.next_job + runs > self.budget["runs"]:
                continue
            if "minutes" in self.budget and elapsed_s + runs * per_run > 60 * self.budget["minutes"]:
                continue
            chosen += more
        if len(chosen) < len({i for c in ranked for i, v in enumerate(self.plan.variants) if _in(v, c)}):
            log.info(f"ablate_tuned: compare.budget={self.budget}: the next look trains only what it affords")
        return sorted(chosen)

    def write(self) -> None:
        (self.sweep_dir / "looks.json").write_text(json.dumps({
            "looks": self.looks, "seeds": self.plan.seeds, "budget": self.budget, "rounds": self.rounds}, indent=1) + "\n")
