"""Hugging Face transformers, both ways: `to_hf(model, cfg)` in `ablate.hf.export`, `hf_tokenizer(tokenizer)`
in `ablate.hf.fast_tokenizer`, `from_hf(hf_model_or_path)` in `ablate.hf.imports`, the errors in `ablate.hf.errors`; `python -m ablate.export_hf
RUN_DIR OUT_DIR` writes a trained run as a transformers folder. transformers is an optional extra,
imported only inside these functions."""
from ablate.hf.errors import NotExpressible, TransformersMissing, require_transformers  # noqa: E402
from ablate.hf.export import hf_family, to_hf  # noqa: E402
from ablate.hf.fast_tokenizer import hf_tokenizer  # noqa: E402
from ablate.hf.imports import from_hf  # noqa: E402

__all__ = ["NotExpressible", "TransformersMissing", "from_hf", "hf_family", "hf_tokenizer", "require_transformers",
           "to_hf"]
