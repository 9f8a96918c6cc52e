"""How much of the machine other processes took while a run trained, so a report can tell a
tokens/s figure that measured the option from one that measured a busy machine.

The measurement the benchmark's `CpuLoad` (ablate/bench/machine.py) reports too: the machine's busy CPU
time from /proc/stat minus this process's own (os.times), and the hypervisor's steal time, as shares
of the machine's capacity over the run. Torch-free; on systems without /proc/stat it records nothing.
"""
from __future__ import annotations

import os
import time
from pathlib import Path


def sample() -> tuple[float, float, float, float] | None:
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    own = sum(os.times()[:4])  # this process and its waited-for children
    return (user + nice + system + irq + softirq) / hz, steal / hz, own, time.monotonic()


class MachineLoad:
    """`start()` when training starts, `shares()` when it ends."""

    def __init__(self) -> None:
        self.begin: tuple[float, float, float, float] | None = None

    def start(self) -> "MachineLoad":
        self.begin = sample()
        return self

    def shares(self) -> dict[str, float | None]:
        """{others_cpu_share, steal_share}: fractions of all cores' time over the run (None if unknown)."""
        end = sample()
        if self.begin is None or end is None:
            return {"others_cpu_share": None, "steal_share": None}
        busy, steal, own, wall = (b - a for a, b in zip(self.begin, end))
        capacity = max(wall * (os.cpu_count() or 1), 1e-9)
        return {"others_cpu_share": round(max(busy - own, 0.0) / capacity, 4),
                "steal_share": round(max(steal, 0.0) / capacity, 4)}
