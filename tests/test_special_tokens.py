"""tokenizer.special_tokens: ids after the bytes in list order, never split, never merged across, the first
ending documents; strings not in the list (<|endoftext|> too) are text; the streaming encode_iterable equals
encode in bounded memory; saved, cached and converted with the list."""
from __future__ import annotations

import random
import tracemalloc
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ablate.config.validate import ConfigError, check
from ablate.data.tokenizers import EOT, BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer
from components.knobs import typed
from tests.conftest import POEMS, compose

CHAT = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [(POEMS / name).read_text() for name in sorted(p.name for p in POEMS.iterdir())]


@lru_cache(maxsize=None)
def chat_bpe() -> BPETokenizer:
    docs = [doc[:3000] + "<|im_start|>user hello<|im_end|>" for doc in CORPUS]
    return BPETokenizer.train(docs * 2, 500, special_tokens=CHAT)


def test_special_ids_follow_the_bytes_in_list_order_and_merges_follow_them():
    tok = chat_bpe()
    assert [tok.encode(t) for t in CHAT] == [[256], [257], [258]] and tok.eot_id == 256
    assert tok.first_merge_id == 259 and min(tok._merge_id.values()) == 259 and tok.vocab_size == 500
    text = "a<|im_start|>b<|im_end|><|im_end|>c<|endoftext|>"
    ids = tok.encode(text)
    assert [i for i in ids if 256 <= i < 259] == [257, 258, 258, 256] and tok.decode(ids) == text
    assert ByteTokenizer(CHAT).encode("x<|im_end|>") == [120, 258] and ByteTokenizer(CHAT).vocab_size == 259


def test_no_merge_is_learned_across_or_from_a_special_token():
    sep = "<|sep|>"
    docs = ["za", "bz"] * 50 + ["za" + sep + "bz"] * 50
    tok = BPETokenizer.train(docs, 300, special_tokens=[EOT, sep])
    assert {(tok._vocab[a], tok._vocab[b]) for a, b in tok.merges} == {(b"z", b"a"), (b"b", b"z")}
    assert BPETokenizer.train([sep * 20, "x" + sep + "y"] * 10, 300, special_tokens=[EOT, sep]).merges == []
    # the same corpus without <|sep|> in the list: its characters are text, and text is merged
    assert BPETokenizer.train([sep * 20] * 10, 300).merges


def test_endoftext_is_text_when_not_in_the_list():
    tok = BPETokenizer.train([doc[:3000] for doc in CORPUS], 400, special_tokens=["<|doc|>"])
    assert tok.eot_id == 256 and tok.encode("<|doc|>") == [256]
    ids = tok.encode("see <|endoftext|> here")
    assert 256 not in ids and len(ids) > 3 and tok.decode(ids) == "see <|endoftext|> here"
    assert tok.encode(EOT) == tok._encode_ordinary(EOT)
    assert ByteTokenizer(["<|doc|>"]).encode(EOT) == list(EOT.encode())
    assert tok.encode_documents(["a", "b"]).tolist().count(256) == 2  # <|doc|> ends each document


def test_a_longer_special_token_wins_over_one_it_contains():
    tok = ByteTokenizer(["<|a|>", "<|a|><|b|>"])
    assert tok.encode("<|a|><|b|><|a|>x") == [257, 256, 120]


def test_saved_with_the_list_and_fingerprinted_by_it(tmp_path):
    tok = chat_bpe()
    tok.save(tmp_path / "t.json")
    loaded = load_tokenizer(tmp_path / "t.json")
    assert loaded.special_tokens == CHAT and loaded.encode("<|im_end|>x") == tok.encode("<|im_end|>x")
    assert loaded.fingerprint() == tok.fingerprint()
    other = BPETokenizer(tok.merges, ["<|endoftext|>", "<|im_end|>", "<|im_start|>"])
    assert other.fingerprint() != tok.fingerprint()
    assert BPETokenizer().fingerprint() == BPETokenizer([], [EOT]).fingerprint()


# -- streaming ------------------------------------------------------------------------------------------------

PIECES = [*CHAT, "<|", "|>", "<|im_", "end|>", "'", "ll", "'s", " the", "   ", "\n\n", "\t", "12", "café", "😀", "x"]
any_text = st.lists(st.one_of(st.text(max_size=6), st.sampled_from(PIECES)), max_size=30).map("".join)


def chunked(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 12))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


@settings(max_examples=300, deadline=None)
@given(any_text, st.integers(0, 2**32 - 1), st.sampled_from([1, 3, 16]))
def test_encode_iterable_equals_encode_however_the_text_is_cut(text, seed, buffer_chars):
    """buffer_chars=1: a cut is tried after every chunk, at the worst places (inside "'ll", a special, spaces)."""
    tok = chat_bpe()
    chunks = chunked(text, random.Random(seed))
    assert list(tok.encode_iterable(chunks, buffer_chars=buffer_chars)) == tok.encode(text)
    byte = ByteTokenizer(CHAT)
    assert list(byte.encode_iterable(chunks, buffer_chars=buffer_chars)) == byte.encode(text)


def test_encode_iterable_of_a_file_equals_encode_of_its_text(tmp_path):
    tok = chat_bpe()
    text = "".join(CORPUS) + "<|im_start|>x<|im_end|>\n" * 50
    (tmp_path / "big.txt").write_text(text)
    with open(tmp_path / "big.txt") as lines:
        assert list(tok.encode_iterable(lines, buffer_chars=4096)) == tok.encode(text)


def peak_bytes(tok: Tokenizer, n_lines: int) -> tuple[int, int]:
    words = ["the", "quick", "brown", "fox", "<|im_end|>", "jumps", "'ll", "12", "café"]

    def lines():  # text generated on the fly: only the tokenizer's own buffer can hold it
        rng = random.Random(0)
        for _ in range(n_lines):
            yield " ".join(rng.choice(words) for _ in range(12)) + "\n"

    tok.encode("".join(words))  # fill the pre-token cache first
    tracemalloc.start()
    count = sum(1 for _ in tok.encode_iterable(lines(), buffer_chars=8192))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return count, peak


def test_encode_iterable_holds_bounded_memory_whatever_the_length():
    tok = chat_bpe()
    short, peak_short = peak_bytes(tok, 2_000)
    long, peak_long = peak_bytes(tok, 16_000)  # ~1 MB of text, 8x longer
    assert long > 7 * short
    assert peak_long < 1.25 * peak_short + 50_000, (peak_short, peak_long)  # does not grow with the text
    assert peak_long < 1_000_000  # a small multiple of the 8 KB buffer, far below the text's size


# -- configuration --------------------------------------------------------------------------------------------

def test_cache_key_names_the_list_and_keeps_the_default_name():
    default = typed(compose()).tokenizer
    assert default.cache_key() == "bpe-2048"  # as before the list existed: earlier caches stay valid
    chat = typed(compose('tokenizer.special_tokens=["<|endoftext|>","<|im_start|>","<|im_end|>"]')).tokenizer
    reordered = typed(compose('tokenizer.special_tokens=["<|endoftext|>","<|im_end|>","<|im_start|>"]')).tokenizer
    keys = {default.cache_key(), chat.cache_key(), reordered.cache_key()}
    assert len(keys) == 3 and all(key.replace("-", "").isalnum() for key in keys)


def test_a_cached_tokenizer_with_other_special_tokens_is_not_trusted(tmp_path, monkeypatch):
    from ablate.data.corpora import prepare

    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path))
    overrides = ("data=text", f"data.path={POEMS}", "tokenizer.vocab_size=300")
    plain = prepare(compose(*overrides)).tokenizer
    (path,) = (tmp_path / "tokenizers").glob("bpe-300-*.json")
    BPETokenizer(plain.merges[:5], ["<|doc|>"]).save(path)  # a cache file that lies about what it holds
    again = prepare(compose(*overrides)).tokenizer
    assert again.special_tokens == [EOT] and again.fingerprint() == plain.fingerprint()
    docs = prepare(compose(*overrides, 'tokenizer.special_tokens=["<|doc|>"]'))
    assert docs.tokenizer.special_tokens == ["<|doc|>"] and docs.tokenizer.fingerprint() != plain.fingerprint()


@pytest.mark.parametrize("override,words", [
    ("tokenizer.special_tokens=[]", "tokenizer.special_tokens=[] is not allowed"),
    ('tokenizer.special_tokens=["<|a|>","<|a|>"]', "listed twice"),
    ('tokenizer.special_tokens=[""]', "non-empty"),
])
def test_bad_lists_are_refused(override, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        check(compose(override))
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        check(compose("tokenizer=byte", override))


def test_the_vocabulary_must_hold_the_bytes_and_the_special_tokens():
    specials = ",".join(f'"<|s{i}|>"' for i in range(10))
    with pytest.raises(ConfigError, match="at least 266"):
        check(compose("tokenizer.vocab_size=260", f"tokenizer.special_tokens=[{specials}]"))


def test_hugging_face_tokenizer_keeps_every_special_token_whole():
    pytest.importorskip("transformers")
    from ablate.hf import hf_tokenizer

    tok = chat_bpe()
    hf = hf_tokenizer(tok)
    text = CORPUS[0][:2000] + "<|im_start|>user: héllo<|im_end|><|endoftext|>🙂 <|im_"
    assert hf.encode(text) == tok.encode(text) and hf.eos_token_id == 256
    plain = hf_tokenizer(BPETokenizer(tok.merges[:50], ["<|doc|>"]))
    assert plain.encode("a<|endoftext|>b<|doc|>") == BPETokenizer(tok.merges[:50], ["<|doc|>"]).encode(
        "a<|endoftext|>b<|doc|>")
