"""`train.dtype=auto` decides from measurement: the decision on several machines' probe figures (the matmul
probe, then the run's own step), the probes' caches (verified before they are trusted, measured again when they
are not), and CUDA's own rule."""
from __future__ import annotations

import json
import math
import pickle

import pytest
import torch

from ablate.machine import hardware


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    """Each test starts with an empty cache (the session's shared one would hold earlier tests' figures)."""
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def probe_log(monkeypatch):
    """Stands in for the matmul probe: returns the figures set in `figures` and counts its calls."""
    log = {"figures": (100.0, 400.0), "calls": 0}

    def fake_measure():
        log["calls"] += 1
        return log["figures"]

    monkeypatch.setattr(hardware, "measure_matmuls", fake_measure)
    return log


def no_probe():
    raise AssertionError("the matmul probe ran where no probe was needed")


# (fp32 GFLOP/s, bf16-autocast GFLOP/s) of the probe matmul, as such machines measure it
MACHINES = {
    "AVX2, bf16 emulated": ((134.0, 1.2), "fp32"),  # the AVX2 CPU of the first sessions: 0.009x
    "AVX-512 BF16": ((115.0, 475.0), "bf16"),  # AMD EPYC of this session, one thread: 4.1x
    "AMX": ((150.0, 1050.0), "bf16"),  # Sapphire Rapids class: 7x
    "bf16 units, but slow casts": ((200.0, 300.0), "fp32"),  # 1.5x: below the margin
    "exactly at the margin": ((100.0, 100.0 * hardware.BF16_MARGIN), "bf16"),
}


@pytest.mark.parametrize("machine", MACHINES)
def test_auto_on_a_cpu_takes_bf16_only_where_the_probe_measures_it_faster_by_the_margin(probe_log, machine):
    figures, expected = MACHINES[machine]
    probe_log["figures"] = figures
    first = hardware.choose_precision("auto", torch.device("cpu"))
    ratio = figures[1] / figures[0]
    assert first.name == expected and probe_log["calls"] == 1
    assert first.autocast is (torch.bfloat16 if expected == "bf16" else None)
    assert f"bf16 matmul {ratio:.2g}x fp32 on this CPU" in first.reason and "measured now" in first.reason
    assert first.reason.startswith("auto: ") and ("under the" in first.reason) == (expected == "fp32")
    again = hardware.choose_precision("auto", torch.device("cpu"))  # a second run on this machine: from the cache
    assert probe_log["calls"] == 1 and again.name == expected and "UTC, cached)" in again.reason


@pytest.mark.parametrize(("supported", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_the_device_bf16_support_without_a_probe(monkeypatch, supported, expected):
    monkeypatch.setattr(hardware, "measure_matmuls", no_probe)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Test GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    precision = hardware.choose_precision("auto", torch.device("cuda"))
    assert precision.name == expected and "NVIDIA Test GPU" in precision.reason


@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_an_explicit_dtype_is_kept_everywhere_without_a_probe(monkeypatch, device, dtype):
    monkeypatch.setattr(hardware, "measure_matmuls", no_probe)
    precision = hardware.choose_precision(dtype, torch.device(device))
    assert precision == hardware.Precision(dtype, f"train.dtype={dtype} (set explicitly)")


def test_auto_on_a_device_without_a_rule_is_fp32(monkeypatch):
    monkeypatch.setattr(hardware, "measure_matmuls", no_probe)
    assert hardware.choose_precision("auto", torch.device("mps")).name == "fp32"


def cache_file() -> tuple[dict, object]:
    identity = hardware.cpu_identity()
    return identity, hardware.probe_path(identity)


def test_the_probe_cache_is_json_keyed_by_machine_torch_and_probe(probe_log, monkeypatch):
    hardware.cpu_matmul_probe()
    identity, path = cache_file()
    record = json.loads(path.read_text())
    assert record["identity"] == identity and set(identity) >= {"cpu", "flags_sha256", "torch", "threads", "shape"}
    assert (record["fp32_gflops"], record["bf16_gflops"]) == probe_log["figures"]
    monkeypatch.setattr(torch, "__version__", "99.0")  # a torch upgrade: another key, measured again
    assert hardware.probe_path(hardware.cpu_identity()) != path
    hardware.cpu_matmul_probe()
    assert probe_log["calls"] == 2


GOOD = {"fp32_gflops": 100.0, "bf16_gflops": 400.0, "measured_at": "2026-01-01T00:00:00+00:00"}
CORRUPT = {
    "not JSON": lambda identity: b"\x00\xffgarbage",
    "a pickle": lambda identity: pickle.dumps({"identity": identity, **GOOD}),
    "truncated": lambda identity: json.dumps({"identity": identity, **GOOD}).encode()[:-7],
    "a list": lambda identity: json.dumps([identity, GOOD]).encode(),
    "another machine": lambda identity: json.dumps({"identity": {**identity, "flags_sha256": "0" * 64},
                                                    **GOOD}).encode(),
    "NaN": lambda identity: json.dumps({"identity": identity, **GOOD, "bf16_gflops": math.nan}).encode(),
    "infinite": lambda identity: json.dumps({"identity": identity, **GOOD, "fp32_gflops": math.inf}).encode(),
    "negative": lambda identity: json.dumps({"identity": identity, **GOOD, "fp32_gflops": -1.0}).encode(),
    "a string figure": lambda identity: json.dumps({"identity": identity, **GOOD, "fp32_gflops": "100"}).encode(),
    "a boolean figure": lambda identity: json.dumps({"identity": identity, **GOOD, "bf16_gflops": True}).encode(),
    "no date": lambda identity: json.dumps({"identity": identity, **GOOD, "measured_at": "yesterday"}).encode(),
    "a missing figure": lambda identity: json.dumps({"identity": identity, "fp32_gflops": 100.0,
                                                     "measured_at": GOOD["measured_at"]}).encode(),
}


@pytest.mark.parametrize("damage", CORRUPT)
def test_a_corrupt_or_foreign_cache_file_is_measured_again_and_replaced(probe_log, capsys, damage):
    identity, path = cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(CORRUPT[damage](identity))
    probe_log["figures"] = (120.0, 30.0)  # differs from the file's figures: the decision must come from these
    precision = hardware.choose_precision("auto", torch.device("cpu"))
    assert probe_log["calls"] == 1 and precision.name == "fp32" and "measured now" in precision.reason
    assert "not a valid matmul probe" in capsys.readouterr().err
    assert hardware.read_probe(path, identity).bf16_gflops == 30.0  # replaced by a verified record


def test_an_intact_cache_file_is_trusted(probe_log):
    identity, path = cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"identity": identity, **GOOD}))
    precision = hardware.choose_precision("auto", torch.device("cpu"))
    assert probe_log["calls"] == 0 and precision.name == "bf16"
    assert precision.reason == "auto: bf16 matmul 4x fp32 on this CPU (probe 2026-01-01 00:00 UTC, cached)"


def test_the_real_probe_measures_both_dtypes_on_one_thread_and_restores_the_thread_count(monkeypatch):
    threads_seen = []
    real_matmul = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__",
                        lambda a, b: (threads_seen.append(torch.get_num_threads()), real_matmul(a, b))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fp32, bf16 = hardware.measure_matmuls((64, 32, 48))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert threads_seen and set(threads_seen) == {1} and len(threads_seen) % 2 == 0  # fp32 and bf16 alternate
    assert all(math.isfinite(v) and v > 0 for v in (fp32, bf16))


# ------------------------------------------------------------------------------------------------
# the step probe: the run's own forward+backward decides where the CPU has bf16 units
@pytest.fixture
def step_log(monkeypatch):
    """Stands in for the step probe's timing: returns (fp32 s, bf16 s) from `seconds`, counts its calls."""
    log = {"seconds": (0.100, 0.050), "calls": 0}

    def fake_measure(workload):
        log["calls"] += 1
        return log["seconds"]

    monkeypatch.setattr(hardware, "measure_steps", fake_measure)
    return log


def workload(**key) -> hardware.Workload:
    return hardware.Workload({"d_model": 128, "micro_batch": 16, **key}, lambda dtype: 0.0)


# (fp32 s, bf16 s) of a model's forward+backward, as seen on CPUs whose matmul probe finds bf16 units
STEPS = {
    "AMX Xeon, the nano model (measured 0.91x)": ((0.184, 0.203), "fp32"),
    "AMX Xeon, a 12M-parameter model (measured 2.4x)": ((2.76, 1.14), "bf16"),
    "a little faster, not by the margin": ((0.110, 0.100), "fp32"),
    "exactly at the margin": ((0.115, 0.100), "bf16"),
}


@pytest.mark.parametrize("case", STEPS)
def test_with_bf16_units_the_run_own_step_decides(probe_log, step_log, case):
    """A fast bf16 matmul does not make a fast step (autocast's casts outweigh small matmuls): measured on an
    AMX Xeon, the probe matmul 2.6x faster in bf16 and the `nano` step 0.91x; `auto` follows the step."""
    seconds, expected = STEPS[case]
    probe_log["figures"], step_log["seconds"] = (135.0, 351.0), seconds  # that Xeon's matmul probe: 2.6x
    first = hardware.choose_precision("auto", torch.device("cpu"), workload())
    assert first.name == expected and step_log["calls"] == 1 and probe_log["calls"] == 1
    speedup = seconds[0] / seconds[1]
    assert f"this model's forward+backward {speedup:.2g}x as fast in bf16" in first.reason
    assert "bf16 matmul 2.6x fp32 on this CPU" in first.reason
    assert (f"under the {hardware.STEP_MARGIN:g}x margin" in first.reason) == (expected == "fp32")
    again = hardware.choose_precision("auto", torch.device("cpu"), workload())  # the next run of that model
    assert again.name == expected and step_log["calls"] == 1 and "UTC, cached)" in again.reason


def test_without_bf16_units_the_step_is_never_timed(probe_log, step_log):
    """On a CPU that emulates bf16 (a bf16 step there takes tens of times longer) the matmul probe settles it."""
    probe_log["figures"] = MACHINES["AVX2, bf16 emulated"][0]
    precision = hardware.choose_precision("auto", torch.device("cpu"), workload())
    assert precision.name == "fp32" and step_log["calls"] == 0


def test_the_step_cache_is_per_architecture_batch_and_thread_count(probe_log, step_log):
    hardware.choose_precision("auto", torch.device("cpu"), workload())
    hardware.choose_precision("auto", torch.device("cpu"), workload(d_model=384))  # another model
    assert step_log["calls"] == 2
    before = torch.get_num_threads()
    torch.set_num_threads(1 if before != 1 else 2)
    try:
        hardware.choose_precision("auto", torch.device("cpu"), workload())  # the first model at another thread count
    finally:
        torch.set_num_threads(before)
    assert step_log["calls"] == 3
    hardware.choose_precision("auto", torch.device("cpu"), workload(d_model=384))
    assert step_log["calls"] == 3


@pytest.mark.parametrize("damage", ["not JSON", "a pickle", "truncated", "another machine", "NaN", "negative"])
def test_a_corrupt_step_cache_file_is_measured_again_and_replaced(probe_log, step_log, capsys, damage):
    identity = json.loads(json.dumps(hardware.step_identity(workload())))
    path = hardware.step_probe_path(identity)
    good = {"fp32_s": 0.1, "bf16_s": 0.05, "measured_at": "2026-01-01T00:00:00+00:00"}
    files = {"not JSON": b"\x00\xffgarbage", "a pickle": pickle.dumps({"identity": identity, **good}),
             "truncated": json.dumps({"identity": identity, **good}).encode()[:-7],
             "another machine": json.dumps({"identity": {**identity, "threads": 99}, **good}).encode(),
             "NaN": json.dumps({"identity": identity, **good, "bf16_s": math.nan}).encode(),
             "negative": json.dumps({"identity": identity, **good, "fp32_s": -1.0}).encode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(files[damage])
    step_log["seconds"] = (0.1, 0.2)  # differs from the file's figures: the decision must come from these
    precision = hardware.choose_precision("auto", torch.device("cpu"), workload())
    assert step_log["calls"] == 1 and precision.name == "fp32" and "measured now" in precision.reason
    assert "not a valid step probe" in capsys.readouterr().err
    assert hardware.read_figures(path, identity, hardware.STEP_FIELDS)[:2] == (0.1, 0.2)


def test_the_real_step_probe_times_both_dtypes_and_leaves_the_run_untouched():
    """The run's weights, gradients and random streams are the same after the probe as before: a run whose
    decision was measured trains exactly as one whose decision came from the cache."""
    from ablate.model import Transformer
    from ablate.training.state import step_workload
    from components.knobs import typed
    from tests.conftest import compose

    cfg = compose("model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.context_length=16")
    model = Transformer(typed(cfg), 64)
    objective = typed(cfg).z_loss.build()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    seen = []
    load = step_workload(cfg, model, objective, 64, micro_batch=4)
    timed = hardware.Workload(load.key, lambda dtype: (seen.append(dtype), load.time_step(dtype))[1])
    fp32_s, bf16_s = hardware.measure_steps(timed)
    assert all(math.isfinite(v) and v > 0 for v in (fp32_s, bf16_s))
    assert seen[:2] == [None, torch.bfloat16] and len(seen) % 2 == 0
    assert 4 <= len(seen) <= 2 * (1 + hardware.STEP_ROUNDS)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert load.key["micro_batch"] == 4 and load.key["model"]["d_model"] == 32 and "ffn" in load.key


# ------------------------------------------------------------------------------------------------
# one `auto` precision per sweep
def test_a_sweep_decides_once_and_every_later_job_takes_that_decision(tmp_path):
    decisions = iter([hardware.Precision("bf16", "auto: bf16 since ... 2x"), hardware.Precision("fp32", "auto: fp32")])
    calls = []

    def decide():
        calls.append(1)
        return next(decisions)

    first = hardware.shared_precision(tmp_path / hardware.SWEEP_PRECISION, decide)
    later = hardware.shared_precision(tmp_path / hardware.SWEEP_PRECISION, decide)  # another variant's job
    assert first.name == later.name == "bf16" and len(calls) == 1
    assert later.reason == f"auto: as every job of this sweep ({tmp_path / hardware.SWEEP_PRECISION}): " + first.reason


def test_a_job_that_decided_at_the_same_time_takes_the_first_decision(tmp_path):
    path = tmp_path / hardware.SWEEP_PRECISION

    def decide_while_another_job_writes():
        path.write_text(json.dumps({"name": "fp32", "reason": "auto: fp32 (the other job)"}))
        return hardware.Precision("bf16", "auto: bf16 (this job)")

    precision = hardware.shared_precision(path, decide_while_another_job_writes)
    assert precision.name == "fp32" and precision.reason.endswith("auto: fp32 (the other job)")
    assert json.loads(path.read_text())["name"] == "fp32"


@pytest.mark.parametrize("content", [b"\x00\xff", b'{"name": "fp16", "reason": "x"}', b"[1, 2]", b'{"name": "bf16"}'])
def test_an_unreadable_sweep_precision_is_not_trusted_nor_replaced(tmp_path, capsys, content):
    path = tmp_path / hardware.SWEEP_PRECISION
    path.write_bytes(content)
    precision = hardware.shared_precision(path, lambda: hardware.Precision("fp32", "auto: fp32 (decided)"))
    assert precision.reason == "auto: fp32 (decided)" and path.read_bytes() == content
    assert "this job decides for itself" in capsys.readouterr().err


def test_variants_of_one_sweep_train_in_one_dtype_although_their_steps_measure_differently(
        probe_log, monkeypatch, tmp_path):
    """The step probe times each variant's own model; in a sweep the first job's decision holds for all, so a
    comparison never sets a bf16 run against an fp32 one. Outside a sweep each run decides for itself."""
    from ablate.training.loop import train
    from tests.conftest import TINY, compose

    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    probe_log["figures"] = (135.0, 351.0)  # bf16 units: the step decides
    monkeypatch.setattr(hardware, "measure_steps",  # gelu's step gains from bf16 here, swiglu's does not
                        lambda workload: (0.2, 0.1) if workload.key["ffn"]["name"] == "gelu" else (0.2, 0.25))
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    dtypes = {}
    for ffn in ("gelu", "swiglu"):
        cfg = compose(*TINY, f"ffn={ffn}", "train.dtype=auto", "train.max_steps=2", "train.sample_tokens=0")
        dtypes[ffn] = train(cfg, sweep / ffn, group=str(sweep), progress=False)["dtype"]
        dtypes[f"{ffn} alone"] = train(cfg, tmp_path / f"alone-{ffn}", progress=False)["dtype"]
    assert dtypes == {"gelu": "bf16", "swiglu": "bf16", "gelu alone": "bf16", "swiglu alone": "fp32"}
    assert json.loads((sweep / hardware.SWEEP_PRECISION).read_text())["name"] == "bf16"
