"""The training loop: batch to device, zero grads, forward, loss, backward, step; then the run's files.

`train(cfg, run_dir)` is all of it and returns the summary it also writes to summary.json.
Files in run_dir: metrics.jsonl (one line per logged step, flushed as written), summary.json,
checkpoints/latest.pt (resumable), samples.txt.
"""
from __future__ import annotations

import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ablate import accounting, distributed, feedback, validate
from ablate.checkpoint import CHECKPOINT, check_run_dir, read_checkpoint, write_checkpoint
from ablate.data import TokenizedCorpus, prepare
from ablate.distributed import World
from ablate.evaluation import eval_interval, step_zero_record
from ablate.files import write_summary_file
from ablate.hardware import choose_precision, resolve_device
from ablate.machine_load import MachineLoad
from ablate.metrics_file import MetricsFile, kill_point
from ablate.runlock import locked_run_dir
from ablate.model import Transformer
from ablate.preemption import StopRequest
from ablate.config import typed
from components.losses import cross_entropy
from components.registry import config_of

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


class Run:
    """State of one training run; `train` drives it."""

    def __init__(self, cfg: DictConfig, run_dir: Path, corpus: TokenizedCorpus, device: torch.device,
                 world: World = World()):
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
        # rank 0 decides (a probe on every rank would measure the others' load), every rank computes alike
        self.precision = world.broadcast(choose_precision(cfg.train.dtype, device) if world.is_main else None)
        amp = self.precision.autocast  # None: plain fp32
        self.autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else nullcontext
        starts = corpus.random_starts("val", cfg.train.eval_batches * cfg.train.batch_size,
                                      cfg.model.context_length, np.random.default_rng(EVAL_SEED))
        self.eval_starts = np.array_split(starts, cfg.train.eval_batches)

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        return tensor.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else tensor

    def train_step(self) -> tuple[dict[str, float], float]:
        """One optimizer step over train.batch_size sequences (the global batch): every rank draws the
        same starts and takes its slice of each of the train.grad_accum micro-batches.

        Returns the mean of each loss term over the global batch and the gradient norm before clipping."""
        cfg, world = self.cfg, self.world
        accum, context = cfg.train.grad_accum, cfg.model.context_length
        global_starts = self.corpus.random_starts("train", cfg.train.batch_size, context, self.rng)
        micro_batches = global_starts.reshape(accum, world.size, -1)[:, world.rank]
        multiplier = self.schedule(self.step)
        for group in self.optimizer.param_groups:  # each group's own peak rate (ablate/optim.py)
            group["lr"] = group["initial_lr"] * multiplier
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for index, starts in enumerate(micro_batches):
            x, y = (self.to_device(a) for a in self.corpus.windows("train", starts, context))
            last_micro = index == accum - 1
            sync = nullcontext() if world.size == 1 or last_micro else self.model.no_sync()  # all-reduce once
            with sync:
                with self.autocast():
                    terms = loss_terms(self.raw_model, self.objective, self.model(x), y)
                (sum(terms.values()) / accum).backward()
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value.item() / accum
        totals = world.mean(totals)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip).item()
        self.optimizer.step()
        self.raw_model.after_optimizer_step()  # modules that adapt between steps (MoE balancing biases)
        self.step += 1
        self.tokens_seen += cfg.train.batch_size * cfg.model.context_length
        return totals, grad_norm

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation windows."""
        self.model.eval()
        losses = []
        for starts in self.eval_starts:  # every rank evaluates the same windows: no communication needed
            x, y = (self.to_device(a) for a in self.corpus.windows("val", starts, self.cfg.model.context_length))
            with self.autocast():
                losses.append(lm_loss(self.raw_model(x), y).item())
        self.model.train()
        return float(np.mean(losses))

    def save_checkpoint(self) -> None:
        if not self.world.is_main:
            return
        state = {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "step": self.step,
            "tokens_seen": self.tokens_seen, "best_val_loss": self.best_val_loss,
            "initial_loss": self.initial_loss, "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(), "config": OmegaConf.to_container(self.cfg, resolve=True),
            "vocab_size": self.corpus.tokenizer.vocab_size, "seed": self.cfg.train.seed,
            "corpus_fingerprint": self.corpus.meta["corpus_fingerprint"],
            "tokenizer_fingerprint": self.corpus.tokenizer.fingerprint(),
        }
        write_checkpoint(state, self.checkpoint_path)

    def load_checkpoint(self) -> None:
        state = read_checkpoint(self.checkpoint_path, map_location=self.device)
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


def adopt_main_run_dir(world: World, own: Path) -> Path:
    """Under torchrun every process composes its own Hydra run directory; all use rank 0's, and the
    others remove theirs if it holds nothing but Hydra's own files."""
    main = Path(world.broadcast(str(own)))
    if main != own and own.is_dir() and {p.name for p in own.iterdir()} <= {".hydra", "run.log"}:
        shutil.rmtree(own, ignore_errors=True)
    return main


def check_divisible_batch(cfg: DictConfig, world: World) -> None:
    per_step = cfg.train.grad_accum * world.size
    if cfg.train.batch_size % per_step:
        raise validate.ConfigError(
            f"train.batch_size={cfg.train.batch_size} cannot be split over {world.size} processes x "
            f"train.grad_accum={cfg.train.grad_accum} micro-steps: it must be a multiple of {per_step}.")


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_summary_file(run_dir / "summary.json", summary)


@locked_run_dir  # one process per run directory (ablate.runlock)
def train(cfg: DictConfig, run_dir: Path, *, choices: dict[str, str] | None = None,
          overrides: list[str] | None = None, group: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train one model as `cfg` says, writing the run's files into `run_dir`; returns the summary."""
    job_started = feedback.take_job_start()
    validate.check(cfg)
    device = resolve_device(cfg.train.device)
    world = distributed.init(device.type)
    if world.size > 1:
        device = torch.device("cuda", world.local_rank) if device.type == "cuda" else device
        run_dir = adopt_main_run_dir(world, Path(run_dir))
        check_divisible_batch(cfg, world)
    run_dir = Path(run_dir)
    plan = check_run_dir(run_dir, cfg)  # fresh, resume or skip; refuses what would lose results
    if plan.action == "skip":
        print(f"ablate: {run_dir} already holds this run, {plan.summary['status']}; nothing to train")
        return plan.summary
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cuda":  # TF32 matmuls for whatever autocast leaves in fp32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.train.seed)

    started = time.perf_counter()
    corpus = prepare(cfg)
    plan.check_data(corpus)  # a resumed checkpoint continues only on its own corpus and tokenizer
    data_prep_s = time.perf_counter() - started
    if world.is_main:
        corpus.tokenizer.save(run_dir / "tokenizer.json")  # the run dir is self-contained for load_run
    run = Run(cfg, run_dir, corpus, device, world)
    if plan.action == "resume":
        run.load_checkpoint()
        print(f"resumed from {run.checkpoint_path} at step {run.step}" + "".join(f"; {n}" for n in plan.notes))
    if cfg.train.compile:
        run.model = torch.compile(run.model)
    counts = accounting.count(cfg, corpus.tokenizer.vocab_size)
    choices = dict(choices or {})
    summary: dict[str, Any] = {
        "status": "running", "error": None, "final_val_loss": None, "best_val_loss": None, "val_bpb": None,
        "unigram_val_loss": corpus.meta["unigram_val_loss"], **counts,
        "tokens_seen": run.tokens_seen, "steps": run.step, "wall_time_s": None, "tokens_per_s": None,
        "seed": cfg.train.seed, "choices": choices, "overrides": list(overrides or []),
        "device": str(device), "dtype": run.precision.name, "dtype_reason": run.precision.reason,
        "processes": world.size, "data_prep_s": round(data_prep_s, 3), "first_step_s": None,
        "train_tokens": corpus.meta["train_tokens"], "val_tokens": corpus.meta["val_tokens"],
    }
    logger_cfg = run.options.logger if world.is_main else config_of("logger", "none")()
    logger = logger_cfg.build(run_dir=run_dir, group=group or "single-runs",
                              run_name=",".join(o for o in overrides or [] if not o.startswith("hydra")) or "default",
                              tags=[f"{k}={v}" for k, v in sorted(choices.items())],
                              config=OmegaConf.to_container(cfg, resolve=True))
    metrics = MetricsFile(run_dir / "metrics.jsonl", truncate_after_step=run.step, enabled=world.is_main)
    val_loss, eval_every = None, eval_interval(cfg.train)
    if run.step == 0:  # the untrained model: every curve starts at the same point
        record = step_zero_record(run, corpus.bits_per_byte)
        metrics.write(record)
        logger.log({k: v for k, v in record.items() if v is not None}, step=0)
    machine_load = MachineLoad().start()  # other processes' CPU share: is tokens_per_s the option's or the machine's?
    train_started, interval_started, interval_tokens = time.perf_counter(), time.perf_counter(), 0
    bar = tqdm(total=cfg.train.max_steps, initial=run.step, disable=not (progress and world.is_main), mininterval=1.0,
               dynamic_ncols=True, desc="train")
    stop = StopRequest().__enter__()  # signal handlers; restored in `finally`
    try:
        while run.step < cfg.train.max_steps:
            terms, grad_norm = run.train_step()
            if summary["first_step_s"] is None:  # job start to first step done: the start-up cost users wait for
                summary["first_step_s"] = round(time.monotonic() - job_started, 3)
            loss, objective = terms["ce"], sum(terms.values())
            interval_tokens += cfg.train.batch_size * cfg.model.context_length
            run.initial_loss = run.initial_loss or objective
            diverged = not math.isfinite(objective) or objective > cfg.train.divergence_factor * run.initial_loss
            last = run.step == cfg.train.max_steps
            if run.step % cfg.train.log_interval == 0 or run.step % eval_every == 0 or last or diverged:
                now = time.perf_counter()
                record = {"step": run.step, "tokens": run.tokens_seen, "train_loss": loss,
                          "lr": run.optimizer.param_groups[0]["lr"], "grad_norm": grad_norm,
                          "tokens_per_s": interval_tokens / max(now - interval_started, 1e-9),
                          "elapsed_s": now - train_started,
                          **{name: value for name, value in terms.items() if name != "ce"},
                          **run.raw_model.diagnostics()}
                interval_started, interval_tokens = now, 0
                if (run.step % eval_every == 0 or last) and not diverged:
                    val_loss = run.evaluate()
                    run.best_val_loss = min(run.best_val_loss, val_loss)
                    record.update(val_loss=val_loss, val_bpb=corpus.bits_per_byte(val_loss))
                metrics.write(record)  # the row before the checkpoint that covers it: a kill in between loses none
                kill_point("after-metrics-row", run.step)
                if "val_loss" in record:
                    run.save_checkpoint()
                    kill_point("after-checkpoint", run.step)
                logger.log(record, step=run.step)
                bar.set_postfix(feedback.progress_postfix(loss, val_loss, record["lr"], record["tokens_per_s"]),
                                refresh=False)
            bar.update(1)
            if diverged:
                summary.update(status="diverged", error=f"training objective {objective} at step {run.step} "
                               f"(initial {run.initial_loss:.3f}, limit x{cfg.train.divergence_factor})")
                break
            if world.any(stop.received is not None):  # every rank stops at the same step
                run.save_checkpoint()
                summary.update(status="interrupted", error=f"{stop.received or 'a signal to another rank'} at step "
                               f"{run.step}; checkpoint saved, "
                               f"re-run the same command to resume (train.resume=auto)")
                break
        else:
            summary["status"] = "completed"
            if val_loss is None:  # resumed a run that had already finished: report its loss again
                val_loss = run.evaluate()
    except KeyboardInterrupt:
        summary.update(status="interrupted", error="interrupted by the user")
        raise
    except Exception as error:
        summary.update(status="failed", error=f"{type(error).__name__}: {error}")
        raise
    finally:
        stop.__exit__()
        bar.close()
        metrics.close()
        wall = time.perf_counter() - train_started
        trained_tokens = run.tokens_seen - (summary["tokens_seen"] or 0)
        summary.update(
            final_val_loss=val_loss, best_val_loss=None if math.isinf(run.best_val_loss) else run.best_val_loss,
            val_bpb=None if val_loss is None else corpus.bits_per_byte(val_loss),
            tokens_seen=run.tokens_seen, steps=run.step, wall_time_s=round(wall, 3),
            tokens_per_s=trained_tokens / wall if wall > 0 else None, **machine_load.shares(),
        )
        if world.is_main:
            if summary["status"] == "completed":
                sample = run.sample()
                feedback.write_samples(run_dir, cfg.train, sample, run.step)
                summary["sample"] = sample
            write_summary(run_dir, summary)
        logger.finish(summary)
        distributed.shutdown()
    return summary
