"""Token batches from text: evaluation windows, GPTQ-style calibration windows, padded sentence batches."""

from __future__ import annotations

import os
from typing import Any

import torch

from wquant.data.text import read_text
from wquant.errors import ParameterError
from wquant.validation import check_int_range


def token_windows(tokenizer: Any, text: str, window: int) -> list[torch.Tensor]:
    """Tokenize `text` once (no special tokens) and cut it into non-overlapping windows of `window` ids."""
    check_int_range(window, "window", 2)
    if not text.strip():
        raise ParameterError("text is empty; there is nothing to evaluate on")
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if ids.numel() < 2:
        raise ParameterError(f"text gives {ids.numel()} token(s); perplexity needs at least 2")
    full = ids.numel() // window
    windows = list(ids[: full * window].reshape(full, window)) if full else []
    tail = ids[full * window :]
    if tail.numel() >= 2:
        windows.append(tail)
    return windows


def calibration_windows(
    tokenizer: Any, text: str | os.PathLike[str], *, nsamples: int, seqlen: int, seed: int = 0, batch_size: int = 8
) -> list[torch.Tensor]:
    """`nsamples` random windows of `seqlen` token ids from a text (or a text file), GPTQ-style, in batches.

    Raises ParameterError when nsamples ≤ 0 or the text is shorter than one window.
    """
    check_int_range(nsamples, "nsamples", 1)
    check_int_range(seqlen, "seqlen", 1)
    check_int_range(batch_size, "batch_size", 1)
    if isinstance(text, os.PathLike) or (isinstance(text, str) and "\n" not in text and os.path.isfile(text)):
        text = read_text(text)
    ids = tokenizer(str(text), add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if ids.numel() < seqlen:
        raise ParameterError(f"calibration text has {ids.numel()} tokens, shorter than one window of {seqlen}; "
                             "give more text or a smaller --seqlen")  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen + 1, (nsamples,), generator=gen)
    windows = torch.stack([ids[s : s + seqlen] for s in starts.tolist()])
    return list(windows.split(batch_size))


def sentence_batches(
    tokenizer: Any, texts: list[str], *, batch_size: int = 32, max_length: int = 128
) -> list[dict[str, torch.Tensor]]:
    """Tokenizer batches (padded, with attention masks) of short texts, e.g. for encoder calibration."""
    check_int_range(batch_size, "batch_size", 1)
    if not texts:
        raise ParameterError("no calibration texts")
    return [
        dict(
            tokenizer(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
        )  # fmt: skip
        for i in range(0, len(texts), batch_size)
    ]
