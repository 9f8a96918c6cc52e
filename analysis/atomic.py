"""Atomic file writes: a reader (or a second report build) never sees a half-written file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def _write_atomic(path: Path, write: Callable[[Any], None], mode: str) -> None:
    # The temp file lives in the target's directory so os.replace is a same-filesystem rename.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    _write_atomic(path, lambda f: f.write(text), "w")


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically."""
    _write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110), "wb")
