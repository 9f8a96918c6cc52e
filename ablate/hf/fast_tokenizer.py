"""ablate's tokenizer as a Hugging Face transformers fast tokenizer with the same ids: `hf_tokenizer(tokenizer)`.
transformers is imported only inside (an optional extra)."""
from __future__ import annotations

from typing import Any

from ablate.hf.errors import NotExpressible, require_transformers


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, which byte-level BPE files store tokens in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def hf_tokenizer(tokenizer: Any):
    """ablate's tokenizer (bytes 0..255, the special tokens from 256 in order, then merge k, GPT-2
    pre-tokenization) as a `PreTrainedTokenizerFast` with the same ids: a byte-level BPE whose merges are
    replayed by rank, exactly as ablate applies them, and each special token an added token that is never
    split (the first one, which ends documents, is bos and eos). NotExpressible if two ids spell the same
    bytes."""
    transformers = require_transformers()
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as FastTokenizer

    table = _bytes_to_unicode()
    strings = ["".join(table[b] for b in tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)]
    for token, id in tokenizer.special_ids.items():
        strings[id] = token
    if len(set(strings)) != len(strings):
        raise NotExpressible("tokenizer: two token ids spell the same bytes, which a Hugging Face BPE "
                             "vocabulary (one id per string) cannot hold")
    bpe = models.BPE(vocab={s: i for i, s in enumerate(strings)},
                     merges=[(strings[a], strings[b]) for a, b in tokenizer.merges])
    fast = FastTokenizer(bpe)
    fast.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    fast.decoder = decoders.ByteLevel()
    fast.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in tokenizer.special_tokens])
    end = tokenizer.special_tokens[0]
    return transformers.PreTrainedTokenizerFast(tokenizer_object=fast, bos_token=end, eos_token=end,
                                                model_max_length=None)
