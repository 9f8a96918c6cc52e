"""The data pipeline: corpora and their split, tokenizers, BPE training, the verified cache."""
