"""The machine under the benchmark: CPU model, versions, load from other processes, matmul peak."""
from __future__ import annotations

import math
import os
import platform
import time
from typing import Any

import torch

from ablate.machine.load import sample
from ablate.rundir.summary import cpu_name, version_of


# ------------------------------------------------------------------------------------------------
# machine
def machine_info(device: torch.device) -> dict[str, Any]:
    return {
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "transformers": version_of("transformers"), "tokenizers": version_of("tokenizers"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


class CpuLoad:
    """How much of the machine's CPU time went to other processes while the bench ran (ablate/machine/load.py:
    /proc/stat and this process's own CPU time): a busy machine shows up here instead of silently in the numbers."""

    def __init__(self):
        self.start = sample()

    def result(self) -> dict[str, float] | None:
        end = sample()
        if self.start is None or end is None:
            return None
        busy, steal, own, wall = (b - a for a, b in zip(self.start, end))
        capacity = max(wall * (os.cpu_count() or 1), 1e-9)
        return {"wall_s": wall, "cpus": os.cpu_count(), "own_cpu_share": own / capacity,
                "others_cpu_share": max(busy - own, 0.0) / capacity, "steal_share": steal / capacity}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float = 1.0) -> float:
    """GFLOP/s of the fastest square matmul of `dtype`: the size grows until one product takes a
    twentieth of the budget (at most 4096 on CPU, 8192 on GPU), then it is repeated for `seconds`."""
    limit, n = (8192 if device.type == "cuda" else 4096), 256
    gen = torch.Generator(device="cpu").manual_seed(0)

    def operands(size: int):
        return [torch.randn(size, size, generator=gen).to(device=device, dtype=dtype) for _ in range(2)]

    def timed(a, b) -> float:
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        return time.perf_counter() - start

    a, b = operands(n)
    timed(a, b)
    while n < limit and timed(a, b) < seconds / 20:
        n *= 2
        a, b = operands(n)
        timed(a, b)  # first call at a size: allocation and kernel selection
    best, deadline = math.inf, time.perf_counter() + seconds
    for _ in range(3):  # at least three
        best = min(best, timed(a, b))
    while time.perf_counter() < deadline:
        best = min(best, timed(a, b))
    return 2 * n ** 3 / best / 1e9


