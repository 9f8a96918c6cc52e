"""What a Hugging Face conversion refuses with, in either direction (ablate.hf.export, ablate.hf.imports,
ablate.hf.fast_tokenizer): a config with no exact counterpart, or the optional transformers package missing."""
from __future__ import annotations

INSTALL_HINT = "pip install transformers (or pip install -e '.[dev]')"


class NotExpressible(ValueError):
    """A config (or HF model) that has no exact counterpart on the other side; str() is the message."""


class TransformersMissing(ImportError):
    pass


def require_transformers():
    try:
        import transformers
    except ImportError as error:
        raise TransformersMissing(
            f"converting to or from Hugging Face needs the optional package `transformers`, which is not "
            f"installed ({error}). Install it with: {INSTALL_HINT}.") from None
    return transformers
