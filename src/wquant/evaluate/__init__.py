"""Measure what quantization did to a model: perplexity and KL for causal LMs, embedding fidelity for
encoders.

Every result carries the model-level bits/param it was measured at.
"""

from wquant.evaluate.causal import CausalComparison, PerplexityResult, compare_causal, kl_terms, perplexity
from wquant.evaluate.encoder import (
    EmbeddingComparison,
    compare_encoders,
    embed_texts,
    embedding_fidelity,
    nearest_neighbours,
)
from wquant.evaluate.testbed import (
    TrainConfig,
    TrainResult,
    cached_testbed,
    char_tokenizer,
    heldout_text,
    train_causal_lm,
)

__all__ = [
    "CausalComparison",
    "EmbeddingComparison",
    "PerplexityResult",
    "TrainConfig",
    "TrainResult",
    "cached_testbed",
    "char_tokenizer",
    "heldout_text",
    "train_causal_lm",
    "compare_causal",
    "compare_encoders",
    "embed_texts",
    "embedding_fidelity",
    "kl_terms",
    "nearest_neighbours",
    "perplexity",
]
