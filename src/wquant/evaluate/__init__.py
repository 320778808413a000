"""Measure what quantization did to a model: perplexity and KL for causal LMs, embedding fidelity for
encoders.

Every result carries the model-level bits/param it was measured at.
"""

from wquant.evaluate.causal import (
    CausalComparison,
    PerplexityResult,
    compare_causal,
    kl_terms,
    perplexity,
    token_windows,
)
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
from wquant.evaluate.text import (
    MIN_PARAGRAPH_CHARS,
    is_heading,
    iter_lines,
    iter_paragraphs,
    progress_bar,
    read_paragraphs,
    read_text,
)

__all__ = [
    "MIN_PARAGRAPH_CHARS",
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
    "is_heading",
    "iter_lines",
    "iter_paragraphs",
    "kl_terms",
    "nearest_neighbours",
    "perplexity",
    "progress_bar",
    "read_paragraphs",
    "read_text",
    "token_windows",
]
