"""Inference on a quantized model: prepare every layer's kernel up front, and measure what the weights hold.

Kernels are prepared lazily by the first forward of each layer; `prepare_inference` does it for the whole
model at once (loading time rather than first-request time), `release_kernels` gives every canonical field
back, and `weight_memory` reports the bytes the quantized weights hold between forwards next to their exact
bit count, with the kernel each one runs; `forward_latency` times models interleaved (medians) and
`ForwardTimer` times the forwards another routine makes (`wquant eval`).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wquant.models.layers import PackedWeight, QuantizedLinear, packed_weights, quantized_modules


@dataclass(frozen=True)
class WeightMemory:
    """Resident bytes of a model's quantized weights (every PackedWeight buffer, kernel state included)."""

    resident_bytes: int
    exact_bits: int  # sum of QuantizedTensor.bits(): what the formats store
    params: int
    kernels: dict[str, int]  # kernel name → weights running it ("—": not prepared)

    @property
    def ratio(self) -> float:
        """Resident bytes over the exact bits / 8 (1.0: nothing held beyond the stored fields)."""
        return self.resident_bytes / (self.exact_bits / 8) if self.exact_bits else float("nan")

    @property
    def resident_bits_per_param(self) -> float:
        return 8 * self.resident_bytes / self.params if self.params else float("nan")


def prepare_inference(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Prepare the kernel of every quantized Linear for inputs of `dtype` (default: the model's float dtype)."""
    if dtype is None:
        floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
        dtype = floats[0] if floats else torch.float32
    seen: set[int] = set()
    for _, module in quantized_modules(model):
        if isinstance(module, QuantizedLinear) and id(module.qweight) not in seen:
            seen.add(id(module.qweight))
            module.qweight.prepare_kernel(dtype)
    return model


def release_kernels(model: nn.Module) -> nn.Module:
    """Drop every kernel's runtime state (canonical fields back in place); the next forward prepares again."""
    for _, weight in packed_weights(model):
        weight.release_kernel()
    return model


def weight_memory(model: nn.Module) -> WeightMemory:
    """What the quantized weights of `model` hold in memory right now, against their exact stored bits."""
    weights: list[PackedWeight] = [w for _, w in packed_weights(model)]
    resident = sum(w.resident_bytes() for w in weights)
    exact = sum(w.bits() for w in weights)
    params = sum(int(torch.Size(w.shape).numel()) for w in weights)
    kernels = Counter(w.kernel or "—" for w in weights)
    return WeightMemory(resident, exact, params, dict(sorted(kernels.items())))


# ------------------------------------------------------------------------------------------------------ latency


@dataclass(frozen=True)
class Latency:
    """Wall times of repeated forwards of one model (seconds); the median is the number to quote."""

    times: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def min_s(self) -> float:
        return min(self.times) if self.times else float("nan")


def token_batch(vocab_size: int, batch: int, tokens: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids (and a full attention mask) of shape (batch, tokens): latency does not depend on the text."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, tokens), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def forward_latency(
    models: dict[str, nn.Module], inputs: dict[str, torch.Tensor], *, repeats: int = 10, warmup: int = 1
) -> dict[str, Latency]:
    """Median-ready wall times of `model(**inputs)` for each model, interleaved (one of each per round).

    Interleaving puts every model under the same background load, so the ratios hold on a shared machine. The
    warm-up rounds prepare each quantized layer's kernel (the first forward), which is not timed.
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(**inputs)
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: Latency(tuple(t)) for name, t in times.items()}


class ForwardTimer:
    """Times every top-level forward of a model while active (hooks; `with ForwardTimer(model) as timer:`)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.times: list[float] = []
        self._start = 0.0
        self._handles: list[Any] = []

    def __enter__(self) -> ForwardTimer:
        def pre(*_: Any) -> None:
            self._start = time.perf_counter()

        def post(*_: Any) -> None:
            self.times.append(time.perf_counter() - self._start)

        self._handles = [self.model.register_forward_pre_hook(pre), self.model.register_forward_hook(post)]
        return self

    def __exit__(self, *_: Any) -> None:
        for handle in self._handles:
            handle.remove()

    @property
    def latency(self) -> Latency:
        return Latency(tuple(self.times))
