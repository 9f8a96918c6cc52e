"""Work units of `hydra/launcher=batched` side by side in `hydra.launcher.n_jobs` worker processes.

A unit is one batched ensemble or one job that trains alone. On a CPU a small model's step does not scale
with threads (the nano step: 73.5 ms at 1 thread, 53 ms at 2, docs/benchmarks.md), so two 1-thread processes
can do more work than one 2-thread process; the processes share the cores (ablate.cli.job.threads_per_job).

Each worker is a fresh interpreter (multiprocessing's spawn: no fork of a process whose OpenMP threads are
running) that runs units one after another, as the basic launcher runs jobs, taking the next one when it is
done (largest units first). Workers sit in a process group of their own, so a stop request reaches each once,
through the launcher: SIGTERM, SIGUSR1 or Ctrl-C to the launcher is forwarded to every worker, whose members
checkpoint and are marked `interrupted` (ablate.machine.preemption), no further unit starts, and the launcher ends
the sweep with exit code 130 once every worker has reported; the same command resumes. The hydra context and
the task function travel as cloudpickle bytes (the task function lives in the script's __main__, which
plain pickle cannot name), as Hydra's joblib launcher sends them; results come back through the same pipe.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Callable, Dict, List, Optional, Sequence

from hydra.core.utils import JobReturn, JobStatus

from ablate.machine.preemption import SIGNALS


@dataclass
class Unit:
    """Positions (in the launch's job list) of the jobs one process trains; `together`: as one ensemble."""

    positions: List[int]
    together: bool


@dataclass
class Outcome:
    """What a worker reports for a unit: its jobs' returns, or the exit code that ended the unit (a stop
    request, a full disk). No returns and no exit code: the unit never started (after a stop request), or
    its process ended without a report (killed, out of memory), with the exit code `died_with`."""

    returns: List[JobReturn] = field(default_factory=list)
    exit_code: Optional[int] = None
    died_with: Optional[int] = None


def worker_count(n_jobs: Optional[int], units: int, cores: Optional[int] = None) -> int:
    """Processes to run at once: `n_jobs` (-1 or null: one per core), never more than there are units."""
    cores = cores or os.cpu_count() or 1
    wanted = cores if n_jobs is None or n_jobs < 0 else max(1, n_jobs)
    return max(1, min(wanted, units))


def schedule(units: Sequence[Unit]) -> List[Unit]:
    """Largest units first (longest-processing-time order): the last process to finish waits least."""
    return sorted(units, key=lambda unit: -len(unit.positions))


def run_unit(payload: bytes) -> Outcome:
    """In a worker: one unit's jobs; `payload` is the launcher's call that runs them and returns their JobReturns
    (batched_launcher.run_in_worker, so this module needs nothing of the launcher)."""
    import cloudpickle

    unit_jobs = cloudpickle.loads(payload)
    outcome = Outcome()
    try:
        outcome.returns = unit_jobs()
    except SystemExit as stop:  # a stop request, a full disk, a busy run directory: the launcher ends the sweep
        outcome.exit_code = stop.code if isinstance(stop.code, int) else 1
    return outcome


def serve(connection: Any) -> None:
    """A worker process: units from the launcher until it sends an empty message. One process serves many
    units, so torch and the rest are imported once per worker (a fresh process per unit cost about 5 s)."""
    os.setpgrp()  # signals from the terminal reach the launcher only, which forwards each once
    import cloudpickle

    while payload := connection.recv_bytes():
        outcome = run_unit(payload)
        sys.stdout.flush(), sys.stderr.flush()
        connection.send_bytes(cloudpickle.dumps(outcome))
        if outcome.exit_code:  # the sweep ends: take no further unit
            break
    connection.close()


class Processes:
    """Runs units in `workers` processes, each taking the next unit when it is done, forwarding stop
    requests; `run()` returns each unit's Outcome in the order given."""

    def __init__(self, workers: int, payload: Callable[[Unit], bytes]) -> None:
        self.workers = workers
        self.payload = payload
        self.context = multiprocessing.get_context("spawn")
        self.running: Dict[int, Any] = {}  # pid -> process
        self.stop: Optional[str] = None

    def forward(self, signum: int, frame: Any) -> None:
        self.stop = self.stop or signal.Signals(signum).name
        for pid in list(self.running):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:  # it has just ended
                pass

    def run(self, units: Sequence[Unit]) -> List[Outcome]:
        import cloudpickle

        outcomes: List[Optional[Outcome]] = [None] * len(units)
        waiting = list(range(len(units)))
        busy: Dict[Any, tuple] = {}  # the launcher's end of a worker's pipe -> (its unit's index, the process)
        previous = {sig: signal.signal(sig, self.forward) for sig in SIGNALS}

        def give(connection: Any, process: Any) -> None:
            """The next unit to this worker, or (none left, or a stop request) the message to end."""
            if waiting and self.stop is None:
                index = waiting.pop(0)
                connection.send_bytes(self.payload(units[index]))
                busy[connection] = (index, process)
            else:
                try:
                    connection.send_bytes(b"")
                except OSError:  # (it has ended already)
                    pass
                process.join()
                self.running.pop(process.pid, None)

        def start() -> None:
            ours, theirs = self.context.Pipe(duplex=True)
            process = self.context.Process(target=serve, args=(theirs,), name="ablate-batched-worker")
            process.start()
            self.running[process.pid] = process  # from here on, stop requests are forwarded to it
            theirs.close()
            give(ours, process)

        try:
            for _ in range(min(self.workers, len(units))):
                start()
            while busy:
                for connection in wait(list(busy)):
                    index, process = busy.pop(connection)
                    try:
                        outcomes[index] = cloudpickle.loads(connection.recv_bytes())
                    except (EOFError, OSError):  # the process ended without reporting (killed, out of memory)
                        process.join()
                        self.running.pop(process.pid, None)
                        outcomes[index] = Outcome(died_with=process.exitcode)
                        if waiting and self.stop is None:  # the other units still get their process
                            start()
                        continue
                    if outcomes[index].exit_code:
                        self.stop = self.stop or f"exit code {outcomes[index].exit_code}"
                    give(connection, process)
        finally:
            for connection in busy:  # only after an error here: a worker's report now fails instead of blocking
                connection.close()
            for process in list(self.running.values()):  # and each is stopped as a stop request would
                os.kill(process.pid, signal.SIGTERM)
                process.join()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return [outcome or Outcome() for outcome in outcomes]  # (None: never started)


def unreported(configs: Sequence[Any]) -> List[JobReturn]:
    """Returns for jobs whose process ended without a report, or never started after a stop request: no loss
    (inf), so a tuning sweeper passes over them; their run directories say how far they got."""
    returns = []
    for config in configs:
        ret = JobReturn(cfg=config, hydra_cfg=config.hydra, status=JobStatus.COMPLETED)
        ret.return_value = math.inf
        returns.append(ret)
    return returns
