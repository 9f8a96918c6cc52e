"""`python -m ablate.bench` on a tiny shape: it runs, its JSON is well formed and self-consistent, the
peers compute what our presets compute, and the bench's own shortcuts give what the plain paths give.
No timing is asserted: the numbers depend on the machine."""
from __future__ import annotations

import importlib.util
import json
import math
import shutil
import time

import pytest
import torch

from ablate.bench import configs as bench_configs
from ablate.bench import core
from ablate.bench import main as bench
from ablate.bench import sections as bench_sections
from ablate.bench.peers import copy_from_ours, nanogpt_like
from components.registry import axes, options
from tests.conftest import POEMS

HAVE_HF = importlib.util.find_spec("transformers") is not None
HAVE_TOKENIZERS = importlib.util.find_spec("tokenizers") is not None
FAST = ["--shapes", "tiny", "--threads", "1", "--peak-seconds", "0.02"]
ROW_TYPES = {"shape": str, "model": str, "kind": str, "dtype": str, "params": int, "flops_per_token": int,
             "steps": int, "step_ms": float, "tokens_per_s": float, "mfu": float, "peak_mib": float,
             "first_loss": float, "final_loss": float}


@pytest.fixture(scope="module")
def models_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    peers = "nanogpt,hf_gpt2,hf_llama" if HAVE_HF else "nanogpt"
    printed = bench.main([*FAST, "--steps", "2", "--warmup", "1", "--presets", "gpt2,llama", "--peers", peers,
                          "--dtype", "fp32,bf16", "--json", str(path)])
    return printed, json.loads(path.read_text())


def test_json_has_machine_peak_and_one_row_per_model_and_dtype(models_run):
    _, result = models_run
    machine = result["machine"]
    assert isinstance(machine["cpu"], str) and machine["cpu"]
    assert machine["torch"] == torch.__version__ and machine["torch_threads"] == 1
    assert set(result["peak_gflops"]) == {"fp32", "bf16"} and all(v > 0 for v in result["peak_gflops"].values())
    models = ["gpt2", "llama", "nanogpt"] + (["hf_gpt2", "hf_llama"] if HAVE_HF else [])
    assert sorted((r["model"], r["dtype"]) for r in result["rows"]) == sorted(
        (m, d) for m in models for d in ("fp32", "bf16"))
    for row in result["rows"]:
        for key, kind in ROW_TYPES.items():
            assert isinstance(row[key], kind), (key, row[key])
        assert row["shape"] == "tiny" and row["steps"] == 2
        assert row["kind"] == ("peer" if row["model"] in core.PEERS else "ours")
        assert row["tokens_per_s"] == pytest.approx(bench.SHAPES["tiny"].tokens / (row["step_ms"] / 1e3))
        peak = result["peak_gflops"][row["dtype"]]
        assert row["mfu"] == pytest.approx(row["flops_per_token"] * row["tokens_per_s"] / (peak * 1e9))
        assert row["step_ms_min"] <= row["step_ms"] <= row["step_ms_max"] and row["peak_mib"] > 0
        assert math.isfinite(row["final_loss"])
    assert result["cpu_load"] is None or 0 <= result["cpu_load"]["own_cpu_share"] <= 1.5


def test_ratios_match_the_tokens_per_second_columns(models_run):
    _, result = models_run
    rows = {(r["model"], r["dtype"]): r for r in result["rows"]}
    expected = {("gpt2", "nanogpt")} | ({("gpt2", "hf_gpt2"), ("llama", "hf_llama")} if HAVE_HF else set())
    assert {(r["ours"], r["peer"]) for r in result["ratios"]} == expected
    assert len(result["ratios"]) == 2 * len(expected)  # per dtype
    for ratio in result["ratios"]:
        ours, peer = rows[ratio["ours"], ratio["dtype"]], rows[ratio["peer"], ratio["dtype"]]
        assert ratio["tokens_per_s_ratio"] == pytest.approx(ours["tokens_per_s"] / peer["tokens_per_s"])
        assert ratio["peak_mib_ratio"] == pytest.approx(ours["peak_mib"] / peer["peak_mib"])
        assert peer["ours_over_peer"] == pytest.approx(ratio["tokens_per_s_ratio"]) and peer["vs"] == ratio["ours"]
    for (model, dtype), row in rows.items():
        if dtype == "bf16":
            assert row["loss_diff_vs_fp32"] == pytest.approx(row["final_loss"] - rows[model, "fp32"]["final_loss"])
        else:
            assert row["loss_diff_vs_fp32"] is None


def test_peers_compute_the_same_function_as_our_presets(models_run):
    """Same start weights, same batches: after the run a peer's loss equals its preset's (fp32), and its
    parameter and FLOP counts are ours."""
    _, result = models_run
    rows = {(r["model"], r["dtype"]): r for r in result["rows"]}
    for peer, preset in core.PEER_OF.items():
        if (peer, "fp32") in rows:
            ours, theirs = rows[preset, "fp32"], rows[peer, "fp32"]
            assert theirs["first_loss"] == pytest.approx(ours["first_loss"], abs=1e-5)
            assert theirs["final_loss"] == pytest.approx(ours["final_loss"], abs=1e-3)
            assert (theirs["params"], theirs["flops_per_token"]) == (ours["params"], ours["flops_per_token"])


def test_the_printed_table_names_every_model(models_run, capsys):
    _, result = models_run
    from ablate.bench.tables import report

    text = report(result)
    for row in result["rows"]:
        assert row["model"] in text
    assert "tok/s" in text and "MFU" in text and "peak MiB" in text and "ours/peer" in text


def test_nanogpt_peer_gives_our_gpt2_logits_and_the_same_adamw_step():
    """The plain GPT with our weights copied is our gpt2 preset: equal logits, and after one identical
    training step (bench's Candidate.step: loss, backward, clip, AdamW) still equal logits."""
    shape, device = bench.SHAPES["tiny"], torch.device("cpu")
    ours = core.make_candidate("gpt2", "ours", "tiny", shape, "fp32", device, preset="gpt2")
    peer = core.make_candidate("nanogpt", "peer", "tiny", shape, "fp32", device)
    x, y = core.make_batches(shape, 1, device)[0]
    assert ours.params == peer.params == sum(p.numel() for p in copy_from_ours(
        nanogpt_like(bench_configs.preset_config("gpt2", shape), shape.vocab), ours.model).parameters())
    with torch.no_grad():
        torch.testing.assert_close(peer.model(x), ours.model(x), atol=1e-5, rtol=1e-5)
    ours.step(x, y)
    peer.step(x, y)
    assert peer.losses == pytest.approx(ours.losses, abs=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(peer.model(y), ours.model(y), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("axis,option", [("ffn", "gelu"), ("attn", "strided"), ("softcap", "on"),
                                         ("moe", "topk"), ("pos", "alibi")])
def test_component_configs_equal_hydra_composition(axis, option):
    """--components merges an option's YAML into the default instead of composing again: same config."""
    from omegaconf import OmegaConf

    shape = bench.SHAPES["tiny"]
    fast = bench_configs.with_option(bench_configs.preset_config(None, shape), axis, option)
    plain = bench_configs.preset_config(None, shape, [f"{axis}={option}"])
    assert OmegaConf.to_container(fast) == OmegaConf.to_container(plain)


def test_components_lists_every_option_of_every_axis(tmp_path):
    path = tmp_path / "components.json"
    result = bench.main([*FAST, "--components", "--steps", "1", "--warmup", "0", "--json", str(path)])
    rows = json.loads(path.read_text())["components"]
    assert rows == json.loads(json.dumps(result["components"]))
    listed = {(r["axis"], r["option"]) for r in rows}
    knobbed = {(a, f"{o}, {k}={v}") for a in [*axes("model"), "optim"] for o in options(a)
               for k, v in bench_sections.knob_settings(a, o)}
    assert listed == {(a, o) for a in [*axes("model"), "optim"] for o in options(a)} | knobbed
    # the settings of issue #15 that are knobs of an option, not options, have their own rows
    assert {("qk_norm", "on, scope=full"), ("moe", "topk, balance=bias")} <= knobbed
    for axis in [*axes("model"), "optim"]:
        assert sum(r["default"] for r in rows if r["axis"] == axis) == 1
    default_tps = next(r for r in rows if r["default"])["tokens_per_s"]
    for row in rows:
        assert row["status"] in ("ok", "refused"), row
        if row["status"] == "ok":
            assert row["tokens_per_s"] > 0 and row["peak_mib"] > 0 and row["params"] > 0
            assert row["tokens_per_s_ratio"] == pytest.approx(row["tokens_per_s"] / default_tps)
        if row["default"]:
            assert row["tokens_per_s_ratio"] == pytest.approx(1.0) and row["peak_mib_ratio"] == pytest.approx(1.0)
    moe = next(r for r in rows if (r["axis"], r["option"]) == ("moe", "topk"))
    assert moe["params"] > next(r for r in rows if r["default"])["params"]


def test_tokenizer_comparison_on_a_small_corpus(tmp_path, monkeypatch):
    docs = sorted(POEMS.glob("*.txt"))
    monkeypatch.setattr(bench_sections, "tokenizer_corpus",
                        lambda: ([p.read_text() for p in docs[1:]], [docs[0].read_text()]))
    path = tmp_path / "tok.json"
    bench.main(["--tokenizer", "--tokenizer-vocab", "400", "--threads", "1", "--json", str(path)])
    rows = json.loads(path.read_text())["tokenizer"]
    assert [r["tokenizer"] for r in rows] == ["ablate"] + (["hf_tokenizers"] if HAVE_TOKENIZERS else [])
    for row in rows:
        assert row["vocab_size"] == 400
        assert row["train_s"] > 0 and row["encode_mb_per_s"] > 0 and 1 < row["bytes_per_token"] < 10
    if HAVE_TOKENIZERS:
        hf = rows[-1]
        assert rows[0]["train_s_ratio"] == pytest.approx(rows[0]["train_s"] / hf["train_s"])
        assert rows[0]["encode_mb_per_s_ratio"] == pytest.approx(rows[0]["encode_mb_per_s"] / hf["encode_mb_per_s"])


def test_data_section_reports_the_input_share(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_sections, "DATA_OVERRIDES", ("data=text", f"data.path={POEMS}"))
    result = bench.main([*FAST, "--data", "--presets", "gpt2", "--steps", "2", "--warmup", "0"])
    (row,) = result["data"]
    assert row["model"] == "gpt2" and row["vocab_size"] == bench.SHAPES["tiny"].vocab
    assert 0 < row["input_share"] < 1
    assert row["input_share"] == pytest.approx(row["batch_ms"] / (row["batch_ms"] + row["step_ms"]))


def test_startup_section_times_fresh_processes(tmp_path):
    overrides = f"model=micro data=text data.path={POEMS} tokenizer.vocab_size=300"
    started = time.perf_counter()
    result = bench.main(["--startup", "--repeats", "1", "--run-overrides", overrides,
                         "--json", str(tmp_path / "b.json")])
    elapsed = time.perf_counter() - started
    startup = json.loads((tmp_path / "b.json").read_text())["startup"]
    assert startup == json.loads(json.dumps(result["startup"]))
    assert startup["overrides"] == overrides.split() and startup["repeats"] == 1
    for key in ("cfg_job_s", "first_step_s_wandb", "first_step_s_none", "one_step_run_wall_s_none"):
        assert 0 < startup[key] < elapsed, key
    # first_step_s counts from the child's launch (/proc, 10 ms ticks) and the parent times the whole
    # child: comparing the two clocks is a timing race on a loaded machine, so only their presence is checked
    assert startup["first_step_s_none"] > 0 and startup["first_step_s_wandb"] > 0


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile's CPU backend needs a C compiler")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit deprecations raised inside torch.compile
def test_compiled_presets_compute_what_the_eager_ones_do(tmp_path):
    result = bench.main([*FAST, "--presets", "gpt2", "--no-peers", "--steps", "2", "--warmup", "0", "--compile",
                         "--no-memory"])
    rows = {r["model"]: r for r in result["rows"]}
    eager, compiled = rows["gpt2"], rows["gpt2+compile"]
    assert compiled["first_loss"] == pytest.approx(eager["first_loss"], abs=1e-5)  # same weights at the start
    assert compiled["final_loss"] == pytest.approx(eager["final_loss"], abs=1e-4)
    assert compiled["over_eager"] == pytest.approx(compiled["tokens_per_s"] / eager["tokens_per_s"])
    assert compiled["compile_s"] > 0 and "over_eager" not in eager


def test_hf_peers_are_skipped_with_a_note_without_transformers(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    notes = []
    assert bench.available_peers(["nanogpt", "hf_gpt2", "hf_llama"], notes) == ["nanogpt"]
    assert "transformers" in notes[0]


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        bench.parse_args(["--shapes", "Z"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--peers", "nanogpt,vllm"])
    args = bench.parse_args([])
    assert args.shapes == ["A", "B"] and args.models and args.threads == 2 and args.steps == 20


def test_sweep_section_runs_both_launchers_side_by_side_and_compares_their_losses(tmp_path):
    from ablate.bench.sweep import max_relative_difference

    assert max_relative_difference([(1, "train_loss", 2.0)], [(1, "train_loss", 2.002)]) == pytest.approx(1e-3)
    assert max_relative_difference([(1, "train_loss", 2.0)], [(2, "train_loss", 2.0)]) == math.inf
    overrides = (f"model=micro data=text data.path={POEMS} tokenizer.vocab_size=300 train.batch_size=4 "
                 f"train.eval_batches=1 train.sample_tokens=5")
    result = bench.main(["--sweep", "--repeats", "1", "--sweep-steps", "3", "--threads", "1",
                         "--sweep-grid", "train.seed=0,1", "--run-overrides", overrides])
    rows = {(r["launcher"], r["dtype"]): r for r in result["sweep"]["rows"]}
    assert set(rows) == {(launcher, dtype) for launcher in ("basic", "batched") for dtype in ("fp32", "auto")}
    assert all(r["jobs"] == r["completed"] == 2 and len(r["wall_all_s"]) == 1 for r in rows.values())
    assert rows[("basic", "fp32")]["speedup"] == 1.0 and rows[("batched", "fp32")]["computed_in"] == "fp32"
    assert rows[("batched", "fp32")]["loss_rel_diff_same_dtype"] < 1e-4  # the ensemble reproduces each job
    assert rows[("batched", "fp32")]["final_loss_diff_vs_fp32"] < 1e-4 and rows[("batched", "fp32")]["verdicts_match"]


def test_sweep_section_adds_worker_processes_that_share_the_threads():
    """With --threads T >= 2 the batched launcher also runs in T processes of one thread (its launcher test,
    tests/test_batched.py, checks those runs against the basic launcher's)."""
    from ablate.bench.sweep import launcher_overrides, variants

    assert variants(1) == [("basic", "fp32"), ("basic", "auto"), ("batched", "fp32"), ("batched", "auto")]
    assert variants(4)[4:] == [("batched n_jobs=4", "fp32"), ("batched n_jobs=4 max_members=1", "fp32")]
    assert launcher_overrides("basic", 4) == ["hydra/launcher=basic", "train.threads=4"]
    assert launcher_overrides("batched n_jobs=4 max_members=1", 4) == [
        "hydra/launcher=batched", "hydra.launcher.n_jobs=4", "hydra.launcher.max_members=1", "train.threads=1"]
    assert launcher_overrides("batched n_jobs=2", 4)[-1] == "train.threads=2"
