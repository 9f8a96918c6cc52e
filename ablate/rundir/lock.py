"""One process per run directory: an exclusive lock on RUN_DIR/.lock, held for the whole run.

A second process that would train into the same directory (two sweeps given one hydra.sweep.dir, a
job launched twice) gets RunDirBusy at once, before it has written anything there. The lock is an
OS file lock (filelock: flock on POSIX), so it disappears with the process that holds it, also when
that process is killed: a stale `.lock` file never blocks anyone. Within one process the lock is
re-entrant (the job holds it, and `train` holds it again around itself). Under torchrun only rank 0
takes it: all ranks share rank 0's directory.
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

LOCK_NAME = ".lock"
_held: dict[Path, list] = {}  # resolved run dir -> [FileLock, depth]


class RunDirBusy(RuntimeError):
    """Another process holds the run directory; str() is the user-facing message."""


@contextmanager
def hold(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold RUN_DIR's lock for the block; raise RunDirBusy if another process holds it."""
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if int(os.environ.get("RANK", "0")) != 0 or key in _held:
        if key in _held:
            _held[key][1] += 1
        try:
            yield
        finally:
            if key in _held:
                _held[key][1] -= 1
        return
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    found = {p.name for p in run_dir.iterdir()}  # what was there before: a refused run leaves exactly that
    lock = FileLock(str(run_dir / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunDirBusy(f"{run_dir} is in use by another ablate process (it holds {run_dir / LOCK_NAME}). Nothing "
                         f"was written. Wait for that run to end, or train into another hydra.run.dir / "
                         f"hydra.sweep.dir.") from None
    _held[key] = [lock, 1]
    try:
        yield
    finally:
        del _held[key]
        added = {p.name for p in run_dir.iterdir()} - found if run_dir.is_dir() else set()
        if added == {LOCK_NAME}:  # this process wrote nothing but the lock: leave no trace
            (run_dir / LOCK_NAME).unlink(missing_ok=True)
            lock.release()
            if created:
                try:
                    run_dir.rmdir()
                except OSError:  # someone wrote there after all: keep it
                    pass
        else:
            lock.release()


def locked_run_dir(train: Callable) -> Callable:
    """Decorator: `train(cfg, run_dir, ...)` runs holding run_dir's lock."""

    @functools.wraps(train)
    def locked(cfg, run_dir, *args, **kwargs):
        with hold(run_dir):
            return train(cfg, run_dir, *args, **kwargs)

    return locked
