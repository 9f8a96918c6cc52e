"""Byte-level tokenizers (the `tokenizer` axis): raw bytes, and byte-level BPE.

BPE (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units"),
applied to UTF-8 bytes with GPT-2's regex pre-tokenization (Radford et al. 2019); trained in
`ablate.data.bpe_training`. Ids 0..255 are single bytes, then the special tokens in the order of
`tokenizer.special_tokens` (default [<|endoftext|>], which is id 256), then merge k. Because every
byte has an id and the pre-tokenizer covers every character, encode/decode round-trips any string.

Special tokens are never split and never merged across: text is cut at each of them before
pre-tokenization, in training and in encoding. The first one ends every document
(`eot_id`). A string that is not in the list, `<|endoftext|>` included, is ordinary text.
`encode_iterable` encodes a stream of text (a file read line by line) in bounded memory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, List, Sequence

import numpy as np

from ablate.data.bpe_training import GPT2_PATTERN, Pair, count_pretokens, learn_merges, merge_word, special_pattern
from ablate.rundir.files import atomic_write_bytes
from components.knobs import knob
from components.registry import OptionConfig, axis, register

axis("tokenizer", "text to token ids: byte-level BPE or raw bytes", kind="data")

EOT = "<|endoftext|>"
EOT_ID = 256  # with the default special tokens
FIRST_MERGE_ID = 257  # with the default special tokens
FORMAT_VERSION = 1
_CACHE_LIMIT = 1 << 20  # pre-token -> ids entries kept before the encode cache is reset
STREAM_BUFFER_CHARS = 1 << 16  # encode_iterable encodes once this much text is pending


@dataclass
class TokenizerConfig(OptionConfig):
    """Building the option trains a tokenizer on documents: `cfg.tokenizer.build(train_documents)`."""

    special_tokens: List[str] = knob(default_factory=lambda: [EOT],
                                     doc="never split, never merged across; ids 256, 257, ...; the first ends "
                                     "every document")

    def build(self, documents: Sequence[str]) -> Tokenizer:
        return type(self).component.train(documents, special_tokens=self.special_tokens)

    def cache_key(self) -> str:
        """Names the trained tokenizer in the cache: the option and its settings (a non-default list of
        special tokens as a short hash of it, which a file name can hold)."""
        values = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "special_tokens":
                if list(value) != [EOT]:  # the default keeps the cache names of earlier versions
                    values.append("st" + hashlib.sha256(json.dumps(list(value)).encode()).hexdigest()[:12])
            elif f.name != "name":
                values.append(str(value))
        return "-".join([self.name, *values])

    def matches(self, tokenizer: Tokenizer) -> bool:
        """Whether a (cached) tokenizer has the special tokens this config asks for."""
        return tokenizer.special_tokens == list(self.special_tokens)


@dataclass
class BPEConfig(TokenizerConfig):
    vocab_size: int = knob(2048, ge=257, le=2**32, doc="256 bytes, the special tokens, then the merges")

    def build(self, documents: Sequence[str]) -> Tokenizer:
        return BPETokenizer.train(documents, self.vocab_size, special_tokens=self.special_tokens)


def special_tokens_problem(cfg) -> str | None:
    """The refusal of a tokenizer.special_tokens list, or None."""
    tokens = list(cfg.tokenizer.special_tokens)
    if not tokens:
        return ("tokenizer.special_tokens=[] is not allowed: the first special token ends every document, so the "
                f"list needs at least one, e.g. [{EOT}].")
    bad = [t for t in tokens if not isinstance(t, str) or not t]
    if bad:
        return f"tokenizer.special_tokens={tokens} is not allowed: each must be a non-empty string."
    if len(set(tokens)) != len(tokens):
        return f"tokenizer.special_tokens={tokens} is not allowed: a token is listed twice."
    return None


class Tokenizer:
    """Shared machinery: a byte vocabulary, the special tokens, then an ordered list of merges (empty for bytes)."""

    kind: ClassVar[str]

    def __init__(self, merges: Iterable[Sequence[int]] = (), special_tokens: Sequence[str] = (EOT,)):
        self.special_tokens: list[str] = list(special_tokens)
        if not self.special_tokens or len(set(self.special_tokens)) != len(self.special_tokens) or \
                not all(isinstance(t, str) and t for t in self.special_tokens):
            raise ValueError(f"special tokens {self.special_tokens}: need one or more distinct non-empty strings")
        self.special_ids = {token: 256 + i for i, token in enumerate(self.special_tokens)}
        self.eot_id: int = 256  # the first special token ends every document
        self.first_merge_id = 256 + len(self.special_tokens)
        self._specials = special_pattern(self.special_tokens)
        self.merges: list[Pair] = []
        self._vocab: list[bytes] = [bytes([i]) for i in range(256)] + [t.encode("utf-8") for t in self.special_tokens]
        for a, b in merges:
            new_id = len(self._vocab)
            if not all(isinstance(x, int) and 0 <= x < new_id and not 256 <= x < self.first_merge_id for x in (a, b)):
                raise ValueError(f"merge {new_id - self.first_merge_id} ({a}, {b}) refers to an invalid id")
            self.merges.append((a, b))
            self._vocab.append(self._vocab[a] + self._vocab[b])
        self.vocab_size: int = len(self._vocab)
        self._merge_id: dict[Pair, int] = {p: self.first_merge_id + k for k, p in enumerate(self.merges)}
        self._cache: dict[str, list[int]] = {}

    # -- encoding -------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; each special token in it becomes its id."""
        if self._specials is None:
            return self._encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for match in self._specials.finditer(text):
            ids.extend(self._encode_ordinary(text[start:match.start()]))
            ids.append(self.special_ids[match.group()])
            start = match.end()
        ids.extend(self._encode_ordinary(text[start:]))
        return ids

    def encode_iterable(self, chunks: Iterable[str], buffer_chars: int = STREAM_BUFFER_CHARS) -> Iterator[int]:
        """The ids `encode("".join(chunks))` gives, yielded as the chunks arrive (e.g. an open text file, read
        line by line, or `iter(lambda: f.read(1 << 20), "")` for a file without line breaks), holding only
        the pending text (at most about buffer_chars plus a chunk) in memory.

        Pending text is encoded up to a point no later text can change: before the last two pre-tokens of
        its final stretch of ordinary text (a pre-token's extent depends on at most the 2 characters after
        it: "'" + "ll"; a later pre-token settles the one before), and before any tail that could still
        become a special token."""
        pending = ""
        for chunk in chunks:
            pending += chunk
            if len(pending) >= buffer_chars:
                ids, pending = self._encode_final_part(pending)
                yield from ids
        yield from self.encode(pending)

    def _encode_final_part(self, text: str) -> tuple[list[int], str]:
        """(ids of the longest prefix of `text` that no continuation can change, the rest of `text`)."""
        limit = len(text)
        for token in self.special_tokens:  # a tail that is the start of a special token waits for the rest
            for k in range(min(len(token) - 1, len(text)), 0, -1):
                if token.startswith(text[-k:]):
                    limit = min(limit, len(text) - k)
                    break
        head = text[:limit]
        last_special = max((m.end() for m in self._specials.finditer(head)), default=0) if self._specials else 0
        # The pre-tokens as found in context: the last ones of a string are cut differently at its end
        # (a trailing "\n\n" is one pre-token, but "\n" + "\n" before a letter), so the settled ones are
        # encoded as they are, not re-split.
        pieces = GPT2_PATTERN.findall(head[last_special:])
        settled = pieces[:-2]
        cut = last_special + sum(map(len, settled))
        return self.encode(text[:last_special]) + self._encode_pieces(settled), text[cut:]

    def _encode_ordinary(self, text: str) -> list[int]:
        """Ids of text holding no special token."""
        if not self.merges:
            return list(text.encode("utf-8"))
        return self._encode_pieces(GPT2_PATTERN.findall(text))

    def _encode_pieces(self, pieces: Iterable[str]) -> list[int]:
        """Ids of pre-tokens, each merged on its own (cached)."""
        if not self.merges:
            return [b for piece in pieces for b in piece.encode("utf-8")]
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        ids: list[int] = []
        cache = self._cache
        for piece in pieces:
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
            ids = merge_word(ids, best, merge_id[best])
        return ids

    def encode_documents(self, docs: Sequence[str]) -> np.ndarray:
        """encode(doc) + [eot_id] for every doc, concatenated (uint16 when the vocab fits)."""
        if isinstance(docs, str):
            raise TypeError("encode_documents takes a sequence of documents, not one string")
        ids: list[int] = []
        for doc in docs:
            ids.extend(self.encode(doc))
            ids.append(self.eot_id)
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
        return {"type": self.kind, "special_tokens": dict(self.special_ids), "merges": [list(m) for m in self.merges]}

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
        specials = state.get("special_tokens")
        if not isinstance(specials, dict) or not specials or \
                sorted(specials.values()) != list(range(256, 256 + len(specials))):
            raise ValueError(f"tokenizer file {path} has special tokens {specials!r}; expected a mapping of "
                             f"tokens to the ids 256, 257, ...")
        special_tokens = sorted(specials, key=specials.get)
        merges = state.get("merges", [])
        if not isinstance(merges, list) or not all(isinstance(m, list) and len(m) == 2 for m in merges):
            raise ValueError(f"tokenizer file {path}: 'merges' must be a list of [id_a, id_b] pairs")
        try:
            tok = target._from_merges(merges, special_tokens)
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
    def _from_merges(cls, merges: list[list[int]], special_tokens: Sequence[str]) -> Tokenizer:
        return cls(merges, special_tokens)

    @classmethod
    def train(cls, documents: Sequence[str], vocab_size: int, special_tokens: Sequence[str] = (EOT,)) -> Tokenizer:
        raise NotImplementedError

    @staticmethod
    def check_config(cfg) -> str | None:
        return special_tokens_problem(cfg)


@register("tokenizer", "byte")
class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255, then the special tokens: vocab_size is 256 + their number (257 by default)."""

    Config = TokenizerConfig
    kind = "byte"

    def __init__(self, special_tokens: Sequence[str] = (EOT,)) -> None:
        super().__init__((), special_tokens)

    @classmethod
    def _from_merges(cls, merges: list[list[int]], special_tokens: Sequence[str]) -> Tokenizer:
        if merges:
            raise ValueError("a byte tokenizer has no merges")
        return cls(special_tokens)

    @classmethod
    def train(cls, documents: Sequence[str], vocab_size: int | None = None,
              special_tokens: Sequence[str] = (EOT,)) -> ByteTokenizer:
        """Nothing to learn: documents are ignored; a vocab_size, if given, must be 256 + the special tokens."""
        size = 256 + len(special_tokens)
        if vocab_size is not None and vocab_size != size:
            raise ValueError(f"tokenizer.vocab_size={vocab_size} but the byte tokenizer has "
                             f"exactly {size} ids (256 bytes + {len(special_tokens)} special tokens)")
        return cls(special_tokens)


@register("tokenizer", "bpe")
class BPETokenizer(Tokenizer):
    """Byte-level BPE; ``vocab_size`` is 256 + the special tokens + the number of merges."""

    Config = BPEConfig
    kind = "bpe"

    @staticmethod
    def check_config(cfg) -> str | None:
        problem = special_tokens_problem(cfg)
        least = 256 + len(cfg.tokenizer.special_tokens)
        if problem is None and cfg.tokenizer.vocab_size < least:
            return (f"tokenizer.vocab_size={cfg.tokenizer.vocab_size} is not allowed with "
                    f"{len(cfg.tokenizer.special_tokens)} special tokens: byte-level BPE needs at least {least} "
                    f"(256 bytes + the special tokens).")
        return problem

    @classmethod
    def train(cls, documents: Sequence[str], vocab_size: int, *, workers: int | None = None,
              special_tokens: Sequence[str] = (EOT,)) -> BPETokenizer:
        """Learn up to ``vocab_size - 256 - len(special_tokens)`` merges; fewer if the corpus runs out of
        pairs (then the returned ``vocab_size`` is smaller than asked)."""
        if isinstance(documents, str):
            raise TypeError("train takes a sequence of documents, not one string")
        first_merge = 256 + len(special_tokens)
        if vocab_size < first_merge:
            raise ValueError(f"tokenizer.vocab_size={vocab_size} is too small: byte-level BPE "
                             f"needs at least {first_merge} (256 bytes + {len(special_tokens)} special tokens)")
        counts = count_pretokens(documents, workers, special_tokens)
        words = [list(piece.encode("utf-8")) for piece in counts]
        return cls(learn_merges(words, list(counts.values()), vocab_size - first_merge, special_tokens), special_tokens)


_TYPES: dict[str, type[Tokenizer]] = {"bpe": BPETokenizer, "byte": ByteTokenizer}


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a saved tokenizer of whichever type its JSON "type" field names."""
    return Tokenizer.load(path)
