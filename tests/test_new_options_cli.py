"""The options of issue 15 from the command line, as a user types them: together in one run that trains and
records them (summary choices, the checkpoint's expert biases and special tokens, Muon's optimizer state), and
refused in one paragraph with exit code 2 where they cannot work."""
from __future__ import annotations

import json

import pytest
import torch

from ablate.data.tokenizers import load_tokenizer
from ablate.rundir.checkpoint import CHECKPOINT, read_checkpoint
from tests.safety_common import FAST, SHORT, assert_refused, cli

NEW = ["optim=muon", "attn=local_global", "attn.window=8", "attn.global_every=2", "moe=topk", "moe.balance=bias",
       "qk_norm=on", "qk_norm.scope=full", 'tokenizer.special_tokens=["<|endoftext|>","<|sep|>"]']


def test_every_new_option_trains_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    result = cli(*FAST, *SHORT, *NEW, f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert {k: summary["choices"][k] for k in ("optim", "attn", "moe", "qk_norm")} == \
        {"optim": "muon", "attn": "local_global", "moe": "topk", "qk_norm": "on"}
    state = read_checkpoint(run / CHECKPOINT)
    assert set(state["optimizer"]) == {"muon", "adamw"}
    assert any(key.endswith("mlp.expert_bias") and value.abs().sum() > 0 for key, value in state["model"].items())
    assert state["model"]["blocks.0.attn.qk_norm.q_norm.weight"].shape == (64,)  # over the whole projection
    assert load_tokenizer(run / "tokenizer.json").special_tokens == ["<|endoftext|>", "<|sep|>"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("moe_aux_loss" not in row for row in rows)
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in rows[1:])


@pytest.mark.parametrize("overrides,words", [
    (["attn=local_global", "attn.global_every=9"], ["attn.global_every=9", "model.n_layers=2"]),
    (["optim=muon", "optim.adjust_lr=moonshot"], ["optim.adjust_lr", "moonshot", "match_rms_adamw"]),
    (["moe=topk", "moe.balance=loss_free"], ["moe.balance", "loss_free", "aux_loss, bias"]),
    (["qk_norm=on", "qk_norm.scope=heads"], ["qk_norm.scope", "heads", "head, full"]),
    (["qk_norm=on", "norm=none", "qk_norm.scope=full"], ["qk_norm=on", "norm=none"]),
    (["tokenizer.special_tokens=[]"], ["tokenizer.special_tokens=[]", "at least one"]),
])
def test_what_cannot_work_is_refused_before_training(tmp_path, overrides, words):
    result = cli(*FAST, *SHORT, *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_refused(result, *words)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
