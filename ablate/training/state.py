"""The state of one training run: model, optimizer, schedule, data position and its checkpoint.

`Run.train_step` is one optimizer step (batch to device, forward, loss, backward, clip, step);
`evaluate` the loss on fixed validation windows; `save_checkpoint` / `load_checkpoint` everything a
bit-identical resume needs; `sample` the text written to samples.txt. ablate.training.loop drives it.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from ablate.data.corpora import TokenizedCorpus
from ablate.machine.distributed import World
from ablate.machine.hardware import Workload, choose_precision
from ablate.model import Transformer
from ablate.training.evaluation import final_eval_starts
from ablate.rundir.checkpoint import CHECKPOINT, TRUNK, read_checkpoint, write_checkpoint
from components.knobs import typed
from components.losses import cross_entropy
from components.registry import axes

EVAL_SEED = 1234  # validation windows depend only on this, so every run of a sweep sees the same ones


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats."""
    return cross_entropy(logits, targets)


def loss_terms(model: Transformer, objective, logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """The training objective by term: the `z_loss` option's terms (cross-entropy `ce`, z-loss when on)
    and any auxiliary losses of the model (MoE load balancing). The logged `train_loss` is `ce` alone,
    so it stays comparable across runs with and without extras."""
    terms = objective(logits, targets)
    terms.update(model.auxiliary_losses())
    return terms


def step_workload(cfg: DictConfig, model: Transformer, objective, vocab_size: int, micro_batch: int) -> Workload:
    """A run's forward, loss and backward, for `train.dtype=auto`'s step probe (ablate.machine.hardware): timed on a
    copy of the model made at the first call (the run's weights, gradients and buffers stay untouched), on
    fixed random tokens, under a forked RNG (the run's random streams stay where they were)."""
    context = cfg.model.context_length
    key = {"vocab": vocab_size, "micro_batch": micro_batch, "context": context,
           "model": OmegaConf.to_container(cfg.model, resolve=True),
           **{name: OmegaConf.to_container(cfg[name], resolve=True) for name in axes("model")}}
    state: dict = {}

    def time_step(dtype: torch.dtype | None) -> float:
        with torch.random.fork_rng(devices=[]):
            if not state:
                state["model"] = copy.deepcopy(model).train()
                tokens = torch.randint(vocab_size, (micro_batch, context + 1),
                                       generator=torch.Generator().manual_seed(0))
                state["x"], state["y"] = tokens[:, :-1].to(next(model.parameters()).device), tokens[:, 1:]
            probe = state["model"]
            probe.zero_grad(set_to_none=True)
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype) if dtype is not None else nullcontext():
                terms = loss_terms(probe, objective, probe(state["x"]), state["y"].to(state["x"].device))
            sum(terms.values()).backward()
            return time.perf_counter() - started

    return Workload(key, time_step)


def add_terms(totals: dict[str, float], terms: dict[str, torch.Tensor], accum: int) -> None:
    """Accumulate one micro-batch's loss terms into the step's means."""
    for name, value in terms.items():
        totals[name] = totals.get(name, 0.0) + value.item() / accum


class Run:
    """State of one training run; `train` drives it."""

    def __init__(self, cfg: DictConfig, run_dir: Path, corpus: TokenizedCorpus, device: torch.device,
                 world: World = World(), sweep_dir: Path | None = None):
        self.cfg, self.run_dir, self.corpus, self.device, self.world = cfg, run_dir, corpus, device, world
        self.options = options = typed(cfg)
        self.model = self.raw_model = Transformer(options, corpus.tokenizer.vocab_size).to(device)
        if world.size > 1:  # gradients are averaged across ranks during backward
            self.model = DistributedDataParallel(self.raw_model, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = options.optim.build(self.raw_model, device)
        self.schedule = options.schedule.build(cfg.train.max_steps)
        self.objective = options.z_loss.build()
        self.rng = np.random.default_rng(cfg.train.seed)
        self.step, self.tokens_seen, self.best_val_loss, self.initial_loss = 0, 0, math.inf, None
        self.checkpoint_path = run_dir / CHECKPOINT
        # the global torch RNG state a checkpoint records (an ensemble member records its own, not the process's)
        self.torch_rng = torch.get_rng_state
        # rank 0 decides (a probe on every rank would measure the others' load), every rank computes alike
        micro_batch = cfg.train.batch_size // (cfg.train.grad_accum * world.size)
        workload = step_workload(cfg, self.raw_model, self.objective, corpus.tokenizer.vocab_size, micro_batch)
        self.precision = world.broadcast(
            choose_precision(cfg.train.dtype, device, workload, sweep_dir) if world.is_main else None)
        amp = self.precision.autocast  # None: plain fp32
        self.autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else nullcontext
        starts = corpus.random_starts("val", cfg.train.eval_batches * cfg.train.batch_size,
                                      cfg.model.context_length, np.random.default_rng(EVAL_SEED))
        self.eval_starts = np.array_split(starts, cfg.train.eval_batches)
        self.final_eval_starts = final_eval_starts(len(corpus.val), cfg.model.context_length,
                                                   cfg.train.final_eval_tokens, cfg.train.batch_size)

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        return tensor.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else tensor

    def train_step(self) -> tuple[dict[str, float], float]:
        """One optimizer step over train.batch_size sequences (the global batch): every rank draws the
        same starts and takes its slice of each of the train.grad_accum micro-batches.

        Returns the mean of each loss term over the global batch and the gradient norm before clipping."""
        accum, world = self.cfg.train.grad_accum, self.world
        self.begin_step()
        totals: dict[str, float] = {}
        for index, (x, y) in enumerate(self.micro_batches()):
            last_micro = index == accum - 1
            sync = nullcontext() if world.size == 1 or last_micro else self.model.no_sync()  # all-reduce once
            with sync:
                with self.autocast():
                    terms = loss_terms(self.raw_model, self.objective, self.model(x), y)
                (sum(terms.values()) / accum).backward()
            add_terms(totals, terms, accum)
        return world.mean(totals), self.end_step()

    # The pieces of a step, also driven by ablate.ensemble for several runs at once.
    def begin_step(self) -> None:
        """Set this step's learning rates (the schedule's multiplier of each group's own peak rate,
        ablate/training/optimizers.py) and clear the gradients."""
        multiplier = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * multiplier
        self.optimizer.zero_grad(set_to_none=True)

    def micro_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This step's (inputs, targets) per micro-batch, on the device: the next draw of the run's data order."""
        cfg, world = self.cfg, self.world
        accum, context = cfg.train.grad_accum, cfg.model.context_length
        global_starts = self.corpus.random_starts("train", cfg.train.batch_size, context, self.rng)
        starts = global_starts.reshape(accum, world.size, -1)[:, world.rank]
        return [tuple(self.to_device(a) for a in self.corpus.windows("train", s, context)) for s in starts]

    def end_step(self) -> float:
        """Clip the gradients (train.grad_clip, 0 = off), take the optimizer step and count it; returns the
        gradient norm before clipping."""
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip).item()
        self.optimizer.step()
        self.raw_model.after_optimizer_step()  # modules that adapt between steps (MoE balancing biases)
        self.step += 1
        self.tokens_seen += self.cfg.train.batch_size * self.cfg.model.context_length
        return grad_norm

    @torch.no_grad()
    def evaluate(self, batches: list[np.ndarray] | None = None) -> float:
        """Mean loss per token over the fixed validation windows (`batches`: other windows' starts)."""
        self.model.eval()
        losses, counts = [], []
        for starts in self.eval_starts if batches is None else batches:  # every rank the same: no communication
            x, y = (self.to_device(a) for a in self.corpus.windows("val", starts, self.cfg.model.context_length))
            with self.autocast():
                losses.append(lm_loss(self.raw_model(x), y).item())
            counts.append(len(starts))
        self.model.train()
        return float(np.average(losses, weights=counts))

    def evaluate_final(self) -> float:
        """The final loss: over train.final_eval_tokens' windows (ablate/training/evaluation.py), else the usual ones."""
        return self.evaluate(self.final_eval_starts)  # None: the eval_batches windows

    def save_checkpoint(self, path: Path | None = None) -> None:
        """Everything to continue this run, in checkpoints/latest.pt (or `path`: the trunk a longer run branches from)."""
        if not self.world.is_main:
            return
        state = {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "step": self.step,
            "tokens_seen": self.tokens_seen, "best_val_loss": self.best_val_loss,
            "initial_loss": self.initial_loss, "rng": self.rng.bit_generator.state,
            "torch_rng": self.torch_rng(), "config": OmegaConf.to_container(self.cfg, resolve=True),
            "vocab_size": self.corpus.tokenizer.vocab_size, "seed": self.cfg.train.seed,
            "corpus_fingerprint": self.corpus.meta["corpus_fingerprint"],
            "tokenizer_fingerprint": self.corpus.tokenizer.fingerprint(),
        }
        write_checkpoint(state, path or self.checkpoint_path)

    def save_trunk(self) -> None:
        self.save_checkpoint(self.run_dir / TRUNK)

    def load_checkpoint(self, state: dict | None = None) -> None:
        """Continue from `state` (a checkpoint already read: this run's own, or the trunk it branches from),
        else from this run's checkpoints/latest.pt."""
        state = state if state is not None else read_checkpoint(self.checkpoint_path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.best_val_loss, self.initial_loss = state["best_val_loss"], state["initial_loss"]
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])

    def sample(self) -> str:
        cfg, tokenizer = self.cfg.train, self.corpus.tokenizer
        prompt = tokenizer.encode(cfg.sample_prompt) or [tokenizer.eot_id]
        generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.model.eval()
        with self.autocast():
            ids = self.raw_model.generate(torch.tensor([prompt], device=self.device), cfg.sample_tokens,
                                      cfg.sample_temperature, cfg.sample_top_p, generator)
        self.model.train()
        return tokenizer.decode(ids[0].tolist())
