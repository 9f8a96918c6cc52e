"""What a run's summary.json holds: one record, shared by the trainer that writes it and the analysis
that reads it (analysis/collect.py takes its columns from here). Torch-free, so a report can be
rebuilt without the training code's dependencies.

Provenance (`git_commit`, `git_dirty`, `torch_version`, `ablate_version`, `device_name`, `dtype`):
every result carries the code and machine that made it, as modded-nanogpt keeps each record's
code beside its log.
"""
from __future__ import annotations

import dataclasses
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, get_type_hints

ROOT = Path(__file__).resolve().parents[2]
STATUSES = ("running", "completed", "diverged", "failed", "interrupted")


@dataclass
class RunSummary:
    status: str = "running"  # one of STATUSES
    error: Optional[str] = None
    final_val_loss: Optional[float] = None  # nats per token, validation split, at the last step
    final_eval_tokens: Optional[int] = None  # the tokens final_val_loss scored (null: train.eval_batches' windows)
    best_val_loss: Optional[float] = None
    val_bpb: Optional[float] = None  # bits per UTF-8 byte: comparable across tokenizers
    unigram_val_loss: Optional[float] = None  # the baseline: predict token frequencies only
    vocab_size: Optional[int] = None
    params_total: Optional[int] = None
    params_non_embedding: Optional[int] = None
    params_active: Optional[int] = None  # what one token uses (MoE)
    flops_per_token: Optional[int] = None  # forward + backward (ablate.accounting)
    d_ff: Optional[int] = None
    tokens_seen: Optional[int] = None
    steps: Optional[int] = None
    wall_time_s: Optional[float] = None
    tokens_per_s: Optional[float] = None
    seed: Optional[int] = None  # the seed whose data order and initialization the run saw
    choices: dict[str, str] = field(default_factory=dict)  # config group -> chosen option
    overrides: list[str] = field(default_factory=list)
    # provenance
    git_commit: Optional[str] = None
    git_dirty: Optional[bool] = None
    torch_version: Optional[str] = None
    ablate_version: Optional[str] = None
    device: Optional[str] = None
    device_name: Optional[str] = None
    dtype: Optional[str] = None
    dtype_reason: Optional[str] = None
    processes: int = 1
    ensemble_members: int = 1  # runs trained together in one batched ensemble (hydra/launcher=batched)
    # start-up and the machine while the run trained
    data_prep_s: Optional[float] = None
    first_step_s: Optional[float] = None
    train_tokens: Optional[int] = None
    val_tokens: Optional[int] = None
    others_cpu_share: Optional[float] = None
    steal_share: Optional[float] = None
    sample: Optional[str] = None  # also in samples.txt

    def update(self, **values: Any) -> None:
        for key, value in values.items():
            if not hasattr(self, key):
                raise AttributeError(f"RunSummary has no field {key!r}")
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = [f.name for f in dataclasses.fields(RunSummary)]
# the fields that hold numbers (int or float, not bool): what a table of runs reads as numeric columns
NUMERIC_FIELDS = [name for name, hint in get_type_hints(RunSummary).items()
                  if hint in (int, float, Optional[int], Optional[float])]


def git_state(root: Path = ROOT) -> tuple[Optional[str], Optional[bool]]:
    """(commit, whether the working tree differs from it) of the code that runs; (None, None) outside git."""
    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), None if status is None else bool(status.strip())


def version_of(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(device: Any = None) -> dict[str, Any]:
    """The code and machine a run is made with (device: a torch.device, for its name)."""
    commit, dirty = git_state()
    name = None
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
    elif device is not None:
        name = cpu_name()
    return {"git_commit": commit, "git_dirty": dirty, "torch_version": version_of("torch"),
            "ablate_version": version_of("ablate"), "device_name": name}


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
