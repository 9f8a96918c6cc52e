"""What the machine offers a run: the device, whether bf16 is fast on it, and how long the process has lived."""
from __future__ import annotations

import os
import time

import torch

_IMPORTED_AT = time.monotonic()  # origin of process_age_s where /proc is missing


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has AMX bf16 tile units (Intel Sapphire Rapids and later; Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="ignore") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `train.dtype` (None = plain fp32). Weights and AdamW state stay fp32 either way.

    `auto` picks bf16 where the hardware makes it fast: CUDA, and CPUs with AMX, where bf16 matmuls
    run 3.5-7x faster than fp32 and made a GPT step 2.3x faster. Elsewhere bf16 is emulated and slower
    (on an AVX2 CPU: 1.2 against 134 GFLOP/s, `python -m ablate.bench --dtype fp32,bf16`), so `auto`
    stays in fp32 there.
    """
    fast_bf16 = device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())
    if dtype == "bf16" or (dtype == "auto" and fast_bf16):
        return torch.bfloat16
    return None


def process_age_s() -> float:
    """Seconds since this process started (Linux: from /proc, so interpreter start-up and imports count);
    elsewhere since this module was imported."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, after the command name
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED_AT
