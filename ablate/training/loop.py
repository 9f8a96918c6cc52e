"""Training one model: `train(cfg, run_dir)` = setup, loop, finish; returns the summary it writes.

    setup   devices and processes, the run directory's plan (fresh, resume or skip), data and
            tokenizer, the model, optimizer and schedule (ablate.training.state.Run), logger, metrics file
    loop    train steps; log, evaluate, checkpoint; stop on divergence or on a stop request
    finish  the sample, summary.json, the logger's last word

Files in run_dir: metrics.jsonl (one line per logged step, written before the checkpoint that
covers it), summary.json (ablate.rundir.summary.RunSummary), checkpoints/latest.pt (resumable),
samples.txt, tokenizer.json.
"""
from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ablate import accounting
from ablate.config import validate
from ablate.data.corpora import TokenizedCorpus, prepare
from ablate.errors import ConfigError
from ablate.machine import distributed
from ablate.machine.distributed import World
from ablate.machine.hardware import resolve_device
from ablate.machine.load import MachineLoad
from ablate.machine.preemption import StopRequest
from ablate.rundir.files import write_summary_file
from ablate.rundir.lock import locked_run_dir
from ablate.rundir.metrics_file import MetricsFile, kill_point
from ablate.rundir.plan import RunDirPlan, plan_run_dir
from ablate.rundir.summary import RunSummary, provenance
from ablate.training import feedback
from ablate.training.evaluation import eval_interval, step_zero_record
from ablate.training.state import Run, lm_loss, loss_terms  # noqa: F401  (lm_loss, loss_terms: re-exported)
from components.registry import config_of


@dataclass
class StepEnd:
    """What the loop does after a training step: log it, evaluate, stop as diverged."""

    terms: dict[str, float]
    grad_norm: float
    objective: float
    diverged: bool
    log: bool
    evaluate: bool
    diagnostics: dict[str, Any] = field(default_factory=dict)  # of the step's forward, read before any evaluation


@dataclass
class Session:
    """Everything the loop and the finish need, made once by `setup`; the loop's per-step bookkeeping
    (`step_done`, `log_step`), also used by ablate.ensemble for each member of a batched ensemble."""

    cfg: DictConfig
    run_dir: Path
    world: World
    corpus: TokenizedCorpus
    run: Run
    summary: RunSummary
    logger: Any
    metrics: MetricsFile
    job_started: float
    progress: bool
    machine_load: MachineLoad = field(default_factory=MachineLoad)
    val_loss: float | None = None  # the last evaluation's (train.eval_batches windows)
    final_val_loss: float | None = None  # a completed run's, over train.final_eval_tokens (evaluate_final)
    trained_from: int = 0  # tokens seen when this process started training (a resume starts later)
    train_started: float = 0.0
    train_ended: float | None = None  # when training stopped (set by a batched ensemble for all its members)
    interval_started: float = 0.0
    interval_tokens: int = 0
    bar: Any = None
    postfix: dict[str, str] = field(default_factory=dict)  # the figures after the bar, as last shown

    def start(self, step_zero_val_loss: float | None = None) -> None:
        """Log the untrained model (a fresh run: every curve starts at the same point) and start the clocks."""
        run = self.run
        if run.step == 0:
            record = step_zero_record(run, self.corpus.bits_per_byte, step_zero_val_loss)
            self.metrics.write(record)
            self.logger.log({k: v for k, v in record.items() if v is not None}, step=0)
        self.machine_load.start()  # other processes' CPU share: is tokens_per_s the option's or the machine's?
        self.train_started = self.interval_started = time.perf_counter()
        self.interval_tokens = 0
        self.bar = tqdm(total=self.cfg.train.max_steps, initial=run.step, mininterval=1.0, dynamic_ncols=True,
                        disable=not (self.progress and self.world.is_main), desc="train")

    def step_done(self, terms: dict[str, float], grad_norm: float) -> StepEnd:
        """Account for the step `run` just took: first-step time, throughput, the divergence check."""
        cfg, run = self.cfg, self.run
        if self.summary.first_step_s is None:  # job start to first step done: the start-up cost users wait for
            self.summary.first_step_s = round(time.monotonic() - self.job_started, 3)
        objective = sum(terms.values())
        self.interval_tokens += cfg.train.batch_size * cfg.model.context_length
        run.initial_loss = run.initial_loss or objective
        diverged = not math.isfinite(objective) or objective > cfg.train.divergence_factor * run.initial_loss
        eval_every, last = eval_interval(cfg.train), run.step == cfg.train.max_steps
        evaluate = run.step % eval_every == 0 or last
        log = run.step % cfg.train.log_interval == 0 or evaluate or diverged
        diagnostics = run.raw_model.diagnostics() if log else {}  # an evaluation's forward would overwrite them
        return StepEnd(terms, grad_norm, objective, diverged, log, evaluate and not diverged, diagnostics)

    def log_step(self, end: StepEnd, val_loss: float | None) -> None:
        """The step's metrics row (with `val_loss` on evaluation steps), the checkpoint after it, the logger,
        the progress bar; a diverged run's summary says so."""
        run, loss = self.run, end.terms["ce"]
        if self.cfg.train.save_trunk and run.step == run.schedule.decay_start:  # before the first decayed step;
            run.save_trunk()  # before latest.pt too: a kill between the two redoes (identically) both
        if end.log:
            now = time.perf_counter()
            record = {"step": run.step, "tokens": run.tokens_seen, "train_loss": loss,
                      "lr": run.optimizer.param_groups[0]["lr"], "grad_norm": end.grad_norm,
                      "tokens_per_s": self.interval_tokens / max(now - self.interval_started, 1e-9),
                      "elapsed_s": now - self.train_started,
                      **{name: value for name, value in end.terms.items() if name != "ce"},
                      **end.diagnostics}
            self.interval_started, self.interval_tokens = now, 0
            if end.evaluate:
                self.val_loss = val_loss
                run.best_val_loss = min(run.best_val_loss, val_loss)
                record.update(val_loss=val_loss, val_bpb=self.corpus.bits_per_byte(val_loss))
            self.metrics.write(record)  # the row before the checkpoint that covers it: a kill loses none
            kill_point("after-metrics-row", run.step)
            if end.evaluate:
                run.save_checkpoint()
                kill_point("after-checkpoint", run.step)
            self.logger.log(record, step=run.step)
            self.postfix = feedback.progress_postfix(loss, self.val_loss, record["lr"], record["tokens_per_s"])
            self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(1)
        if end.diverged:
            self.summary.update(status="diverged", error=f"training objective {end.objective} at step {run.step} "
                                f"(initial {run.initial_loss:.3f}, limit x{self.cfg.train.divergence_factor})")

    def interrupt(self, reason: str) -> None:
        """Checkpoint and mark the run interrupted (a stop request between two steps)."""
        self.run.save_checkpoint()
        self.summary.update(status="interrupted", error=f"{reason} at step {self.run.step}; checkpoint saved, "
                            f"re-run the same command to resume (train.resume=auto)")

    def complete(self) -> None:
        self.summary.status = "completed"
        if self.val_loss is None:  # resumed a run that had already finished: report its loss again
            self.val_loss = self.run.evaluate()
        self.final_val_loss = self.run.evaluate_final()
        if self.postfix:  # the bar ends on the number the run reports, not the last small evaluation
            self.bar.set_postfix({**self.postfix, "val": f"{self.final_val_loss:.3f}"}, refresh=False)


@locked_run_dir  # one process per run directory (ablate.rundir.lock)
def train(cfg: DictConfig, run_dir: Path, *, choices: dict[str, str] | None = None,
          overrides: list[str] | None = None, group: str | None = None, progress: bool = True,
          plan: RunDirPlan | None = None) -> dict[str, Any]:
    """Train one model as `cfg` says, writing the run's files into `run_dir`; returns the summary.

    `plan`: the run directory's plan when the caller (ablate.cli.job) already validated `cfg` and planned
    the directory before writing .hydra/; without one, `train` does both itself. `group`: the W&B group;
    for a job of a sweep, the sweep's directory, where its jobs record their one shared `auto` precision."""
    job_started = feedback.take_job_start()
    session = setup(cfg, Path(run_dir), plan, choices or {}, overrides or [], group, progress, job_started)
    if isinstance(session, dict):  # the directory already holds this finished run
        return session
    with StopRequest() as stop:
        try:
            with recording_failure([session]):
                loop(session, stop)
        finally:
            finish(session)
    return session.summary.to_dict()


@contextmanager
def recording_failure(sessions: list[Session]) -> Iterator[None]:
    """An exception out of training marks every session still running `interrupted` (Ctrl-C) or
    `failed` (with the error) before it propagates, so each summary.json says how its run ended."""
    try:
        yield
    except KeyboardInterrupt:
        mark_running(sessions, "interrupted", "interrupted by the user")
        raise
    except Exception as error:
        mark_running(sessions, "failed", f"{type(error).__name__}: {error}")
        raise


def mark_running(sessions: list[Session], status: str, error: str) -> None:
    for session in sessions:
        if session.summary.status == "running":
            session.summary.update(status=status, error=error)


def setup(cfg: DictConfig, run_dir: Path, plan: RunDirPlan | None, choices: dict[str, str], overrides: list[str],
          group: str | None, progress: bool, job_started: float) -> Session | dict[str, Any]:
    if plan is None:
        validate.check(cfg)
    device = resolve_device(cfg.train.device)
    world = distributed.init(device.type)
    if world.size > 1:
        device = torch.device("cuda", world.local_rank) if device.type == "cuda" else device
        run_dir = adopt_main_run_dir(world, run_dir)
        check_divisible_batch(cfg, world)
    if plan is None or world.size > 1:  # fresh, resume or skip; refuses what would lose results
        plan = plan_run_dir(run_dir, cfg)
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
    # a sweep's jobs (group = its directory) share one `auto` precision: variants compared in one dtype
    sweep_dir = Path(group) if group is not None and Path(group).is_dir() else None
    run = Run(cfg, run_dir, corpus, device, world, sweep_dir)
    if plan.action in ("resume", "branch"):  # the plan read the checkpoint (without running code) and checked it
        run.load_checkpoint(plan.state)
        opening = [f"resumed from {run.checkpoint_path} at step {run.step}"] if plan.action == "resume" else []
        print("; ".join(opening + plan.notes))  # a branch: its note says from which trunk, at which step
    if cfg.train.compile:
        run.model = torch.compile(run.model)
    summary = RunSummary(
        unigram_val_loss=corpus.meta["unigram_val_loss"], **accounting.count(cfg, corpus.tokenizer.vocab_size),
        tokens_seen=run.tokens_seen, steps=run.step, seed=cfg.train.seed, choices=dict(choices),
        overrides=list(overrides), device=str(device), **provenance(device), dtype=run.precision.name,
        dtype_reason=run.precision.reason, processes=world.size, data_prep_s=round(data_prep_s, 3),
        train_tokens=corpus.meta["train_tokens"], val_tokens=corpus.meta["val_tokens"])
    logger_cfg = run.options.logger if world.is_main else config_of("logger", "none")()
    logger = logger_cfg.build(run_dir=run_dir, group=group or "single-runs",
                              run_name=",".join(o for o in overrides if not o.startswith("hydra")) or "default",
                              tags=[f"{k}={v}" for k, v in sorted(choices.items())],
                              config=OmegaConf.to_container(cfg, resolve=True))
    metrics = MetricsFile(run_dir / "metrics.jsonl", truncate_after_step=run.step, enabled=world.is_main)
    return Session(cfg, run_dir, world, corpus, run, summary, logger, metrics, job_started, progress,
                   trained_from=run.tokens_seen)


def loop(session: Session, stop: StopRequest) -> None:
    """Train until train.max_steps, divergence or a stop request; sets the summary's status."""
    run = session.run
    session.start()
    with session.bar:
        while run.step < session.cfg.train.max_steps:
            terms, grad_norm = run.train_step()
            end = session.step_done(terms, grad_norm)
            session.log_step(end, run.evaluate() if end.evaluate else None)
            if end.diverged:
                return
            if session.world.any(stop.received is not None):  # every rank stops at the same step
                session.interrupt(stop.received or "a signal to another rank")
                return
        session.complete()


def finish(session: Session) -> None:
    """Fill the summary from the run, write the sample and summary.json, close the files and logger."""
    run, summary = session.run, session.summary
    val_loss = session.final_val_loss if session.final_val_loss is not None else session.val_loss
    windows = run.final_eval_starts if session.final_val_loss is not None else None
    session.metrics.close()
    ended = session.train_ended or time.perf_counter()
    wall = ended - session.train_started if session.train_started else 0.0
    trained_tokens = run.tokens_seen - session.trained_from
    summary.update(
        final_val_loss=val_loss, best_val_loss=None if math.isinf(run.best_val_loss) else run.best_val_loss,
        val_bpb=None if val_loss is None else session.corpus.bits_per_byte(val_loss),
        final_eval_tokens=None if windows is None else sum(map(len, windows)) * session.cfg.model.context_length,
        tokens_seen=run.tokens_seen, steps=run.step, wall_time_s=round(wall, 3),
        tokens_per_s=trained_tokens / wall if wall > 0 else None, **session.machine_load.shares())
    try:
        if session.world.is_main:
            if summary.status == "completed":
                summary.sample = run.sample()
                feedback.write_samples(session.run_dir, session.cfg.train, summary.sample, run.step)
            write_summary(session.run_dir, summary.to_dict())
        session.logger.finish(summary.to_dict())
    finally:
        distributed.shutdown()


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
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} cannot be split over {world.size} processes x "
            f"train.grad_accum={cfg.train.grad_accum} micro-steps: it must be a multiple of {per_step}.")


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_summary_file(run_dir / "summary.json", summary)
