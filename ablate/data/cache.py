"""What the cache holds, written with checksums and verified every time it is opened, never trusted.

The token cache of one (corpus, tokenizer): train.bin and val.bin (token ids) and meta.json. each file's size must equal the token count and
dtype meta.json records, neither split may be empty, every id must be below the vocabulary size,
and the content must match a checksum recorded when the cache was built. The checksum is BLAKE2b
over the whole file up to 64 MiB, and over 256 evenly spread 64 KiB blocks (plus the size) beyond,
so a run pays at most a 16 MiB read per split for it. A cache that fails any check is rebuilt.

An extracted corpus (a folder of texts): a manifest of their sha256, written after extraction
(`.complete`), against which the files are checked before each use; a mismatch re-extracts.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ablate.errors import DataError
from ablate.rundir.files import atomic_write_bytes

CACHE_HINT = ("set ABLATE_CACHE to a writable directory of your own (e.g. ABLATE_CACHE=$HOME/ablate-cache); "
              "without it the cache is $XDG_CACHE_HOME/ablate, else ~/.cache/ablate")

SPLITS = ("train", "val")
FULL_HASH_LIMIT = 64 << 20
SAMPLED_BLOCKS, BLOCK = 256, 64 << 10
CHECKSUM = "blake2b-sampled/1"



def cache_dir() -> Path:
    """$ABLATE_CACHE (else $XDG_CACHE_HOME/ablate, else ~/.cache/ablate), created; a DataError naming
    ABLATE_CACHE when it cannot be."""
    root = os.environ.get("ABLATE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ablate"
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise DataError(f"the cache path {path} is a file, not a directory; {CACHE_HINT}.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the cache directory {path} ({error.strerror}); {CACHE_HINT}.") from None
    return path


def content_checksum(path: Path, dtype: np.dtype) -> tuple[str, int]:
    """(checksum of the file's bytes, largest token id in the bytes read)."""
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    largest = -1
    with open(path, "rb") as handle:
        if size <= FULL_HASH_LIMIT:
            offsets = range(0, size, BLOCK)
        else:  # block starts aligned to the dtype so every block decodes to whole tokens
            step = (size - BLOCK) / (SAMPLED_BLOCKS - 1)
            offsets = sorted({int(i * step) // dtype.itemsize * dtype.itemsize for i in range(SAMPLED_BLOCKS)})
        for offset in offsets:
            handle.seek(offset)
            block = handle.read(BLOCK)
            digest.update(block)
            usable = len(block) - len(block) % dtype.itemsize
            if usable:
                largest = max(largest, int(np.frombuffer(block[:usable], dtype=dtype).max()))
    return digest.hexdigest(), largest


def write(token_dir: Path, ids: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, Any]:
    """Write both splits and meta.json (last, so a cache without meta.json is never complete)."""
    dtype = ids["train"].dtype
    meta = {**meta, "dtype": str(dtype), "checksum": CHECKSUM}
    for split in SPLITS:
        path = token_dir / f"{split}.bin"
        atomic_write_bytes(path, ids[split].tobytes())
        meta[f"{split}_tokens"] = int(ids[split].size)
        meta[f"{split}_checksum"] = content_checksum(path, dtype)[0]
    atomic_write_bytes(token_dir / "meta.json", json.dumps(meta, indent=2).encode())
    return meta


def problem(token_dir: Path, vocab_size: int) -> str | None:
    """What is wrong with the cache in `token_dir`, in words, or None if it can be trained on."""
    meta_path = token_dir / "meta.json"
    if not meta_path.is_file():
        return "is incomplete (no meta.json)" if token_dir.exists() else "does not exist yet"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        assert dtype.kind == "u"  # token ids: unsigned integers
        counts = {split: int(meta[f"{split}_tokens"]) for split in SPLITS}
        sums = {split: meta[f"{split}_checksum"] for split in SPLITS}
        assert meta["checksum"] == CHECKSUM
    except (ValueError, TypeError, KeyError, AssertionError):
        return "has a meta.json without the token counts, dtype and checksums this version records"
    for split in SPLITS:
        path = token_dir / f"{split}.bin"
        if not path.is_file():
            return f"has no {split}.bin"
        expected, size = counts[split] * dtype.itemsize, path.stat().st_size
        if size != expected:
            how = "truncated" if size < expected else "padded"
            return (f"has a {how} {split}.bin ({size} bytes; meta.json records {counts[split]} {dtype} tokens "
                    f"= {expected} bytes)")
        if size == 0:
            return f"has an empty {split}.bin"
        checksum, largest = content_checksum(path, dtype)
        if largest >= vocab_size:
            return f"has token id {largest} in {split}.bin, beyond the vocabulary of {vocab_size}"
        if checksum != sums[split]:
            return f"has a {split}.bin whose content differs from the checksum recorded when it was built"
    return None


def read_meta(token_dir: Path) -> dict[str, Any]:
    return json.loads((token_dir / "meta.json").read_text(encoding="utf-8"))


def write_manifest(folder: Path, pattern: str) -> None:
    files = {p.name: file_sha256(p) for p in sorted(folder.glob(pattern))}
    atomic_write_bytes(folder / ".complete", json.dumps({"pattern": pattern, "files": files}).encode())


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def extracted_problem(target: Path) -> str | None:
    """What is wrong with an extracted corpus (its files against the sha256 manifest written after
    extraction), or None when it is intact."""
    try:
        manifest = json.loads((target / ".complete").read_text())
        pattern, files = manifest["pattern"], manifest["files"]
        assert isinstance(files, dict) and files
    except (OSError, ValueError, AssertionError, KeyError, TypeError):
        return "is incomplete (no manifest)"
    if {p.name for p in target.glob(pattern)} != set(files):
        return "does not hold exactly the files its manifest lists"
    changed = [name for name, digest in files.items() if file_sha256(target / name) != digest]
    return f"has {len(changed)} file(s) that changed since extraction" if changed else None
