"""Stop a run cleanly on request: SIGTERM, SIGUSR1 (SLURM's warning before a time limit or
preemption) or a first Ctrl-C finish the current step, then the loop checkpoints, marks the
summary `interrupted` and returns. Re-running the same command resumes (`train.resume=auto`).
A second Ctrl-C interrupts at once.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType

SIGNALS = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])


class StopRequest:
    """Context manager; `received` names the first signal that asked the run to stop, else None."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signal.Signals(signum).name
        if signum == signal.SIGINT:  # the next Ctrl-C is Python's usual KeyboardInterrupt
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
