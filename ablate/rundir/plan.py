"""What a training process may do with a run directory, decided before it writes anything there.

    fresh   nothing of a run is there: train from step 0
    branch  nothing of a run is there, and train.branch_from names a run whose trunk (the state where
            its wsd decay began) this longer run of the same configuration continues from
    resume  a checkpoint of the same architecture, data, tokenizer and seed: continue it
    skip    a finished run (completed or diverged) of the same configuration: nothing to do
            (this is how a re-run sweep resumes: its finished jobs are skipped)

and a ConfigError, naming what differs, for everything that would overwrite or mix results: a
finished run of another configuration, a checkpoint of another architecture, corpus, tokenizer or
train.seed, `train.resume=never` on a directory holding results, a damaged or foreign checkpoint.
Only a single run may extend a completed run of the same architecture to more train.max_steps.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ablate.errors import ConfigError
from ablate.rundir.checkpoint import ARCHITECTURE_KEYS, CHECKPOINT, TRUNK, read_checkpoint
from components.knobs import typed

FINISHED = ("completed", "diverged")  # results in their own right: never overwritten
# Keys that change how a run is executed or logged, not what it computes: a re-run that differs only
# in these is the same run.
OPERATIONAL = {"train.threads", "train.resume", "train.compile", "train.device", "logger"}
# Keys a single run may change to continue a completed run (train it longer, log it differently).
CONTINUATION = OPERATIONAL | {"train.max_steps", "train.eval_interval", "train.log_interval", "train.sample_tokens",
                              "train.sample_temperature", "train.sample_top_p", "train.sample_prompt"}
# Keys a branch may set otherwise than the trunk it continues: its length, where its decay begins, logging.
BRANCHABLE = CONTINUATION | {"schedule.decay_fraction", "train.save_trunk", "train.branch_from"}


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def holds_results(run_dir: Path) -> bool:
    """Whether `run_dir` holds anything a run wrote (a summary or a checkpoint)."""
    return (run_dir / "summary.json").exists() or (run_dir / CHECKPOINT).exists()


def differences(saved: dict[str, Any], current: dict[str, Any], ignore: set[str] = frozenset(),
                only: tuple[str, ...] | None = None) -> list[str]:
    """'key: checkpoint X, now Y' for every leaf that differs (groups in `only`, keys not in `ignore`)."""
    found = []
    for group in sorted(set(saved) | set(current)):
        if (only is not None and group not in only) or group in ignore:
            continue
        old, new = saved.get(group, {}), current.get(group, {})
        if not isinstance(old, dict) or not isinstance(new, dict):
            if old != new:
                found.append(f"{group}: checkpoint {old!r}, now {new!r}")
            continue
        for key in sorted(set(old) | set(new)):
            if f"{group}.{key}" not in ignore and old.get(key) != new.get(key):
                found.append(f"{group}.{key}: checkpoint {old.get(key)!r}, now {new.get(key)!r}")
    return found


@dataclass
class RunDirPlan:
    action: str  # fresh | branch | resume | skip
    run_dir: Path
    state: dict[str, Any] | None = None  # the checkpoint to resume (loaded without running code)
    summary: dict[str, Any] | None = None  # the finished run's summary (skip)
    notes: list[str] = field(default_factory=list)

    def check_data(self, corpus) -> None:
        """Refuse to resume on another corpus or tokenizer than the checkpoint was trained on."""
        if self.state is None:
            return
        changed = []
        if self.state["corpus_fingerprint"] != corpus.meta["corpus_fingerprint"]:
            changed.append(f"the corpus (content fingerprint {self.state['corpus_fingerprint']} in the checkpoint, "
                           f"{corpus.meta['corpus_fingerprint']} now: the documents of data.* changed)")
        if self.state["tokenizer_fingerprint"] != corpus.tokenizer.fingerprint():
            changed.append(f"the tokenizer (hash of its merges {self.state['tokenizer_fingerprint']} in the "
                           f"checkpoint, {corpus.tokenizer.fingerprint()} now)")
        if changed:
            where = self.run_dir if self.action != "branch" else f"{self.run_dir}'s train.branch_from"
            raise ConfigError(f"train.resume=auto found a checkpoint in {where} trained on other data: "
                              f"{' and '.join(changed)}. Resuming would mix two datasets in one run. Restore the "
                              f"data it was trained on, or train in a new hydra.run.dir.")


def plan_run_dir(run_dir: Path, cfg: DictConfig, multirun: bool = False) -> RunDirPlan:
    """What training into `run_dir` may do; raises ConfigError when it would lose results."""
    checkpoint, summary = run_dir / CHECKPOINT, read_summary(run_dir)
    status = (summary or {}).get("status")
    if cfg.train.resume == "never" and holds_results(run_dir):
        raise ConfigError(f"train.resume=never, but {run_dir} already holds a run (summary.json or a checkpoint); "
                          f"it will not be overwritten. Choose a new hydra.run.dir, or train.resume=auto to continue it.")
    current = OmegaConf.to_container(cfg, resolve=True)
    if not checkpoint.exists():
        if status in FINISHED:  # a finished run whose checkpoint was removed: its summary is all that is left
            raise ConfigError(f"{run_dir} holds a {status} run (summary.json) without its checkpoint; it will not be "
                              f"overwritten. Train in a new hydra.run.dir.")
        foreign = foreign_files(run_dir)
        if foreign:
            raise ConfigError(f"{run_dir} holds {', '.join(foreign)}, not written by an ablate run; training there "
                              f"would overwrite them. Train in a new or empty hydra.run.dir.")
        return branch_plan(run_dir, cfg, current) if cfg.train.branch_from else RunDirPlan("fresh", run_dir)
    state = read_checkpoint(checkpoint)
    saved = state["config"]
    changed = differences(saved, current, only=ARCHITECTURE_KEYS)
    if saved.get("train", {}).get("seed") != cfg.train.seed:
        changed.append(f"train.seed: checkpoint {saved.get('train', {}).get('seed')!r}, now {cfg.train.seed!r} "
                       f"(the seed fixes the data order the checkpoint has seen)")
    if changed:
        raise ConfigError(f"train.resume=auto found a checkpoint in {run_dir} from a different configuration "
                          f"({'; '.join(changed[:6])}). Resume it with its own settings, or train this "
                          f"configuration in a new hydra.run.dir.")
    finished = status in FINISHED
    if finished and not differences(saved, current, ignore=OPERATIONAL):
        return RunDirPlan("skip", run_dir, state=state, summary=summary)
    # A sweep's job is its own configuration exactly; a single run may continue with more steps or other logging.
    mixed = differences(saved, current, ignore=OPERATIONAL if multirun else CONTINUATION)
    longer = cfg.train.max_steps > state["step"]
    if mixed or (finished and (status != "completed" or not longer)):
        what = f"a {status} run" if finished else "an unfinished run (a checkpoint without a final summary)"
        raise ConfigError(
            f"{run_dir} already holds {what} of a different configuration ({'; '.join(mixed[:6]) or 'train.*'}); "
            f"{'it will not be overwritten' if finished else 'continuing it would mix two configurations in one run'}."
            f" Train this configuration in a new {'hydra.sweep.dir' if multirun else 'hydra.run.dir'}"
            f"{'' if multirun else ', or change only train.max_steps (and logging settings) to continue that run'}.")
    notes = [f"extending the completed run from {state['step']} to {cfg.train.max_steps} steps"] if finished else []
    return RunDirPlan("resume", run_dir, state=state, notes=notes)


def branch_plan(run_dir: Path, cfg: DictConfig, current: dict[str, Any]) -> RunDirPlan:
    """A fresh run that continues another run's trunk: the same configuration but for its length (and so
    where its decay begins) and logging, decaying no earlier than the trunk's step; ConfigError otherwise."""
    key = f"train.branch_from={cfg.train.branch_from}"
    trunk = Path(cfg.train.branch_from) / TRUNK
    if not trunk.is_file():
        raise ConfigError(f"{key}: {trunk} does not exist. A run keeps its trunk only with schedule=wsd and "
                          f"train.save_trunk=true, once it reached the step its decay begins. Nothing was trained.")
    state = read_checkpoint(trunk)
    changed = differences(state["config"], current, ignore=BRANCHABLE)
    if changed:
        raise ConfigError(f"{key}: its trunk was trained with another configuration ({'; '.join(changed[:6])}). A "
                          f"branch continues the same configuration: only train.max_steps, schedule.decay_fraction "
                          f"and logging settings may differ. Nothing was trained.")
    decay_start = getattr(typed(cfg.schedule).build(cfg.train.max_steps), "decay_start", None)
    if decay_start is None or decay_start < state["step"]:
        raise ConfigError(f"{key}: its trunk is the state after {state['step']} steps at the stable rate, but this "
                          f"run ({cfg.schedule.name}, train.max_steps={cfg.train.max_steps}) "
                          f"{'has no stable phase to continue' if decay_start is None else f'decays from step {decay_start}'}"
                          f". Branch with schedule=wsd and a decay that begins at or after step {state['step']}. "
                          f"Nothing was trained.")
    return RunDirPlan("branch", run_dir, state=state, notes=[f"branched from {trunk} at step {state['step']}"])


def foreign_files(run_dir: Path) -> list[str]:
    """Files ablate would overwrite in a fresh run that an ablate run did not write."""
    found = []
    if (run_dir / "summary.json").exists() and "status" not in (read_summary(run_dir) or {}):
        found.append("a summary.json")
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_bytes().split(b"\n")[:-1]:  # complete lines only: a cut last line is repaired
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                assert isinstance(row, dict) and isinstance(row["step"], int)
            except (ValueError, AssertionError, KeyError):
                found.append("a metrics.jsonl")
                break
    if (run_dir / "samples.txt").exists() and (read_summary(run_dir) or {}).get("status") != "completed":
        found.append("a samples.txt")
    return found
