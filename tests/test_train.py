"""The training loop on a small real corpus: it learns, it is deterministic, its files are complete."""
from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
import torch

from ablate import load_run
from ablate.accounting import count
from ablate.training.loop import train
from components.knobs import typed
from components.registry import option
from tests.conftest import ROOT, TINY, compose


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose(*TINY, "train.max_steps=20", "train.eval_interval=10", "train.log_interval=1",
                  "optim.lr=3e-3", "schedule.warmup_steps=5")
    summary = train(cfg, run_dir, choices={"norm": "rms"}, overrides=["model=micro"], progress=False)
    return cfg, run_dir, summary


def test_twenty_steps_lower_the_loss(trained):
    _, run_dir, summary = trained
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(0, 21))  # step 0: the untrained model's evaluation
    assert rows[0]["train_loss"] is None and rows[0]["tokens"] == 0
    assert rows[0]["val_loss"] == pytest.approx(math.log(400), abs=0.1)  # near-uniform at random init
    first, last = rows[1]["train_loss"], sum(r["train_loss"] for r in rows[-3:]) / 3
    assert last < first - 0.5
    assert summary["final_val_loss"] < rows[10]["val_loss"] < 6.0  # log(400) = 5.99 at random init
    assert 0 <= summary["others_cpu_share"] <= 1 and 0 <= summary["steal_share"] <= 1
    assert summary["status"] == "completed"


def test_summary_has_the_contract_fields_and_true_counts(trained):
    cfg, run_dir, summary = trained
    on_disk = json.loads((run_dir / "summary.json").read_text())
    for key in ("status", "final_val_loss", "best_val_loss", "val_bpb", "unigram_val_loss", "vocab_size",
                "params_total", "params_non_embedding", "params_active", "flops_per_token", "tokens_seen",
                "wall_time_s", "tokens_per_s", "seed", "choices",
                "git_commit", "git_dirty", "torch_version", "ablate_version", "device_name", "dtype"):  # provenance
        assert on_disk[key] is not None, key
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert on_disk["git_commit"] == head and on_disk["torch_version"] == torch.__version__
    model, loaded_cfg, tokenizer = load_run(run_dir)
    assert on_disk["params_total"] == sum(p.numel() for p in model.parameters())
    for key, value in count(cfg, tokenizer.vocab_size).items():  # the closed-form accounting is reported
        assert on_disk[key] == value, key
    assert on_disk["tokens_seen"] == 20 * cfg.train.batch_size * cfg.model.context_length
    assert on_disk["best_val_loss"] == min(r["val_loss"] for r in metrics(run_dir) if "val_loss" in r)
    _, val_docs = typed(cfg).data.build().documents()
    val_bytes = sum(len(doc.encode("utf-8")) for doc in val_docs)
    val_tokens = sum(len(tokenizer.encode(doc)) + 1 for doc in val_docs)  # + one <|endoftext|> each
    expected_bpb = on_disk["final_val_loss"] * val_tokens / val_bytes / math.log(2)
    assert on_disk["val_bpb"] == pytest.approx(expected_bpb, rel=1e-9)
    assert (run_dir / "samples.txt").read_text().strip()
    for row in metrics(run_dir):
        assert {"step", "tokens", "train_loss", "lr", "grad_norm", "tokens_per_s"} <= row.keys()


def test_the_final_loss_is_every_non_overlapping_window_of_the_held_out_split(trained):
    """final_val_loss scores the whole split (it is smaller than train.final_eval_tokens), recomputed here from
    the saved weights with plain cross-entropy; the curve's last point keeps the eval_batches windows."""
    from ablate.data.corpora import prepare
    from ablate.training.evaluation import final_eval_starts

    cfg, run_dir, summary = trained
    model, _, _ = load_run(run_dir)
    val = torch.from_numpy(prepare(cfg).val.astype("int64"))
    context = cfg.model.context_length
    n = (len(val) - 1) // context  # whole windows whose targets stay inside the split
    x, y = val[:n * context].view(n, context), val[1:n * context + 1].view(n, context)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    assert summary["final_val_loss"] == pytest.approx(expected, rel=1e-5)
    assert summary["final_eval_tokens"] == n * context
    assert metrics(run_dir)[-1]["val_loss"] != summary["final_val_loss"]  # the curve's own windows
    # past the cap: that many windows, spread evenly from the split's start to its end, none overlapping
    starts = np.concatenate(final_eval_starts(10_000, 10, 200, 64))
    assert len(starts) == 20 and starts[0] == 0 and starts[-1] == 9_980 and np.all(np.diff(starts) >= 10)
    assert np.ptp(np.diff(starts)) <= 10 and final_eval_starts(10_000, 10, None, 64) is None
    assert [len(b) for b in final_eval_starts(1_000, 10, 10**6, 32)] == [25, 25, 25, 24]  # 99 windows, <= 32 a batch


def test_load_run_restores_the_trained_model(trained):
    _, run_dir, summary = trained
    model, cfg, tokenizer = load_run(run_dir)
    assert not model.training and cfg.model.name == "micro"
    text = "Shall I compare thee to a summer's day?"
    ids = torch.tensor([tokenizer.encode(text)])
    logits = model(ids)
    assert logits.shape == (1, ids.shape[1], tokenizer.vocab_size)
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
    assert loss < 5.99  # better than uniform over the 400-token vocabulary: the weights are the trained ones


def test_same_seed_same_numbers_and_other_seed_differs(tmp_path):
    def run(name, seed):
        cfg = compose(*TINY, "train.max_steps=6", "train.eval_interval=3", "train.log_interval=1",
                      f"train.seed={seed}")
        train(cfg, tmp_path / name, progress=False)
        return [(r["train_loss"], r.get("val_loss")) for r in metrics(tmp_path / name)]

    first = run("a", 0)
    assert run("b", 0) == first
    assert run("c", 1) != first


def test_resuming_a_finished_run_trains_nothing_more(trained, tmp_path):
    cfg, run_dir, summary = trained
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    again = train(cfg, copy, progress=False)
    assert again["steps"] == 20 and len(metrics(copy)) == 21  # steps 0 (evaluation only) to 20
    assert again["final_val_loss"] == pytest.approx(summary["final_val_loss"], rel=1e-6)


def test_schedules_exact_values():
    cosine = option("schedule", "cosine", warmup_steps=10, min_lr_ratio=0.1).build(110)
    assert [cosine(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert cosine(10) == pytest.approx(1.0) and cosine(60) == pytest.approx(0.55)
    assert cosine(110) == pytest.approx(0.1)
    wsd = option("schedule", "wsd", warmup_steps=10, min_lr_ratio=0.0, decay_fraction=0.2).build(100)
    assert wsd(5) == pytest.approx(0.6) and wsd(50) == 1.0 and wsd(79) == 1.0
    assert wsd(80) == pytest.approx(1 - 1 / 20) and wsd(99) == pytest.approx(0.0)
    assert option("schedule", "constant", warmup_steps=4).build(100)(2) == pytest.approx(0.75)
    assert option("schedule", "constant", warmup_steps=4).build(100)(50) == 1.0
