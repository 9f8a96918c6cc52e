"""Training byte-level BPE (Sennrich et al. 2016) under the CS336 assignment-1 rules: pre-tokens (GPT-2's
regex, Radford et al. 2019) never span documents or special tokens; the most frequent adjacent pair is
merged, ties going to the lexicographically greater (bytes_of_first, bytes_of_second). Pair counts are
updated incrementally (only words holding the merged pair are touched) and the best pair comes from a
lazily invalidated heap. `ablate.data.tokenizers` turns the merges into a tokenizer.
"""
from __future__ import annotations

import heapq
import os
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Sequence

import regex

GPT2_PATTERN = regex.compile(
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
_PARALLEL_MIN_CHARS = 2_000_000  # below this, worker start-up costs more than it saves

Pair = tuple[int, int]


def special_pattern(special_tokens: Sequence[str]) -> regex.Pattern | None:
    """A regex matching any of the special tokens, longer ones first (so a token that contains another
    wins); None for no special tokens."""
    if not special_tokens:
        return None
    return regex.compile("|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True)))


def _count_serial(documents: Sequence[str], special_tokens: Sequence[str] = ("<|endoftext|>",)) -> Counter[str]:
    counts: Counter[str] = Counter()
    specials = special_pattern(special_tokens)
    for doc in documents:
        for part in specials.split(doc) if specials else [doc]:  # special tokens cut out: nothing merges across
            counts.update(GPT2_PATTERN.findall(part))
    return counts


def count_pretokens(documents: Sequence[str], workers: int | None = None,
                    special_tokens: Sequence[str] = ("<|endoftext|>",)) -> Counter[str]:
    """Pre-token frequencies over all documents, each document split on its own and at every special token."""
    documents = list(documents)
    special_tokens = list(special_tokens)
    workers = min(workers or os.cpu_count() or 1, len(documents))
    if workers <= 1 or sum(map(len, documents)) < _PARALLEL_MIN_CHARS:
        return _count_serial(documents, special_tokens)
    chunks = [documents[i::workers] for i in range(workers)]
    try:
        with ProcessPoolExecutor(workers) as pool:
            partials = list(pool.map(_count_serial, chunks, [special_tokens] * workers))
    except (OSError, BrokenProcessPool):  # no processes allowed here: counting is still correct serially
        return _count_serial(documents, special_tokens)
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


def merge_word(word: list[int], pair: Pair, new_id: int) -> list[int]:
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
    """`merge_word` that also records how the pair counts of word `w` (frequency f) change, touching
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


def learn_merges(words: list[list[int]], freqs: list[int], num_merges: int,
                 special_tokens: Sequence[str] = ("<|endoftext|>",)) -> list[Pair]:
    """BPE merges for ``words`` (byte ids) occurring ``freqs`` times each; ``words`` is
    rewritten in place as merges are applied. Merge k gets id 256 + len(special_tokens) + k."""
    vocab = [bytes([i]) for i in range(256)] + [s.encode("utf-8") for s in special_tokens]
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
