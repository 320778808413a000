"""Encoder damage: how far quantization moves sentence embeddings, and whether retrieval notices.

Cosine is taken between each text's unit-norm embedding under the reference and under the quantized model.
Nearest-neighbour agreement asks, for every text, whether its most similar *other* text is the same under
both models — the failure a search index would actually show.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wquant.errors import ParameterError
from wquant.models.bits import model_bits
from wquant.models.hf import sentence_embeddings
from wquant.progress import progress_bar
from wquant.validation import check_int_range, check_model_output

_NEIGHBOUR_CHUNK = 1024


@dataclass(frozen=True)
class EmbeddingComparison:
    mean_cosine: float
    min_cosine: float
    neighbour_agreement: float  # share of texts whose nearest other text is unchanged
    texts: int
    bits_per_param: float
    reference_bits_per_param: float


def nearest_neighbours(embeddings: torch.Tensor) -> torch.Tensor:
    """Index of each row's most cosine-similar other row (rows are unit-norm), computed in row chunks."""
    n = embeddings.shape[0]
    if n < 2:
        raise ParameterError("nearest neighbours need at least 2 texts")
    out = torch.empty(n, dtype=torch.long)
    for start in range(0, n, _NEIGHBOUR_CHUNK):
        sims = embeddings[start : start + _NEIGHBOUR_CHUNK] @ embeddings.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -torch.inf
        out[start : start + sims.shape[0]] = sims.argmax(dim=1)
    return out


def _embed_stream(
    models: tuple[nn.Module, ...],
    tokenizer: Any,
    texts: Iterable[str],
    *,
    batch_size: int,
    max_length: int,
    total: int | None,
    progress: bool,
    empty_message: str,
) -> list[torch.Tensor]:
    """Embed `texts` (any iterable, read once, batch by batch) with every model; one matrix per model."""
    check_int_range(batch_size, "batch_size", 1)
    parts: list[list[torch.Tensor]] = [[] for _ in models]
    batch: list[str] = []

    def flush() -> None:
        for model, out in zip(models, parts, strict=True):
            embedded = sentence_embeddings(model, tokenizer, batch, batch_size=batch_size, max_length=max_length)
            out.append(check_model_output(embedded, f"{type(model).__name__}'s sentence embeddings"))
        advance(len(batch))
        batch.clear()

    with progress_bar("embeddings", total, enabled=progress) as advance:
        for text in texts:
            batch.append(text)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    if not parts[0]:
        raise ParameterError(empty_message)
    return [torch.cat(out) for out in parts]


def embed_texts(
    model: nn.Module,
    tokenizer: Any,
    texts: Iterable[str],
    *,
    batch_size: int = 32,
    max_length: int = 256,
    total: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Unit-norm sentence embeddings of `texts` (any iterable, consumed batch by batch)."""
    return _embed_stream((model,), tokenizer, texts, batch_size=batch_size, max_length=max_length, total=total,
                         progress=progress, empty_message="no texts to embed; the text source is empty")[0]  # fmt: skip


def embedding_fidelity(
    reference: torch.Tensor, quantized: torch.Tensor, *, bits_per_param: float, reference_bits_per_param: float
) -> EmbeddingComparison:
    """Compare two (texts, dim) unit-norm embedding matrices of the same texts."""
    if reference.shape != quantized.shape or reference.ndim != 2:
        raise ParameterError(f"embeddings must be two matrices of one shape, got {tuple(reference.shape)} and "
                             f"{tuple(quantized.shape)}")  # fmt: skip
    cosine = (reference * quantized).sum(dim=-1)
    n = reference.shape[0]
    agreement = (
        float((nearest_neighbours(reference) == nearest_neighbours(quantized)).double().mean()) if n > 1 else 1.0
    )
    return EmbeddingComparison(
        mean_cosine=float(cosine.double().mean()),
        min_cosine=float(cosine.min()),
        neighbour_agreement=agreement,
        texts=n,
        bits_per_param=bits_per_param,
        reference_bits_per_param=reference_bits_per_param,
    )


def compare_encoders(
    reference: nn.Module,
    quantized: nn.Module,
    tokenizer: Any,
    texts: Iterable[str],
    *,
    batch_size: int = 32,
    max_length: int = 256,
    total: int | None = None,
    progress: bool = False,
) -> EmbeddingComparison:
    """Embed `texts` with both models, batch by batch, and compare the embeddings."""
    ref, quant = _embed_stream((reference, quantized), tokenizer, texts, batch_size=batch_size, max_length=max_length,
                               total=total, progress=progress,
                               empty_message="no texts to compare; the text source is empty")  # fmt: skip
    return embedding_fidelity(
        ref,
        quant,
        bits_per_param=model_bits(quantized).bits_per_param,
        reference_bits_per_param=model_bits(reference).bits_per_param,
    )
