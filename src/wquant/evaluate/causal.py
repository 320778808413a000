"""Causal-LM damage: perplexity and KL divergence to the unquantized model, on the same token windows.

The text is joined, tokenized once, and cut into non-overlapping windows of `window` tokens (a last shorter
window is kept when it has at least 2 tokens). Each window predicts its tokens 2..n, so perplexity is
exp(total NLL / total predictions) — the same as averaging transformers' `labels=input_ids` loss over windows
weighted by their predictions. KL is KL(P_ref ‖ P_quant) per predicted position, averaged over positions.
Top-k KL coarse-grains both distributions to the reference's k most likely tokens plus one "rest" bucket
(always ≤ the full KL); it is what a compact logit cache of k values supports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wquant.data import token_windows
from wquant.errors import ParameterError
from wquant.models.bits import model_bits
from wquant.progress import progress_bar
from wquant.validation import check_int_range, check_model_output


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_nll: float  # nats per predicted token
    predicted_tokens: int
    windows: int
    window: int
    bits_per_param: float


@dataclass(frozen=True)
class CausalComparison:
    """Quantized vs reference on the same windows."""

    reference: PerplexityResult
    quantized: PerplexityResult
    kl: float  # mean KL(P_ref ‖ P_quant), nats per position
    top_k_kl: float  # the same on top-k + rest buckets
    top_k: int
    top1_agreement: float  # share of positions whose most likely next token is unchanged

    @property
    def bits_per_param(self) -> float:
        return self.quantized.bits_per_param


def _check_window(model: nn.Module, window: int) -> None:
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit is not None and window > int(limit):
        raise ParameterError(f"window {window} is longer than the model's {limit} positions; use --window {limit}")


def _batches(windows: list[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    """Equal-length windows stacked batch_size at a time; a shorter tail window is its own batch."""
    full = [w for w in windows if w.numel() == windows[0].numel()]
    rest = windows[len(full) :]
    out = [torch.stack(full[i : i + batch_size]) for i in range(0, len(full), batch_size)]
    return out + [w.unsqueeze(0) for w in rest]


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return check_model_output(model(input_ids=ids).logits[:, :-1].float(), f"{type(model).__name__}'s logits")


def _nll_sum(logits: torch.Tensor, ids: torch.Tensor) -> float:
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"))


def _result(nll: float, count: int, windows: int, window: int, bits: float) -> PerplexityResult:
    return PerplexityResult(math.exp(nll / count), nll / count, count, windows, window, bits)


@torch.inference_mode()
def perplexity(
    model: nn.Module,
    tokenizer: Any,
    text: str,
    *,
    window: int = 256,
    batch_size: int = 8,
    progress: bool = False,
) -> PerplexityResult:
    """Perplexity of `text` under a causal LM (see the module docstring for the windowing)."""
    check_int_range(batch_size, "batch_size", 1)
    _check_window(model, window)
    windows = token_windows(tokenizer, text, window)
    nll, count = 0.0, 0
    with progress_bar("perplexity", len(windows), enabled=progress) as advance:
        for ids in _batches(windows, batch_size):
            nll += _nll_sum(_logits(model, ids), ids)
            count += ids.shape[0] * (ids.shape[1] - 1)
            advance(ids.shape[0])
    return _result(nll, count, len(windows), window, model_bits(model).bits_per_param)


def kl_terms(reference_logits: torch.Tensor, quantized_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, ...]:
    """Per-position (full KL, top-k KL, top-1 agreement) between two (..., vocab) logit tensors."""
    log_p = F.log_softmax(reference_logits.double(), dim=-1)
    log_q = F.log_softmax(quantized_logits.double(), dim=-1)
    full = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    k = min(top_k, log_p.shape[-1])
    top_log_p, index = log_p.topk(k, dim=-1)
    top_log_q = log_q.gather(-1, index)
    tiny = torch.finfo(torch.float64).tiny
    rest_p = (1 - top_log_p.exp().sum(-1)).clamp(min=tiny)
    rest_q = (1 - top_log_q.exp().sum(-1)).clamp(min=tiny)
    top = (top_log_p.exp() * (top_log_p - top_log_q)).sum(-1) + rest_p * (rest_p.log() - rest_q.log())
    agree = (reference_logits.argmax(-1) == quantized_logits.argmax(-1)).double()
    return full.clamp(min=0), top.clamp(min=0), agree


@torch.inference_mode()
def compare_causal(
    reference: nn.Module,
    quantized: nn.Module,
    tokenizer: Any,
    text: str,
    *,
    window: int = 256,
    batch_size: int = 8,
    top_k: int = 10,
    progress: bool = False,
) -> CausalComparison:
    """Perplexity of both models and KL of the quantized model to the reference, window by window."""
    check_int_range(batch_size, "batch_size", 1)
    check_int_range(top_k, "top_k", 1)
    _check_window(reference, window)
    windows = token_windows(tokenizer, text, window)
    nll_ref = nll_q = kl = kl_top = agree = 0.0
    count = 0
    with progress_bar("KL / perplexity", len(windows), enabled=progress) as advance:
        for ids in _batches(windows, batch_size):
            ref_logits, q_logits = _logits(reference, ids), _logits(quantized, ids)
            nll_ref += _nll_sum(ref_logits, ids)
            nll_q += _nll_sum(q_logits, ids)
            for row in range(ids.shape[0]):  # one window at a time bounds the float64 vocab-sized temporaries
                full, top, same = kl_terms(ref_logits[row], q_logits[row], top_k)
                kl, kl_top, agree = (
                    kl + float(full.sum()),
                    kl_top + float(top.sum()),
                    agree + float(same.sum()),
                )
            count += ids.shape[0] * (ids.shape[1] - 1)
            advance(ids.shape[0])
    n = len(windows)
    return CausalComparison(
        reference=_result(nll_ref, count, n, window, model_bits(reference).bits_per_param),
        quantized=_result(nll_q, count, n, window, model_bits(quantized).bits_per_param),
        kl=kl / count,
        top_k_kl=kl_top / count,
        top_k=top_k,
        top1_agreement=agree / count,
    )
