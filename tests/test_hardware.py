"""`train.dtype=auto` decides from measurement: the decision on several machines' probe figures, the probe's
cache (verified before it is trusted, measured again when it is not), and CUDA's own rule."""
from __future__ import annotations

import json
import math
import pickle

import pytest
import torch

from ablate import hardware


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
