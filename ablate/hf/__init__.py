"""Hugging Face transformers, both ways: `to_hf(model, cfg)` and `hf_tokenizer(tokenizer)` in
`ablate.hf.export`, `from_hf(hf_model_or_path)` in `ablate.hf.imports`; `python -m ablate.export_hf
RUN_DIR OUT_DIR` writes a trained run as a transformers folder. transformers is an optional extra,
imported only inside these functions."""
from ablate.hf.export import (NotExpressible, TransformersMissing, hf_family, hf_tokenizer,  # noqa: E402
                              require_transformers, to_hf)
from ablate.hf.imports import from_hf  # noqa: E402

__all__ = ["NotExpressible", "TransformersMissing", "from_hf", "hf_family", "hf_tokenizer", "require_transformers",
           "to_hf"]
