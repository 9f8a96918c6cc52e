"""Byte-level tokenizers (the `tokenizer` axis): raw bytes, and byte-level BPE.

BPE (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units"),
applied to UTF-8 bytes with GPT-2's regex pre-tokenization (Radford et al. 2019). Ids 0..255
are single bytes, 256 is <|endoftext|>, and merge k gets id 257 + k. Because every byte has an
id and the pre-tokenizer covers every character, encode/decode round-trips any string.

Training follows the CS336 assignment-1 rules: pre-tokens never span documents or special
tokens; the most frequent adjacent pair is merged, ties going to the lexicographically greater
(bytes_of_first, bytes_of_second). Pair counts are updated incrementally (only words holding
the merged pair are touched) and the best pair comes from a lazily invalidated heap.
"""
from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import os
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
import regex

from ablate.files import atomic_write_bytes
from components.knobs import knob
from components.registry import OptionConfig, axis, register

axis("tokenizer", "text to token ids: byte-level BPE or raw bytes", kind="data")


@dataclass
class TokenizerConfig(OptionConfig):
    """Building the option trains a tokenizer on documents: `cfg.tokenizer.build(train_documents)`."""

    def build(self, documents: Sequence[str]) -> Tokenizer:
        return type(self).component.train(documents)

    def cache_key(self) -> str:
        """Names the trained tokenizer in the cache: the option and its settings."""
        values = [str(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "name"]
        return "-".join([self.name, *values])


@dataclass
class BPEConfig(TokenizerConfig):
    vocab_size: int = knob(2048, ge=257, le=2**32, doc="257 byte tokens and <|endoftext|>, plus the merges")

    def build(self, documents: Sequence[str]) -> Tokenizer:
        return BPETokenizer.train(documents, self.vocab_size)

EOT = "<|endoftext|>"
EOT_ID = 256
FIRST_MERGE_ID = 257
FORMAT_VERSION = 1
GPT2_PATTERN = regex.compile(
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
_PARALLEL_MIN_CHARS = 2_000_000  # below this, worker start-up costs more than it saves
_CACHE_LIMIT = 1 << 20  # pre-token -> ids entries kept before the encode cache is reset

Pair = tuple[int, int]


class Tokenizer:
    """Shared machinery: a byte vocabulary plus an ordered list of merges (empty for bytes)."""

    kind: ClassVar[str]
    eot_id: int = EOT_ID

    def __init__(self, merges: Iterable[Sequence[int]] = ()):
        self.merges: list[Pair] = []
        self._vocab: list[bytes] = [bytes([i]) for i in range(256)] + [EOT.encode("utf-8")]
        for a, b in merges:
            new_id = len(self._vocab)
            if not all(isinstance(x, int) and 0 <= x < new_id and x != EOT_ID for x in (a, b)):
                raise ValueError(f"merge {new_id - FIRST_MERGE_ID} ({a}, {b}) refers to an invalid id")
            self.merges.append((a, b))
            self._vocab.append(self._vocab[a] + self._vocab[b])
        self.vocab_size: int = len(self._vocab)
        self._merge_id: dict[Pair, int] = {p: FIRST_MERGE_ID + k for k, p in enumerate(self.merges)}
        self._cache: dict[str, list[int]] = {}

    # -- encoding -------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; each literal "<|endoftext|>" becomes ``eot_id``."""
        ids: list[int] = []
        for i, part in enumerate(text.split(EOT)):
            if i:
                ids.append(EOT_ID)
            ids.extend(self._encode_ordinary(part))
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        """Ids of text holding no special token."""
        if not self.merges:
            return list(text.encode("utf-8"))
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        ids: list[int] = []
        cache = self._cache
        for piece in GPT2_PATTERN.findall(text):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                piece_ids = cache[piece] = self._apply_merges(list(piece.encode("utf-8")))
            ids.extend(piece_ids)
        return ids

    def _apply_merges(self, ids: list[int]) -> list[int]:
        # Lowest merge id first: a merge can only enable later ones, so this equals replaying
        # the training merges in order.
        merge_id = self._merge_id
        while len(ids) > 1:
            best = min(zip(ids, ids[1:]), key=lambda p: merge_id.get(p, 1 << 62))
            if best not in merge_id:
                break
            ids = _merge_word(ids, best, merge_id[best])
        return ids

    def encode_documents(self, docs: Sequence[str]) -> np.ndarray:
        """encode(doc) + [eot_id] for every doc, concatenated (uint16 when the vocab fits)."""
        if isinstance(docs, str):
            raise TypeError("encode_documents takes a sequence of documents, not one string")
        ids: list[int] = []
        for doc in docs:
            ids.extend(self.encode(doc))
            ids.append(EOT_ID)
        dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.uint32
        return np.array(ids, dtype=dtype)

    def decode(self, ids: Iterable[int]) -> str:
        vocab = self._vocab
        ids = [int(i) for i in ids]
        if ids and min(ids) < 0:  # a negative index would silently wrap around the list
            raise ValueError(f"token id {min(ids)} is negative")
        return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, id: int) -> bytes:
        if not 0 <= id < self.vocab_size:
            raise ValueError(f"token id {id} is outside 0..{self.vocab_size - 1}")
        return self._vocab[id]

    # -- persistence ----------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"type": self.kind, "special_tokens": {EOT: EOT_ID}, "merges": [list(m) for m in self.merges]}

    def fingerprint(self) -> str:
        """Short hash of type, specials and merges: equal fingerprints mean equal encodings."""
        blob = json.dumps(self._state(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        """One JSON file, written to a temp file and renamed so readers never see half a file (0644)."""
        state = {"type": self.kind, "version": FORMAT_VERSION, "vocab_size": self.vocab_size}
        state.update(self._state())
        state["fingerprint"] = self.fingerprint()  # checked on load: a corrupted merge list is noticed
        atomic_write_bytes(Path(path), json.dumps(state).encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Read a saved tokenizer; ``Tokenizer.load`` dispatches on the file's "type"."""
        try:
            state = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"tokenizer file {path} is not valid JSON: {e}") from None
        if not isinstance(state, dict):
            raise ValueError(f"tokenizer file {path} does not hold a JSON object")
        kind = state.get("type")
        target = _TYPES.get(kind) if cls is Tokenizer else cls
        if target is None or kind != target.kind:
            want = sorted(_TYPES) if cls is Tokenizer else cls.kind
            raise ValueError(f"tokenizer file {path} has type {kind!r}; expected {want}")
        if state.get("version") != FORMAT_VERSION:
            raise ValueError(f"tokenizer file {path} has version {state.get('version')!r}, "
                             f"this code reads version {FORMAT_VERSION}")
        if state.get("special_tokens") != {EOT: EOT_ID}:
            raise ValueError(f"tokenizer file {path} has special tokens {state.get('special_tokens')!r}")
        merges = state.get("merges", [])
        if not isinstance(merges, list) or not all(isinstance(m, list) and len(m) == 2 for m in merges):
            raise ValueError(f"tokenizer file {path}: 'merges' must be a list of [id_a, id_b] pairs")
        try:
            tok = target._from_merges(merges)
        except ValueError as e:
            raise ValueError(f"tokenizer file {path}: {e}") from None
        if state.get("vocab_size") != tok.vocab_size:
            raise ValueError(f"tokenizer file {path} says vocab_size={state.get('vocab_size')!r} "
                             f"but its merges give {tok.vocab_size}")
        if "fingerprint" in state and state["fingerprint"] != tok.fingerprint():
            raise ValueError(f"tokenizer file {path}: its merges do not match the fingerprint recorded when it "
                             f"was saved (changed since)")
        return tok

    @classmethod
    def _from_merges(cls, merges: list[list[int]]) -> Tokenizer:
        return cls(merges)

    @classmethod
    def train(cls, documents: Sequence[str], vocab_size: int) -> Tokenizer:
        raise NotImplementedError


@register("tokenizer", "byte")
class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255 plus <|endoftext|> = 256: vocab_size is always 257."""

    Config = TokenizerConfig
    kind = "byte"

    def __init__(self) -> None:
        super().__init__(())

    @classmethod
    def _from_merges(cls, merges: list[list[int]]) -> Tokenizer:
        if merges:
            raise ValueError("a byte tokenizer has no merges")
        return cls()

    @classmethod
    def train(cls, documents: Sequence[str], vocab_size: int = 257) -> ByteTokenizer:
        """Nothing to learn: documents are ignored, but vocab_size must be exactly 257."""
        if vocab_size != FIRST_MERGE_ID:
            raise ValueError(f"tokenizer.vocab_size={vocab_size} but the byte tokenizer has "
                             f"exactly {FIRST_MERGE_ID} ids (256 bytes + {EOT})")
        return cls()


@register("tokenizer", "bpe")
class BPETokenizer(Tokenizer):
    """Byte-level BPE; ``vocab_size`` is 257 + number of merges."""

    Config = BPEConfig
    kind = "bpe"

    @classmethod
    def train(cls, documents: Sequence[str], vocab_size: int, *, workers: int | None = None) -> BPETokenizer:
        """Learn up to ``vocab_size - 257`` merges; fewer if the corpus runs out of pairs
        (then the returned ``vocab_size`` is smaller than asked)."""
        if isinstance(documents, str):
            raise TypeError("train takes a sequence of documents, not one string")
        if vocab_size < FIRST_MERGE_ID:
            raise ValueError(f"tokenizer.vocab_size={vocab_size} is too small: byte-level BPE "
                             f"needs at least {FIRST_MERGE_ID} (256 bytes + {EOT})")
        counts = count_pretokens(documents, workers)
        words = [list(piece.encode("utf-8")) for piece in counts]
        return cls(learn_merges(words, list(counts.values()), vocab_size - FIRST_MERGE_ID))


_TYPES: dict[str, type[Tokenizer]] = {"bpe": BPETokenizer, "byte": ByteTokenizer}


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a saved tokenizer of whichever type its JSON "type" field names."""
    return Tokenizer.load(path)


# -- training internals -----------------------------------------------------------------------
def _count_serial(documents: Sequence[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for doc in documents:
        for part in doc.split(EOT):  # special tokens are cut out, so nothing merges across them
            counts.update(GPT2_PATTERN.findall(part))
    return counts


def count_pretokens(documents: Sequence[str], workers: int | None = None) -> Counter[str]:
    """Pre-token frequencies over all documents, each document split on its own."""
    documents = list(documents)
    workers = min(workers or os.cpu_count() or 1, len(documents))
    if workers <= 1 or sum(map(len, documents)) < _PARALLEL_MIN_CHARS:
        return _count_serial(documents)
    chunks = [documents[i::workers] for i in range(workers)]
    try:
        with ProcessPoolExecutor(workers) as pool:
            partials = list(pool.map(_count_serial, chunks))
    except (OSError, BrokenProcessPool):  # no processes allowed here: counting is still correct serially
        return _count_serial(documents)
    total = partials[0]
    for c in partials[1:]:
        total.update(c)
    return total


class _Desc:
    """Reverses ordering so a min-heap yields the lexicographically greater pair first."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[bytes, bytes]):
        self.key = key

    def __lt__(self, other: _Desc) -> bool:
        return self.key > other.key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.key == other.key


def _merge_word(word: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace non-overlapping occurrences of ``pair``, left to right."""
    a, b = pair
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def _merge_word_counting(word: list[int], a: int, b: int, new_id: int, f: int, delta: defaultdict[Pair, int],
                         w: int, where: defaultdict[Pair, set[int]]) -> list[int]:
    """`_merge_word` that also records how the pair counts of word `w` (frequency f) change, touching
    only the pairs around each merge: (left, a) and (b, right) become (left, X) and (X, right), and
    (a, b) goes; two adjacent merges turn (b, a) into (X, X). Pairs it creates index `w` in `where`."""
    out: list[int] = []
    i, n = 0, len(word)
    just_merged = False
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            delta[a, b] -= f
            if out:
                left = out[-1]
                old_left = b if just_merged else left  # the byte pair that sat left of this `a`
                delta[old_left, a] -= f
                delta[left, new_id] += f
                where[left, new_id].add(w)
            out.append(new_id)
            i += 2
            just_merged = True
        else:
            if just_merged:  # the right neighbour of the merge before
                delta[b, word[i]] -= f
                delta[new_id, word[i]] += f
                where[new_id, word[i]].add(w)
            out.append(word[i])
            i += 1
            just_merged = False
    return out


def learn_merges(words: list[list[int]], freqs: list[int], num_merges: int) -> list[Pair]:
    """BPE merges for ``words`` (byte ids) occurring ``freqs`` times each; ``words`` is
    rewritten in place as merges are applied."""
    vocab = [bytes([i]) for i in range(256)] + [EOT.encode("utf-8")]
    counts: defaultdict[Pair, int] = defaultdict(int)
    where: defaultdict[Pair, set[int]] = defaultdict(set)  # pair -> ids of words that held it (a superset)
    for w, (word, f) in enumerate(zip(words, freqs)):
        for p in zip(word, word[1:]):
            counts[p] += f
            where[p].add(w)
    heap = [(-c, _Desc((vocab[a], vocab[b])), (a, b)) for (a, b), c in counts.items()]
    heapq.heapify(heap)
    merges: list[Pair] = []
    while len(merges) < num_merges:
        # Lazy invalidation: every count change pushed a fresh entry, so an entry whose count
        # no longer matches is stale and skipped.
        while heap and counts.get(heap[0][2], 0) != -heap[0][0]:
            heapq.heappop(heap)
        if not heap:
            break
        pair = heapq.heappop(heap)[2]
        a, b = pair
        new_id = len(vocab)
        merges.append(pair)
        vocab.append(vocab[a] + vocab[b])
        delta: defaultdict[Pair, int] = defaultdict(int)
        for w in where.pop(pair):
            word = words[w]
            if a in word and b in word:  # else a stale entry (words keep their index entries): nothing to merge
                words[w] = _merge_word_counting(word, a, b, new_id, freqs[w], delta, w, where)
        for p, d in delta.items():
            if d == 0:
                continue
            c = counts[p] = counts[p] + d
            if c > 0:
                heapq.heappush(heap, (-c, _Desc((vocab[p[0]], vocab[p[1]])), p))
            else:  # 0 exactly: counts are sums of whole-word frequencies
                del counts[p]
                where.pop(p, None)
    return merges
