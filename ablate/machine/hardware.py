"""What the machine offers a run: the device, the precision it trains fastest in, and how long the process has lived.

`train.dtype=auto` decides from evidence, not from a list of CPU names. On a CPU, in two stages, each cached
(verified before it is trusted) so a machine measures once:
1. a matmul probe (bf16 autocast against fp32, interleaved, one thread, at the default model's feed-forward
   size), per machine and torch version: a CPU that emulates bf16 stops here, at fp32;
2. where the CPU has bf16 units, a step probe: the run's own forward, loss and backward in both dtypes
   (interleaved, on a copy of its model, at its micro-batch and thread count), per machine, torch, threads and
   architecture. Fast matmuls do not make a fast step: on an AMX Xeon the probe's matmul ran 2.6x faster in
   bf16, yet the `nano` step ran 0.87-0.92x (autocast's casts outweigh small matmuls), while a 12M-parameter
   model's step ran 1.8-2.3x.
On CUDA, bf16 wherever the device supports it. Weights and AdamW state stay fp32.
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

from ablate.data.cache import cache_dir
from ablate.rundir.files import atomic_write_bytes

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
# bf16 must make the run's own forward+backward this many times faster: the optimizer step, evaluation and
# data loading gain nothing, and a doubtful case goes to fp32 (a wrong fp32 costs speed, a wrong bf16 also precision)
STEP_MARGIN = 1.15
STEP_BUDGET_S = 1.0  # no timed round of the step probe starts after this (a slow step: one round of each)
STEP_ROUNDS = 5  # timed rounds after the warm-up, at most
STEP_FORMAT = 1


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
        return f"bf16 matmul {self.speedup:.2g}x fp32 on this CPU ({provenance(self.measured_at, self.cached)})"


def provenance(measured_at: str, cached: bool) -> str:
    """When a probe's figures were measured, and whether this process read them back from the cache."""
    return f"probe {measured_at[:16].replace('T', ' ')} UTC, {'cached' if cached else 'measured now'}"


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


def read_figures(path: Path, identity: dict, fields: tuple[str, str]) -> tuple[float, float, str] | None:
    """The two figures and the date of a cached probe record, if the file is intact JSON written for exactly
    this identity (machine, torch, probe, ...) with finite positive figures; else None."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        figures = [record[fields[0]], record[fields[1]]]
        measured_at = record["measured_at"]
        datetime.fromisoformat(measured_at)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):  # JSONDecodeError is a ValueError
        return None
    if record.get("identity") != identity:
        return None
    if not all(type(v) in (int, float) and math.isfinite(v) and v > 0 for v in figures):
        return None
    return float(figures[0]), float(figures[1]), measured_at


def cached_figures(path: Path, identity: dict, fields: tuple[str, str], what: str,
                   measure: Callable[[], tuple[float, float]]) -> tuple[float, float, str, bool]:
    """(figure, figure, measured_at, cached): from the cache when it holds a verified record, else measured
    now and cached (a read-only cache costs a probe per run, nothing else)."""
    found = read_figures(path, identity, fields)
    if found is not None:
        return (*found, True)
    if path.exists():
        print(f"ablate: {path} is not a valid {what} for this machine; measuring again", file=sys.stderr)
    first, second = measure()
    measured_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = {"identity": identity, fields[0]: first, fields[1]: second, "measured_at": measured_at}
    try:
        atomic_write_bytes(path, json.dumps(record, indent=1).encode())
    except OSError as error:
        print(f"ablate: could not cache the {what} in {path} ({error})", file=sys.stderr)
    return first, second, measured_at, False


MATMUL_FIELDS = ("fp32_gflops", "bf16_gflops")


def read_probe(path: Path, identity: dict) -> MatmulProbe | None:
    """The cached matmul probe if the file is intact JSON written for exactly this machine, torch and probe."""
    found = read_figures(path, identity, MATMUL_FIELDS)
    return None if found is None else MatmulProbe(*found, cached=True)


def cpu_matmul_probe() -> MatmulProbe:
    """This CPU's matmul probe figures: from the cache when it holds a verified record, else measured (and cached)."""
    identity = cpu_identity()
    fp32, bf16, measured_at, cached = cached_figures(probe_path(identity), identity, MATMUL_FIELDS, "matmul probe",
                                                     lambda: measure_matmuls())  # (looked up at call time)
    return MatmulProbe(fp32, bf16, measured_at, cached)


# ------------------------------------------------------------------------------------------------
# the step probe: the run's own forward and backward, in both dtypes
@dataclass(frozen=True)
class Workload:
    """A run's training step, as the step probe times it: `key` is what its speed depends on besides the
    machine (architecture, vocabulary, micro-batch, context: JSON-able), `time_step(autocast dtype or None)`
    runs one forward, loss and backward and returns its seconds."""

    key: dict
    time_step: Callable[[torch.dtype | None], float]


@dataclass(frozen=True)
class StepProbe:
    """Seconds of the run's forward+backward in fp32 and under bf16 autocast (best of the rounds)."""

    fp32_s: float
    bf16_s: float
    measured_at: str
    cached: bool = False

    @property
    def speedup(self) -> float:
        return self.fp32_s / self.bf16_s

    def describe(self) -> str:
        return (f"this model's forward+backward {self.speedup:.2g}x as fast in bf16 ({milliseconds(self.fp32_s)} "
                f"fp32, {milliseconds(self.bf16_s)} bf16; {provenance(self.measured_at, self.cached)})")


def milliseconds(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.2g} ms"


STEP_FIELDS = ("fp32_s", "bf16_s")


def measure_steps(workload: Workload) -> tuple[float, float]:
    """(fp32, bf16) seconds of the workload's step, the best of up to STEP_ROUNDS interleaved rounds after one
    warm-up round (kernel selection, allocation); no timed round starts after STEP_BUDGET_S, and at least one
    does. Runs at the process's thread count: the run's own (its speed at 2 threads is not its speed at 1)."""
    best = {None: math.inf, torch.bfloat16: math.inf}
    deadline = time.perf_counter() + STEP_BUDGET_S
    for round_ in range(1 + STEP_ROUNDS):
        for dtype in best:
            seconds = workload.time_step(dtype)
            if round_ > 0:
                best[dtype] = min(best[dtype], seconds)
        if round_ > 0 and time.perf_counter() > deadline:
            break
    return best[None], best[torch.bfloat16]


def step_identity(workload: Workload) -> dict:
    machine = {k: v for k, v in cpu_identity().items() if k not in ("format", "shape", "threads")}
    return {"format": STEP_FORMAT, **machine, "threads": torch.get_num_threads(), "workload": workload.key}


def step_probe_path(identity: dict) -> Path:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir() / "hardware" / f"step-probe-{digest}.json"


def cpu_step_probe(workload: Workload) -> StepProbe:
    """The workload's step in both dtypes on this CPU: from the cache when verified, else measured (and cached)."""
    identity = json.loads(json.dumps(step_identity(workload), default=str))  # as the cache file will read back
    fp32, bf16, measured_at, cached = cached_figures(step_probe_path(identity), identity, STEP_FIELDS, "step probe",
                                                     lambda: measure_steps(workload))
    return StepProbe(fp32, bf16, measured_at, cached)


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


def decide_cpu(probe: MatmulProbe, step: Callable[[], StepProbe] | None = None) -> Precision:
    """fp32 where the matmul probe finds no fast bf16 units; else by the run's own step (`step()`, measured only
    then) where there is one, by the matmul probe alone where there is none (a caller without a model)."""
    if probe.speedup < BF16_MARGIN:
        return Precision("fp32", f"auto: fp32 since {probe.describe()} is under the {BF16_MARGIN:g}x margin for bf16")
    if step is None:
        return Precision("bf16", f"auto: {probe.describe()}")
    timed = step()
    if timed.speedup >= STEP_MARGIN:
        return Precision("bf16", f"auto: bf16 since {timed.describe()}; {probe.describe()}")
    return Precision("fp32", f"auto: fp32 since {timed.describe()}, under the {STEP_MARGIN:g}x margin for bf16, "
                             f"although {probe.describe()}")


def decide_cuda(device_name: str, bf16_supported: bool) -> Precision:
    if bf16_supported:
        return Precision("bf16", f"auto: bf16 on CUDA ({device_name} supports bf16)")
    return Precision("fp32", f"auto: fp32 on CUDA ({device_name} has no bf16 support)")


# device type -> how `auto` decides there (given the run's workload, if any); devices not listed train in fp32
AUTO_RULES: dict[str, Callable[[torch.device, Workload | None], Precision]] = {
    "cpu": lambda device, workload: decide_cpu(
        cpu_matmul_probe(), None if workload is None else (lambda: cpu_step_probe(workload))),
    "cuda": lambda device, workload: decide_cuda(torch.cuda.get_device_name(device), torch.cuda.is_bf16_supported()),
}


def choose_precision(dtype: str, device: torch.device, workload: Workload | None = None,
                     sweep_dir: Path | None = None) -> Precision:
    """`train.dtype` made concrete: `fp32` and `bf16` as set; `auto` by the device's rule in AUTO_RULES, which on
    a CPU times `workload` (the run's own step) where the matmul probe finds bf16 units. In a sweep
    (`sweep_dir`), `auto` is decided once for all its jobs (`shared_precision`)."""
    if dtype != "auto":
        return Precision(dtype, f"train.dtype={dtype} (set explicitly)")
    rule = AUTO_RULES.get(device.type)
    if rule is None:
        return Precision("fp32", f"auto: fp32 on {device.type} (bf16 is picked on CUDA and CPUs that measure it fast)")
    if sweep_dir is not None:
        return shared_precision(sweep_dir / SWEEP_PRECISION, lambda: rule(device, workload))
    return rule(device, workload)


SWEEP_PRECISION = "precision.json"  # in a sweep's directory: the dtype every `auto` job of the sweep computes in


def shared_precision(path: Path, decide: Callable[[], Precision]) -> Precision:
    """One `auto` decision for every job of a sweep, so compared variants never differ in precision: the step
    probe times each variant's own model, and a bf16 run set against an fp32 one would measure the dtype as
    much as the design choice. The sweep's first job decides and writes `path` (created exclusively, so
    parallel jobs agree); every later job, also one resumed, reads it back, verified. A file that cannot be
    read is reported and decided afresh (not trusted, not replaced)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("name") in ("fp32", "bf16") and isinstance(record.get("reason"), str):
            return Precision(record["name"], f"auto: as every job of this sweep ({path}): {record['reason']}")
        print(f"ablate: {path} is not a precision record; this job decides for itself", file=sys.stderr)
        return decide()
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        print(f"ablate: {path} cannot be read as a precision record; this job decides for itself", file=sys.stderr)
        return decide()
    precision = decide()
    record = json.dumps({"name": precision.name, "reason": precision.reason}, indent=1).encode()
    draft = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        draft.write_bytes(record)
        os.link(draft, path)  # whole or not at all, and only if absent: the first job to finish deciding wins ...
    except FileExistsError:  # ... and a job that decided at the same time takes its decision
        return shared_precision(path, decide)
    except OSError as error:
        print(f"ablate: could not record the sweep's precision in {path} ({error})", file=sys.stderr)
    finally:
        draft.unlink(missing_ok=True)
    return precision


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
