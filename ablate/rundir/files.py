"""Writing result files so that a crash, a kill or a full disk never leaves a half-written one.

Every file is written under a temporary name in its own directory and renamed over the target
(atomic on POSIX), the temporary removed on any failure. Files get the permissions of an ordinary
`open()` (0666 minus the umask, so 0644 usually), not mkstemp's 0600: results are meant to be read
by the people one shares a machine with. A full disk becomes `DiskFull`, whose message says so.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """No space left (or quota exceeded) while writing `path`; str() is the user-facing message."""

    def __init__(self, path: Path, detail: str = ""):
        self.path = Path(path)
        super().__init__(errno.ENOSPC, f"the disk holding {self.path.parent} is full (no space left to write "
                                       f"{self.path.name}{'; ' + detail if detail else ''}). Free some space "
                                       f"and re-run the same command")

    def __str__(self) -> str:
        return self.args[1]


def is_disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an exception it was raised from or during, is ENOSPC/EDQUOT.

    torch.save reports a failed write as a RuntimeError raised while handling the OSError."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFull) or (isinstance(error, OSError) and error.errno in NO_SPACE):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextmanager
def atomic_output(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Yield a file to write `path`'s new content into; it replaces `path` only if the block succeeds.

    On any failure the temporary file is removed and `path` keeps its old content; a full disk is
    raised as DiskFull."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 & ~umask, like open()
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if is_disk_full(error) and not isinstance(error, DiskFull):
            raise DiskFull(path) from error
        raise


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    with atomic_output(path) as handle:
        handle.write(payload)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_summary_file(path: Path, summary: dict) -> None:
    """summary.json, atomically. While another error is already ending the run (sys.exc_info), a full disk
    only prints why the summary could not be written: the error that ended the run is the one to report."""
    ending = sys.exc_info()[1]  # the exception being handled by the caller's finally/except, if any
    try:
        atomic_write_bytes(path, (json.dumps(summary, indent=2, default=str) + "\n").encode())
    except DiskFull as error:
        if ending is None:
            raise
        print(f"ablate: could not record status {summary.get('status')!r} in {path}: {error}", file=sys.stderr)
