"""What the machine offers a run: the device, the precision it trains fastest in, and how long the process has lived.

`train.dtype=auto` decides from evidence, not from a list of CPU names: on a CPU, a short matmul probe (bf16
autocast against fp32, interleaved, at the default model's feed-forward size) whose figures are cached per
machine and torch version; on CUDA, bf16 wherever the device supports it. Weights and AdamW state stay fp32.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from ablate.data import atomic_write_bytes, cache_dir

_IMPORTED_AT = time.monotonic()  # origin of process_age_s where /proc is missing

# bf16 autocast must run the probe's matmul at least this many times faster than fp32 before `auto` takes it:
# autocast adds casts, and norms, softmax and the optimizer gain nothing, so a step gains far less than its
# matmuls do (AVX-512 BF16 EPYC: probe 4.1x, llama step 1.26x at bench shape A, 2.61x at B). The machines seen
# so far sit far from it on both sides (AVX2 emulating bf16: 0.01x; AVX-512 BF16: 3.4-4.2x; AMX: 3.5-7x), so
# the margin only settles doubtful cases, and towards fp32: a wrong fp32 costs speed, a wrong bf16 also precision.
BF16_MARGIN = 2.0
# tokens x d_model -> d_ff of the default `nano` model's feed-forward (batch 16 x context 128, 128 -> 512):
# 0.27 GFLOP: about a millisecond on a core with bf16 units, 0.2-0.5 s on one that emulates bf16.
PROBE_SHAPE = (2048, 128, 512)
PROBE_BUDGET_S = 0.15  # no round starts after this
PROBE_ROUNDS = 10  # timed rounds after the warm-up, at most
PROBE_FORMAT = 1  # bump when the probe changes, so older cached figures are measured again


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ------------------------------------------------------------------------------------------------
# the CPU matmul probe and its cache
@dataclass(frozen=True)
class MatmulProbe:
    """GFLOP/s of the probe matmul in fp32 and under bf16 autocast on this CPU, and when they were measured."""

    fp32_gflops: float
    bf16_gflops: float
    measured_at: str  # ISO 8601, UTC
    cached: bool = False  # read back from the cache (else measured by this process)

    @property
    def speedup(self) -> float:
        return self.bf16_gflops / self.fp32_gflops

    def describe(self) -> str:
        when = self.measured_at[:16].replace("T", " ")
        source = "cached" if self.cached else "measured now"
        return f"bf16 matmul {self.speedup:.2g}x fp32 on this CPU (probe {when} UTC, {source})"


def cpu_identity() -> dict:
    """What the probe's figures depend on: the CPU (model and instruction-set flags), torch, and the probe itself
    (shape, one thread: see measure_matmuls), so a new CPU, torch or probe is measured afresh."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="ignore") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == (platform.processor() or platform.machine()):
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:  # x86 | arm
                    flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    return {"format": PROBE_FORMAT, "cpu": model, "flags_sha256": hashlib.sha256(flags.encode()).hexdigest(),
            "isa": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "threads": 1, "shape": list(PROBE_SHAPE)}


def measure_matmuls(shape: tuple[int, int, int] = PROBE_SHAPE) -> tuple[float, float]:
    """(fp32, bf16 autocast) GFLOP/s of one (m x k) @ (k x n) product on one thread, best call of each.

    One thread measures what a core's units do, and stays true on a shared machine: on 2 busy cores a 2-thread
    probe fell to 0.7x (its threads wait on each other whenever one is descheduled) where one thread read 4.0x,
    as unloaded. The two dtypes alternate so that load slows both alike. The warm-up calls count too, and no
    timed round starts after PROBE_BUDGET_S: a CPU that emulates bf16 stops after its first, 0.2-0.5 s call,
    which already shows bf16 to be tens of times slower than fp32 (warm-ups here take a few ms).
    """
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)

    def fp32() -> torch.Tensor:
        return x @ w

    def bf16() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as training runs it: fp32 operands, cast inside
            return x @ w

    best = {fp32: math.inf, bf16: math.inf}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        deadline = time.perf_counter() + PROBE_BUDGET_S
        for _ in range(1 + PROBE_ROUNDS):  # the first round is the warm-up: kernel selection, allocation
            for product, dtype in ((fp32, torch.float32), (bf16, torch.bfloat16)):
                started = time.perf_counter()
                if product().dtype != dtype:
                    raise RuntimeError(f"the matmul probe's {product.__name__} product came out in another dtype")
                best[product] = min(best[product], time.perf_counter() - started)
            if time.perf_counter() > deadline:
                break
    finally:
        torch.set_num_threads(threads)
    flops = 2 * m * k * n
    return flops / best[fp32] / 1e9, flops / best[bf16] / 1e9


def probe_path(identity: dict) -> Path:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "hardware" / f"matmul-probe-{digest}.json"


def read_probe(path: Path, identity: dict) -> MatmulProbe | None:
    """The cached probe if the file is intact JSON written for exactly this machine, torch and thread count."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        figures = [record["fp32_gflops"], record["bf16_gflops"]]
        measured_at = record["measured_at"]
        datetime.fromisoformat(measured_at)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):  # JSONDecodeError is a ValueError
        return None
    if record.get("identity") != identity:
        return None
    if not all(type(v) in (int, float) and math.isfinite(v) and v > 0 for v in figures):
        return None
    return MatmulProbe(float(figures[0]), float(figures[1]), measured_at, cached=True)


def cpu_matmul_probe() -> MatmulProbe:
    """This CPU's probe figures: from the cache when it holds a verified record, else measured (and cached)."""
    identity = cpu_identity()
    path = probe_path(identity)
    cached = read_probe(path, identity)
    if cached is not None:
        return cached
    if path.exists():
        print(f"ablate: {path} is not a valid matmul probe for this machine; measuring again", file=sys.stderr)
    fp32, bf16 = measure_matmuls()
    probe = MatmulProbe(fp32, bf16, datetime.now(timezone.utc).isoformat(timespec="seconds"))
    record = {"identity": identity, "fp32_gflops": fp32, "bf16_gflops": bf16, "measured_at": probe.measured_at}
    try:
        atomic_write_bytes(path, json.dumps(record, indent=1).encode())
    except OSError as error:  # a read-only cache costs a probe per run, nothing else
        print(f"ablate: could not cache the matmul probe in {path} ({error})", file=sys.stderr)
    return probe


# ------------------------------------------------------------------------------------------------
# the decision
@dataclass(frozen=True)
class Precision:
    """The dtype a run computes in (`bf16` autocast or plain `fp32`) and why, as summary.json records it."""

    name: str
    reason: str

    @property
    def autocast(self) -> torch.dtype | None:
        return torch.bfloat16 if self.name == "bf16" else None


def decide_cpu(probe: MatmulProbe) -> Precision:
    if probe.speedup >= BF16_MARGIN:
        return Precision("bf16", f"auto: {probe.describe()}")
    return Precision("fp32", f"auto: fp32 since {probe.describe()} is under the {BF16_MARGIN:g}x margin for bf16")


def decide_cuda(device_name: str, bf16_supported: bool) -> Precision:
    if bf16_supported:
        return Precision("bf16", f"auto: bf16 on CUDA ({device_name} supports bf16)")
    return Precision("fp32", f"auto: fp32 on CUDA ({device_name} has no bf16 support)")


# device type -> how `auto` decides there; devices not listed train in fp32
AUTO_RULES: dict[str, Callable[[torch.device], Precision]] = {
    "cpu": lambda device: decide_cpu(cpu_matmul_probe()),
    "cuda": lambda device: decide_cuda(torch.cuda.get_device_name(device), torch.cuda.is_bf16_supported()),
}


def choose_precision(dtype: str, device: torch.device) -> Precision:
    """`train.dtype` made concrete: `fp32` and `bf16` as set; `auto` by the device's rule in AUTO_RULES."""
    if dtype != "auto":
        return Precision(dtype, f"train.dtype={dtype} (set explicitly)")
    rule = AUTO_RULES.get(device.type)
    if rule is None:
        return Precision("fp32", f"auto: fp32 on {device.type} (bf16 is picked on CUDA and CPUs that measure it fast)")
    return rule(device)


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
