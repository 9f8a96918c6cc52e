"""Tests for ablate/data/tokenizers.py: round trips, hand-derived merges, parity with a naive trainer,
persistence, and the document/special-token boundaries that BPE must not merge across."""
from __future__ import annotations

import json
import random
from collections import Counter
from functools import lru_cache
from itertools import product

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from ablate.data import bpe_training
from ablate.data.tokenizers import EOT, BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer

SMALL_CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox doesn't.\r\n",
    "naïve café déjà vu — 日本語のテキスト 😀😀👍🏽 e\u0301 ñ\tTabs\t\tand   spaces   ",
    "Numbers 12345 and 3.14159, we'll see they're here: I'm sure you've won't.\n\n\n",
    "the the the then there these those 😀😀😀 café café",
]
# Pieces that make hypothesis texts hit learned merges, specials and awkward whitespace.
PIECES = [EOT, "the", " the", " café", "\r\n", "😀", "e\u0301", "   ", "\t", "<|", "|>", "'s", "12"]
any_text = st.lists(st.one_of(st.text(), st.sampled_from(PIECES)), max_size=12).map("".join)


@lru_cache(maxsize=None)
def small_bpe() -> BPETokenizer:
    return BPETokenizer.train(SMALL_CORPUS * 3, 400)


# -- an independent, deliberately naive reference trainer ------------------------------------
NAIVE_PATTERN = regex.compile(r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def naive_pretokens(docs: list[str]) -> Counter[tuple[int, ...]]:
    words: Counter[tuple[int, ...]] = Counter()
    for doc in docs:
        for part in doc.split(EOT):
            for piece in NAIVE_PATTERN.findall(part):
                words[tuple(piece.encode("utf-8"))] += 1
    return words


def naive_merge(word: tuple[int, ...], pair: tuple[int, int], new_id: int) -> tuple[int, ...]:
    out, i = [], 0
    while i < len(word):
        if word[i : i + 2] == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def naive_train(docs: list[str], vocab_size: int) -> list[tuple[int, int]]:
    """Recount every pair from scratch before each merge."""
    vocab = {i: bytes([i]) for i in range(256)} | {256: EOT.encode()}
    words = naive_pretokens(docs)
    merges = []
    for new_id in range(257, vocab_size):
        pairs: Counter[tuple[int, int]] = Counter()
        for word, n in words.items():
            for p in zip(word, word[1:]):
                pairs[p] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], (vocab[p[0]], vocab[p[1]])))
        merges.append(best)
        vocab[new_id] = vocab[best[0]] + vocab[best[1]]
        merged: Counter[tuple[int, ...]] = Counter()
        for word, n in words.items():
            merged[naive_merge(word, best, new_id)] += n
        words = merged
    return merges


def naive_encode(merges: list[tuple[int, int]], text: str) -> list[int]:
    """Replay every merge, in training order, over each pre-token."""
    ids: list[int] = []
    for i, part in enumerate(text.split(EOT)):
        if i:
            ids.append(256)
        for piece in NAIVE_PATTERN.findall(part):
            word = tuple(piece.encode("utf-8"))
            for k, pair in enumerate(merges):
                word = naive_merge(word, pair, 257 + k)
            ids.extend(word)
    return ids


def merge_bytes(tok: Tokenizer) -> list[tuple[bytes, bytes]]:
    return [(tok.token_bytes(a), tok.token_bytes(b)) for a, b in tok.merges]


# -- 1. round trips ---------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(any_text)
def test_bpe_round_trip(text: str) -> None:
    tok = small_bpe()
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(any_text)
def test_byte_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(text)) == text


def test_special_token_and_awkward_strings() -> None:
    tok = small_bpe()
    assert tok.vocab_size == 400 and tok.eot_id == 256
    assert tok.encode(EOT) == [256]
    assert ByteTokenizer().encode("a" + EOT + "b") == [97, 256, 98]
    for s in ["", " ", "\r\n", "  \n \t ", "😀👍🏽", "e\u0301", EOT * 2, "<|endoftext|", "x<|endoftext|>y"]:
        assert tok.decode(tok.encode(s)) == s
    # Learned merges actually fire: the training text takes fewer tokens than bytes.
    assert len(tok.encode(SMALL_CORPUS[0])) < len(SMALL_CORPUS[0].encode()) / 2
    assert tok.decode([0xC3]) == "\ufffd"  # half a UTF-8 character decodes with a replacement
    with pytest.raises(ValueError):
        tok.token_bytes(tok.vocab_size)


# -- 2. hand-derived merges -------------------------------------------------------------------
def test_hand_checked_merges() -> None:
    # Pre-tokens (GPT-2 pattern keeps the leading space):
    #   "low" x1, " low" x4, " lower" x2, " widest" x3, " newest" x6
    # Pair counts: es 9, st 9, we 8, lo 7, ow 7, " l" 6, " n" 6, ne 6, ew 6, " w" 3, wi 3, ...
    #  1. es/st tie at 9      -> (s, t) since b"s" > b"e"
    #  2. (e, st) 9           (es is gone; e-st occurs in widest x3 + newest x6)
    #     now " newest" = ␣ n e w est, so we drops to 2 (lower only), w-est 6
    #  3. lo/ow tie at 7      -> (o, w) since b"o" > b"l"
    #  4. (l, ow) 7
    #  5. tie at 6 among (␣,low) (␣,n) (n,e) (e,w) (w,est) -> (w, est): b"w" is the greatest first
    #  6. tie at 6 among (␣,low) (␣,n) (n,e) (e,west)      -> (n, e)
    #  7. tie at 6 among (␣,low) (␣,ne) (ne,west)          -> (ne, west)
    #  8. tie at 6 between (␣,low) (␣,newest): same first, b"newest" > b"low" -> (␣, newest)
    #  9. (␣, low) 6
    # 10. tie at 3 among (␣,w) (w,i) (i,d) (d,est)         -> (w, i)
    doc = "low low low low low lower lower widest widest widest newest newest newest newest newest newest"
    expected = [
        (b"s", b"t"), (b"e", b"st"), (b"o", b"w"), (b"l", b"ow"), (b"w", b"est"),
        (b"n", b"e"), (b"ne", b"west"), (b" ", b"newest"), (b" ", b"low"), (b"w", b"i"),
    ]
    tok = BPETokenizer.train([doc], 257 + len(expected))
    assert merge_bytes(tok) == expected
    assert tok.encode(" newest lowest") == [257 + 7, 257 + 8, 257 + 1]  # " newest", " low", "est"


# -- 3. parity with the naive trainer ----------------------------------------------------------
def random_corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcde é日😀 .,'\n" if seed % 2 else "ab c\t"  # tiny alphabets force many ties
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300))) for _ in range(rng.randint(1, 6))]


@pytest.mark.parametrize("seed", range(6))
def test_parity_with_naive_trainer_random(seed: int) -> None:
    docs = random_corpus(seed)
    tok = BPETokenizer.train(docs, 380)
    assert tok.merges == naive_train(docs, 380)
    probe = "".join(docs)[:200] + EOT + "abc é😀"
    assert tok.encode(probe) == naive_encode(tok.merges, probe)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(alphabet="aab c'\n1é", max_size=60), min_size=1, max_size=6))
def test_parity_with_naive_trainer_hypothesis(docs: list[str]) -> None:
    tok = BPETokenizer.train(docs, 300)
    assert tok.merges == naive_train(docs, 300)
    assert tok.vocab_size == 257 + len(tok.merges)


def test_parity_with_naive_trainer_on_runs_and_repeats() -> None:
    """Overlapping and adjacent occurrences (aaaa, abab) are where incremental pair counting goes wrong."""
    docs = ["aaaaaaa aaaa aaa aa a", "abababab ababa bab", "aabaabaab xyxyxyx", "zzzzzzzzzzzzzzzz"]
    tok = BPETokenizer.train(docs, 300)
    assert tok.merges == naive_train(docs, 300) and len(tok.merges) > 10


def test_parity_on_small_corpus() -> None:
    assert small_bpe().merges == naive_train(SMALL_CORPUS * 3, 400)


def test_parallel_pretokenization_matches_serial(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpe_training, "_PARALLEL_MIN_CHARS", 0)
    docs = SMALL_CORPUS * 4
    assert bpe_training.count_pretokens(docs, workers=2) == bpe_training._count_serial(docs)


# -- 4. persistence ---------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path) -> None:
    tok = small_bpe()
    path = tmp_path / "sub" / "tok.json"
    tok.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]  # no temp file left behind
    state = json.loads(path.read_text())
    assert state["type"] == "bpe" and state["version"] == 1 and state["vocab_size"] == 400
    assert state["special_tokens"] == {EOT: 256} and len(state["merges"]) == 400 - 257
    text = "".join(SMALL_CORPUS) + EOT + "unseen wörds 😀"
    for loaded in (BPETokenizer.load(path), load_tokenizer(path), Tokenizer.load(path)):
        assert isinstance(loaded, BPETokenizer)
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.fingerprint() == tok.fingerprint()
    byte_path = tmp_path / "byte.json"
    ByteTokenizer().save(byte_path)
    assert isinstance(load_tokenizer(byte_path), ByteTokenizer)
    assert load_tokenizer(byte_path).vocab_size == 257


def test_fingerprint_tracks_content() -> None:
    a, b = small_bpe(), BPETokenizer.train(SMALL_CORPUS, 300)
    assert a.fingerprint() == BPETokenizer(a.merges).fingerprint()
    assert len({a.fingerprint(), b.fingerprint(), ByteTokenizer().fingerprint(), BPETokenizer().fingerprint()}) == 4


@pytest.mark.parametrize(
    "content",
    [
        '{"type": "bpe", "version": 1, "vocab_size": 258, "merges": [[1, 2]',  # truncated
        "[1, 2, 3]",
        '{"type": "wordpiece", "version": 1}',
        '{"type": "bpe", "version": 7, "vocab_size": 257, "special_tokens": {"<|endoftext|>": 256}, "merges": []}',
        '{"type": "bpe", "version": 1, "vocab_size": 258, "special_tokens": {"<|endoftext|>": 256}, "merges": [[1, 999]]}',
        '{"type": "bpe", "version": 1, "vocab_size": 258, "special_tokens": {"<|endoftext|>": 256}, "merges": [[256, 1]]}',
        '{"type": "bpe", "version": 1, "vocab_size": 300, "special_tokens": {"<|endoftext|>": 256}, "merges": [[1, 2]]}',
        '{"type": "bpe", "version": 1, "vocab_size": 258, "special_tokens": {"<|endoftext|>": 256}, "merges": [1]}',
        b"\xff\xfe\x00garbage",
    ],
)
def test_corrupt_file_raises_value_error(tmp_path, content: str | bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(path)


def test_load_refuses_wrong_type(tmp_path) -> None:
    ByteTokenizer().save(tmp_path / "byte.json")
    with pytest.raises(ValueError, match="type 'byte'"):
        BPETokenizer.load(tmp_path / "byte.json")


# -- 5. vocab size checks ---------------------------------------------------------------------
def test_vocab_size_too_small_refused() -> None:
    with pytest.raises(ValueError, match=r"tokenizer\.vocab_size=256.*257"):
        BPETokenizer.train(SMALL_CORPUS, 256)
    with pytest.raises(ValueError, match=r"tokenizer\.vocab_size"):
        ByteTokenizer.train(SMALL_CORPUS, 2048)
    assert ByteTokenizer.train(SMALL_CORPUS, 257).vocab_size == 257


def test_registered() -> None:
    from components.registry import lookup

    assert lookup("tokenizer", "bpe") is BPETokenizer
    assert lookup("tokenizer", "byte") is ByteTokenizer


# -- 6. encode_documents ----------------------------------------------------------------------
def test_encode_documents_one_eot_per_document() -> None:
    tok = BPETokenizer(list(product(range(256), repeat=2))[: 2048 - 257])  # a valid 2048-id vocab
    assert tok.vocab_size == 2048
    docs = ["first doc", "", "second 😀 doc\n", "x"]
    arr = tok.encode_documents(docs)
    assert arr.dtype == np.uint16
    assert int((arr == tok.eot_id).sum()) == len(docs) and arr[-1] == tok.eot_id
    pieces = np.split(arr, np.flatnonzero(arr == tok.eot_id) + 1)[:-1]
    assert [p[:-1].tolist() for p in pieces] == [tok.encode(d) for d in docs]
    assert ByteTokenizer().encode_documents(docs).dtype == np.uint16
    big = BPETokenizer(list(product(range(256), repeat=2))[: 65537 - 257 + 1])
    assert big.vocab_size == 65538 and big.encode_documents(["ab"]).dtype == np.uint32


# -- 7. boundaries ----------------------------------------------------------------------------
def test_no_merge_across_documents_or_special_tokens() -> None:
    # Concatenated, "za" + "bz" would make "a b" as frequent as any pair; kept apart, it never occurs.
    docs = ["za", "bz"] * 50 + ["za" + EOT + "bz"] * 50
    tok = BPETokenizer.train(docs, 300)
    assert set(merge_bytes(tok)) == {(b"z", b"a"), (b"b", b"z")}
    assert tok.vocab_size == 259  # training stopped when no pair was left
    # The special token's own characters are never pre-tokenized, so nothing is learned from it.
    assert BPETokenizer.train([EOT * 20, "x" + EOT + "y"] * 10, 300).merges == []
