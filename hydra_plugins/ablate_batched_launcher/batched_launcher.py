"""`hydra/launcher=batched`: the jobs of a sweep that differ only in their seed and tuned values train
together in one process, as one batched ensemble (ablate.ensemble).

Per launch (the whole sweep, or one stage of `hydra/sweeper=ablate_tuned`), the jobs are grouped by their
composed config with `train.seed` and the `compare.tuned` keys left out. Each group's jobs run through the
task function as usual, one by one (validation, the run directory's plan and lock, .hydra/), except that a
job accepted for training is handed back instead of trained (the launcher passes the task function an
ablate.cli.job.Deferral, which ablate/run.py hands to ablate.cli.job.run_job); the group's accepted
jobs then train together (ablate.ensemble.train_group.train_group) and each job's return value is its own final
validation loss, as with the basic launcher. A group that cannot be batched (its option has no stacked form,
dropout, torch.compile, a tuned key that changes the architecture) runs one job after another, with one
printed line saying why; so does a group of one.

Members may differ only where each keeps an object of its own: `train.seed` (data order and
initialization), `optim.*`, `schedule.*` and `z_loss.*`. `hydra.launcher.max_members` caps a group's size
(memory: the ensemble's activations grow with it; 1: every job a plain run). `hydra.launcher.n_jobs` runs
that many units (ensembles, jobs alone) side by side in worker processes that share the cores (processes.py;
null: on a CPU the cores divided by train.threads, one per core when that is unset; on a GPU one process;
never more than there are units).
"""
# No `from __future__ import annotations`: Hydra executes this module before it is in sys.modules,
# and dataclasses then cannot resolve string annotations.
import functools
import json
import logging
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.ablate_batched_launcher.processes import Processes, Unit, schedule, unreported, worker_count

log = logging.getLogger(__name__)

SEED_KEY = "train.seed"
# where members may differ: each member has its own generator, optimizer, schedule and objective
PER_MEMBER = ("train.seed", "optim", "schedule", "z_loss")


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.ablate_batched_launcher.batched_launcher.BatchedLauncher"
    max_members: Optional[int] = None  # jobs per ensemble at most; null = a whole group
    # ensembles (and jobs that train alone) trained at once in worker processes sharing the cores
    # (processes.py); null = on a CPU cores / train.threads (one per core when unset), on a GPU 1; 1 = one after
    # another in the launcher's process
    n_jobs: Optional[int] = None


ConfigStore.instance().store(group="hydra/launcher", name="batched", node=BatchedLauncherConf, provider="ablate")


def leaves(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """Dotted key -> value of every leaf of a plain config tree."""
    if isinstance(tree, dict):
        found: Dict[str, Any] = {}
        for key, value in tree.items():
            found.update(leaves(value, f"{prefix}{key}."))
        return found
    return {prefix[:-1]: tree}


def task_tree(config: DictConfig) -> Dict[str, Any]:
    """A job's composed config without Hydra's own node, as plain data (interpolations left as written)."""
    tree = OmegaConf.to_container(config, resolve=False)
    tree.pop("hydra", None)
    return tree


def varying_keys(tree: Dict[str, Any]) -> List[str]:
    """The keys a group's jobs may differ in: the seed and the job's `compare.tuned` keys."""
    return [SEED_KEY, *(str(k) for k in (tree.get("compare") or {}).get("tuned") or [])]


def group_key(tree: Dict[str, Any]) -> str:
    varying = varying_keys(tree)
    fixed = {k: v for k, v in leaves(tree).items()
             if not any(k == key or k.startswith(key + ".") for key in varying)}
    return json.dumps(fixed, sort_keys=True, default=str)


def group_jobs(trees: Sequence[Dict[str, Any]]) -> List[List[int]]:
    """Positions of the jobs, grouped by everything but their seed and tuned keys, in order of first job."""
    groups: Dict[str, List[int]] = {}
    for position, tree in enumerate(trees):
        groups.setdefault(group_key(tree), []).append(position)
    return list(groups.values())


def unbatchable_difference(trees: Sequence[Dict[str, Any]]) -> Optional[str]:
    """Why these jobs cannot share one ensemble because of what differs between them (None if they can)."""
    flat = [leaves(t) for t in trees]
    keys = sorted(set().union(*flat))
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]
    shared = [k for k in differing if not any(k == p or k.startswith(p + ".") for p in PER_MEMBER)]
    if shared:
        return (f"they differ in {', '.join(shared[:4])} (a compare.tuned key), and an ensemble's members share "
                f"everything but {', '.join(PER_MEMBER)}")
    return None


def why_not_batched(trees: Sequence[Dict[str, Any]]) -> Optional[str]:
    """One line saying why a group trains one job after another, or None when it trains as one ensemble."""
    difference = unbatchable_difference(trees)
    if difference:
        return difference
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "data-parallel processes (torchrun) train one run at a time"
    from ablate.config.schema import structured
    from ablate.ensemble.stacked import why_not_batchable

    try:
        cfg = structured(trees[0])
    except Exception:  # noqa: BLE001  (a config the job itself will refuse, with its own message)
        return "the config does not compose here; each job reports its own refusal"
    try:
        return why_not_batchable(cfg)
    except Exception as error:  # noqa: BLE001  (a model that cannot be built is refused by its job)
        return f"the model could not be built for the check ({type(error).__name__}: {error})"


def automatic_processes(config: DictConfig) -> int:
    """n_jobs null: on a CPU, the cores divided by the threads each job asks for (train.threads; unset: one
    each); on a GPU one process, whose ensemble fills the device."""
    import os

    from ablate.machine.hardware import resolve_device

    try:
        on_cpu = resolve_device(str(config.train.device)).type == "cpu"
    except Exception:  # noqa: BLE001  (a device this machine lacks: each job refuses it with its own message)
        on_cpu = False
    if not on_cpu:
        return 1
    return max(1, (os.cpu_count() or 1) // int(config.train.threads or 1))


class BatchedLauncher(Launcher):
    def __init__(self, max_members: Optional[int] = None, n_jobs: Optional[int] = None) -> None:
        super().__init__()
        self.max_members = max_members
        self.n_jobs = n_jobs
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for idx, overrides in enumerate(job_overrides):
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = initial_job_idx + idx
            configs.append(sweep_config)
        units = self.units([task_tree(c) for c in configs], initial_job_idx)
        workers = worker_count(self.n_jobs if self.n_jobs is not None else automatic_processes(configs[0]), len(units))
        for config in configs:  # what each job's threads are computed from (ablate.cli.job.threads_per_job)
            with open_dict(config):
                config.hydra.launcher.n_jobs = workers if workers > 1 else None
        log.info(f"Launching {len(job_overrides)} jobs locally, as {sum(u.together for u in units)} batched "
                 f"ensemble(s) and {sum(not u.together for u in units)} job(s) alone, "
                 f"{workers} process(es) at a time")
        if workers == 1:
            returns: List[Optional[JobReturn]] = [None] * len(configs)
            for unit in units:
                for p, ret in zip(unit.positions, self.run_unit(unit, configs)):
                    returns[p] = ret
            return returns  # type: ignore[return-value]
        return self.run_in_processes(units, configs, workers)

    def units(self, trees: List[Dict[str, Any]], initial_job_idx: int) -> List[Unit]:
        """The launch's jobs as ensembles (groups of at most max_members) and jobs that train alone, printing
        one line for each group that cannot be batched."""
        units: List[Unit] = []
        for group in group_jobs(trees):
            reason = why_not_batched([trees[p] for p in group]) if len(group) > 1 else None
            if len(group) == 1 or reason:
                if reason:
                    numbers = ", ".join(f"#{initial_job_idx + p}" for p in group)
                    print(f"ablate: jobs {numbers} run one after another, not as a batched ensemble: {reason}")
                units.extend(Unit([p], together=False) for p in group)
                continue
            size = self.max_members or len(group)
            parts = [group[start:start + size] for start in range(0, len(group), size)]
            units.extend(Unit(part, together=len(part) > 1) for part in parts)  # (a part of one: a plain run)
        return units

    def run_unit(self, unit: Unit, configs: List[DictConfig]) -> List[JobReturn]:
        chosen = [configs[p] for p in unit.positions]
        return self.run_together(chosen) if unit.together else [self.run_one(c) for c in chosen]

    def run_in_processes(self, units: List[Unit], configs: List[DictConfig], workers: int) -> List[JobReturn]:
        """The units in `workers` worker processes (processes.py); a stop request or a full disk in any of
        them ends the sweep once all have reported, with that unit's exit code."""
        import cloudpickle

        # what every unit needs, serialized once for the whole launch
        shared = cloudpickle.dumps((self.hydra_context, self.task_function, self.config, Singleton.get_state()))

        def payload(unit: Unit) -> bytes:  # what the worker calls (processes.run_unit): the unit's jobs
            return cloudpickle.dumps(functools.partial(run_in_worker, shared, [configs[p] for p in unit.positions],
                                                       unit.together))

        order = schedule(units)
        processes = Processes(workers, payload)
        outcomes = processes.run(order)
        returns: List[Optional[JobReturn]] = [None] * len(configs)
        for unit, outcome in zip(order, outcomes):
            chosen = [configs[p] for p in unit.positions]
            if outcome.died_with is not None:
                print(f"ablate: the process training jobs {', '.join('#' + str(c.hydra.job.num) for c in chosen)} "
                      f"ended with code {outcome.died_with} without reporting; re-run the command to resume them",
                      file=sys.stderr)
            for p, ret in zip(unit.positions, outcome.returns if outcome.returns else unreported(chosen)):
                returns[p] = ret
        stops = [o.exit_code for o in outcomes if o.exit_code]
        if stops:  # each such process has printed why (ablate.cli.job); the sweep ends as under the basic launcher
            sys.exit(stops[0])
        if processes.stop:  # every running unit has checkpointed; the rest never started
            from ablate.cli import job as ablate_job

            ablate_job.stop_sweep(processes.stop)
        return returns  # type: ignore[return-value]

    def run_one(self, config: DictConfig, deferral: Any = None) -> JobReturn:
        """The job through the task function; with a `deferral` (ablate.cli.job.Deferral), which the task function
        passes on to ablate.cli.job.run_job, a job accepted for training is handed to it instead of trained."""
        log.info(f"\t#{config.hydra.job.num} : {' '.join(filter_overrides(config.hydra.overrides.task))}")
        task = self.task_function if deferral is None else functools.partial(self.task_function, deferral=deferral)
        ret = run_job(hydra_context=self.hydra_context, task_function=task, config=config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def run_together(self, configs: List[DictConfig]) -> List[JobReturn]:
        """Each job through the task function, which hands back the ones accepted for training; those then
        train as one ensemble and get their own results as return values."""
        from ablate.cli import job as ablate_job
        from ablate.ensemble.train_group import train_group

        with ExitStack() as locks:
            deferral = ablate_job.Deferral(locks)
            returns = [self.run_one(config, deferral) for config in configs]
            deferred = [ret for config, ret in zip(configs, returns) if deferral.holds(config.hydra.job.num)]
            if not deferred:
                return returns
            print(f"ablate: training jobs {', '.join('#' + str(j.job.hydra_cfg.job.num) for j in deferral.jobs)} "
                  f"together as one batched ensemble (hydra/launcher=batched)")
            outcomes = train_group(deferral.jobs)
            for ret, job, outcome in zip(deferred, deferral.jobs, outcomes, strict=True):
                ret.return_value = ablate_job.conclude(job.cfg, job.job, outcome, stop_if_interrupted=False)
            stopped = [o for o in outcomes if isinstance(o, dict) and o.get("status") == "interrupted"]
        if stopped:  # a stop request checkpointed every member: it ends the sweep, as for a job of its own
            ablate_job.stop_sweep(stopped[0]["error"])
        return returns


def run_in_worker(shared: bytes, configs: List[DictConfig], together: bool) -> List[JobReturn]:
    """In a worker process (processes.py): one unit's jobs through a launcher set up as the one that sent them
    (as the basic launcher runs jobs one after another in one process, a worker runs its units one after
    another). `shared`: the launch's hydra context, task function, config and Hydra's Singleton state."""
    import cloudpickle

    hydra_context, task_function, config, singleton_state = cloudpickle.loads(shared)
    Singleton.set_state(singleton_state)
    launcher = BatchedLauncher()
    launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)
    return launcher.run_together(configs) if together else [launcher.run_one(c) for c in configs]
