"""Training a group of runs as one batched ensemble: `train_group(jobs)`, each job as `ablate.training.loop.train` gets it.

Every member is set up exactly as a run of its own (`ablate.training.loop.setup`: its seed, its construction, so
its initialization is that of the job run alone; its run directory's plan, its tokenizer.json, metrics
file, logger and summary). Then the members step together (ablate.ensemble.step) and each member's
bookkeeping is the single run's own (`Session.step_done`, `log_step`): its metrics rows, its checkpoints,
its divergence check. A member that diverges is recorded `diverged` and leaves the ensemble; the others
go on. A stop request (SIGTERM, SIGUSR1, Ctrl-C) checkpoints every member and marks it `interrupted`;
re-running the sweep resumes each from its checkpoint (`train.resume=auto`), and members at different
steps catch up (the ensemble steps the members furthest behind first). Finally each member writes its
sample and summary.json as `ablate.training.loop.finish` does, so a member's run directory holds exactly the files
of a separate run and `ablate.load_run` or a plain run continues it.
"""
from __future__ import annotations

import math
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from ablate.ensemble.step import Ensemble
from ablate.machine.preemption import StopRequest
from ablate.rundir.lock import hold
from ablate.rundir.plan import RunDirPlan
from ablate.training.loop import Session, finish, recording_failure, setup


@dataclass
class GroupJob:
    """What `ablate.training.loop.train` would receive for one job of the group."""

    cfg: DictConfig
    run_dir: Path
    plan: RunDirPlan | None = None
    choices: dict[str, str] | None = None
    overrides: list[str] | None = None
    group: str | None = None
    job_started: float | None = None
    job: Any = None  # the Hydra job (ablate.cli.job.Job), when a batched launcher deferred it


def train_group(jobs: list[GroupJob], progress: bool = True) -> list[dict[str, Any] | Exception]:
    """Train `jobs` (one architecture; they may differ in train.seed and optimizer, schedule and objective
    settings) as one batched ensemble; returns each job's summary, or the error that stopped it, in order."""
    with ExitStack() as locks:
        for job in jobs:  # one process per run directory (ablate.rundir.lock), every member's held to the end
            locks.enter_context(hold(job.run_dir))
        outcomes: list[dict[str, Any] | Exception | None] = [None] * len(jobs)
        sessions: dict[int, Session] = {}
        for index, job in enumerate(jobs):
            started = job.job_started if job.job_started is not None else time.monotonic()
            try:
                session = setup(job.cfg, Path(job.run_dir), job.plan, job.choices or {}, job.overrides or [],
                                job.group, False, started)
            except Exception as error:  # noqa: BLE001  (a member that cannot start, e.g. a refused resume)
                outcomes[index] = error
                continue
            if isinstance(session, dict):  # the directory already holds this finished run
                outcomes[index] = session
                continue
            own_rng = torch.get_rng_state()  # after its seed and construction: what a run of its own records
            session.run.torch_rng = lambda state=own_rng: state
            session.summary.ensemble_members = len(jobs)
            sessions[index] = session
        failure: Exception | None = None
        if sessions:
            try:
                train_sessions(list(sessions.values()), progress)
            except Exception as error:  # noqa: BLE001  (every member's summary.json says `failed` and why)
                failure = error
        for index, session in sessions.items():
            outcomes[index] = failure or session.summary.to_dict()
    return outcomes  # type: ignore[return-value]


def train_sessions(sessions: list[Session], progress: bool) -> None:
    """Train the set-up sessions together; every session's summary.json is written however this ends."""
    with StopRequest() as stop:
        try:
            with recording_failure(sessions):
                loop(sessions, stop, progress)
        finally:
            ended = time.perf_counter()  # every member trained until now (their samples follow one by one)
            for session in sessions:
                session.train_ended = session.train_ended or ended
                if session.bar is not None:
                    session.bar.close()
                finish(session)


def loop(sessions: list[Session], stop: StopRequest, progress: bool) -> None:
    """Step the members until each has reached train.max_steps or diverged, or a stop request came."""
    ensemble = Ensemble([s.run for s in sessions])
    fresh = [i for i, s in enumerate(sessions) if s.run.step == 0]
    step_zero = dict(zip(fresh, ensemble.evaluate(fresh))) if fresh else {}
    for index, session in enumerate(sessions):
        session.start(step_zero.get(index))
    active = [i for i, s in enumerate(sessions) if s.run.step < s.cfg.train.max_steps]
    max_steps = max(s.cfg.train.max_steps for s in sessions)
    with tqdm(total=max_steps, initial=min((sessions[i].run.step for i in active), default=max_steps),
              disable=not progress, mininterval=1.0, dynamic_ncols=True,
              desc=f"train x{len(sessions)}") as bar:
        while active:
            behind = min(sessions[i].run.step for i in active)
            stepping = [i for i in active if sessions[i].run.step == behind]  # the others wait until these catch up
            ends = {i: sessions[i].step_done(*result) for i, result in zip(stepping, ensemble.train_step(stepping))}
            evaluating = [i for i in stepping if ends[i].evaluate]
            val_losses = dict(zip(evaluating, ensemble.evaluate(evaluating))) if evaluating else {}
            for i in stepping:
                sessions[i].log_step(ends[i], val_losses.get(i))
                if ends[i].diverged:
                    sessions[i].train_ended = time.perf_counter()
                    print(f"ablate: {sessions[i].run_dir} diverged at step {sessions[i].run.step} "
                          f"({sessions[i].summary.error}); its weights are frozen there, the other members go on")
            active = [i for i in active if not (i in ends and ends[i].diverged)
                      and sessions[i].run.step < sessions[i].cfg.train.max_steps]
            reached = min((sessions[i].run.step for i in active), default=max_steps)  # every member is here
            if reached > bar.n:
                bar.update(reached - bar.n)
                losses = [ends[i].terms["ce"] for i in stepping if math.isfinite(ends[i].terms["ce"])]
                bar.set_postfix(loss=f"{min(losses):.3f}-{max(losses):.3f}" if losses else "n/a",
                                members=len(active), refresh=False)
            if stop.received is not None and active:
                for i in active:
                    sessions[i].interrupt(stop.received)
                return
    for session in sessions:
        if session.summary.status == "running":
            session.complete()

