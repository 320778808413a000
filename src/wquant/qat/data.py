"""Training data of QAT runs: LLM-QAT's self-generated text, token windows of a text, encoder sentences.

Every source gives a dict of equal-shape (samples, length) tensors (`input_ids`, plus `attention_mask` and
`token_type_ids` for padded encoder batches), so one seeded index picks a batch whatever the model is.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from wquant.errors import ParameterError
from wquant.progress import progress_bar
from wquant.validation import check_int_range, check_positive

Samples = dict[str, torch.Tensor]


def special_ids(tokenizer: Any) -> tuple[int, ...]:
    """Ids of the tokenizer's special tokens (never drawn as a first token nor sampled)."""
    return tuple(sorted({int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}))


def _vocab_size(model: nn.Module) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, nn.Module) and hasattr(head, "out_features"):
        return int(head.out_features)
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if size is None:
        raise ParameterError(f"cannot tell the vocabulary size of {type(model).__name__}; give a causal LM")
    return int(size)


@torch.inference_mode()
def generate_samples(
    model: nn.Module,
    *,
    samples: int,
    length: int,
    seed: int = 0,
    greedy_tokens: int = 3,
    temperature: float = 1.0,
    exclude_ids: Iterable[int] = (),
    batch_size: int = 16,
    progress: bool = False,
) -> torch.Tensor:
    """LLM-QAT's data-free training text (Liu et al. 2023, §2.1): (samples, length) token ids from the model itself.

    The first token of each sequence is drawn uniformly from the vocabulary (minus `exclude_ids`, the special
    tokens); the next `greedy_tokens` are the model's top-1 prediction and the rest are sampled from its
    softmax at `temperature` — the paper's hybrid, which keeps the starts diverse and the text fluent.
    Excluded ids are never sampled, so every sequence has the full length. One seeded generator draws
    everything in order, so the same model, seed and batch size give the same ids.
    """
    check_int_range(samples, "samples", 1)
    check_int_range(length, "sequence length", 2)
    check_int_range(greedy_tokens, "greedy_tokens", 0)
    check_int_range(batch_size, "batch_size", 1)
    check_positive(temperature, "temperature")
    vocab = _vocab_size(model)
    allowed = torch.ones(vocab, dtype=torch.bool)
    excluded = [i for i in exclude_ids if 0 <= int(i) < vocab]
    allowed[excluded] = False
    choices = allowed.nonzero().squeeze(1)
    if choices.numel() < 2:
        raise ParameterError(f"only {choices.numel()} token(s) of {vocab} may be generated; exclude fewer ids")
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(samples, length, dtype=torch.long)
    out[:, 0] = choices[torch.randint(choices.numel(), (samples,), generator=gen)]
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    was_training = model.training
    model.eval()
    try:
        with progress_bar("generating", samples * (length - 1), enabled=progress) as advance:
            for start in range(0, samples, batch_size):
                rows = slice(start, min(start + batch_size, samples))
                past = None
                for t in range(1, length):
                    result = model(input_ids=out[rows, t - 1 : t], use_cache=True, **{cache_arg: past})
                    logits = getattr(result, "logits", None)
                    if logits is None:
                        raise ParameterError(
                            f"{type(model).__name__} returns no logits: LLM-QAT generates its data with a causal "
                            "LM; train encoders on text instead (method ste or peqa with a text)"
                        )
                    past = getattr(result, cache_arg)
                    logits = logits[:, -1].float().masked_fill(~allowed, float("-inf"))
                    if t <= greedy_tokens:
                        token = logits.argmax(dim=-1)
                    else:
                        probs = torch.softmax(logits / temperature, dim=-1)
                        token = torch.multinomial(probs, 1, generator=gen).squeeze(1)
                    out[rows, t] = token
                    advance(rows.stop - rows.start)
    finally:
        model.train(was_training)
    return out


def token_samples(ids: torch.Tensor) -> Samples:
    """Causal-LM samples from a (samples, length) id tensor."""
    if ids.ndim != 2 or ids.shape[1] < 2:
        raise ParameterError(f"training ids must be (samples, length >= 2), got shape {tuple(ids.shape)}")
    return {"input_ids": ids.to(torch.long)}


def batches_to_samples(batches: Iterable[Any]) -> Samples:
    """Tokenizer batches (dicts) or id tensors, each (batch, length), as one dict of (samples, length) tensors.

    Batches of different lengths are right-padded to the longest with 0 (an attention mask marks real tokens;
    one is made for id tensors when lengths differ).
    """
    parts = [b if isinstance(b, dict) else {"input_ids": torch.as_tensor(b)} for b in batches]
    if not parts:
        raise ParameterError("no training batches given")
    keys = set(parts[0])
    if any(set(p) != keys for p in parts) or "input_ids" not in keys:
        raise ParameterError("training batches must all hold the same fields, input_ids among them")
    longest = max(int(p["input_ids"].shape[-1]) for p in parts)
    ragged = any(int(p["input_ids"].shape[-1]) != longest for p in parts)
    if ragged and "attention_mask" not in keys:
        parts = [{**p, "attention_mask": torch.ones_like(p["input_ids"])} for p in parts]
        keys.add("attention_mask")
    out = {}
    for key in sorted(keys):
        tensors = [torch.as_tensor(p[key]).reshape(-1, p[key].shape[-1]) for p in parts]
        padded = [torch.nn.functional.pad(t, (0, longest - t.shape[1])) for t in tensors]
        out[key] = torch.cat(padded)
    return out


def samples_sha256(samples: Samples) -> str:
    """A fingerprint of the training data (keys, shapes, dtypes and values), stored with run checkpoints."""
    digest = hashlib.sha256()
    for key in sorted(samples):
        t = samples[key].contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def batch_indices(samples: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """The sample indices of training step `step`: a fresh seeded permutation per epoch, last partial batch dropped.

    A pure function of (samples, batch_size, step, seed), so a resumed run draws the batches it would have.
    """
    per_epoch = samples // batch_size
    if per_epoch == 0:
        raise ParameterError(f"{samples} training samples are fewer than one batch of {batch_size}")
    epoch, index = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    order = torch.randperm(samples, generator=gen)
    return order[index * batch_size : (index + 1) * batch_size]
