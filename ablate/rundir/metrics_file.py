"""metrics.jsonl: one JSON object per logged step, appended and flushed line by line.

On resume the file is cut back to the rows the checkpoint covers (later rows are logged again as
the resumed run retrains those steps), and a damaged tail is repaired instead of crashing the run:
a partial last line (the process was killed or the disk filled up mid-write) is dropped, and the
run says so. The training loop writes a step's row *before* the checkpoint that covers it, so a
kill between the two writes loses no row: the resumed run recomputes and rewrites it.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ablate.rundir.files import DiskFull, atomic_write_bytes, is_disk_full

KILL_AT = "ABLATE_KILL_AT"  # tests: NAME:STEP makes the process SIGKILL itself at that kill point


def kill_point(name: str, step: int) -> None:
    """Where a test may kill the process for real (ABLATE_KILL_AT=NAME:STEP), to check what survives."""
    if os.environ.get(KILL_AT) == f"{name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def repaired_rows(payload: bytes, keep_through_step: int | None) -> tuple[bytes, list[str]]:
    """The file's content cut to complete rows with step <= keep_through_step, and what was dropped, in words."""
    notes, kept = [], []
    lines = payload.split(b"\n")
    partial = lines.pop()  # after the last newline: empty unless a write was cut short
    if partial:
        notes.append(f"dropped an incomplete last line ({len(partial)} bytes) left by an interrupted write")
    unreadable = later = 0
    for line in lines:
        try:
            row = json.loads(line)
            step = row["step"]
        except (ValueError, TypeError, KeyError):
            unreadable += line.strip() != b""
            continue
        if keep_through_step is not None and step > keep_through_step:
            later += 1
            continue
        kept.append(line + b"\n")
    if unreadable:
        notes.append(f"dropped {unreadable} unreadable line(s)")
    if later:
        notes.append(f"{later} row(s) after the checkpoint's step {keep_through_step} will be logged again")
    return b"".join(kept), notes


class MetricsFile:
    """metrics.jsonl of one run. Only the main process writes it (`enabled`)."""

    def __init__(self, path: Path, truncate_after_step: int | None, enabled: bool = True):
        self.path, self.enabled, self.handle = Path(path), enabled, None
        if not enabled:
            return
        if self.path.exists():
            payload = self.path.read_bytes()
            kept, notes = repaired_rows(payload, truncate_after_step)
            if kept != payload:
                atomic_write_bytes(self.path, kept)
            if notes and any("dropped" in note for note in notes):
                print(f"ablate: repaired {self.path}: {'; '.join(notes)}.", file=sys.stderr)
        self.handle = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()
        except OSError as error:
            if is_disk_full(error):
                raise DiskFull(self.path, "the row of step "
                               f"{record.get('step')} may be cut short; it is repaired on resume") from error
            raise

    def close(self) -> None:
        if self.handle is not None:
            try:
                self.handle.close()
            except OSError:  # a full disk: the unflushed tail is lost and repaired on resume
                pass
            self.handle = None
