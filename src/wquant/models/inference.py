"""Inference on a quantized model: prepare every layer's kernel up front, and measure what the weights hold.

Kernels are prepared lazily by the first forward of each layer; `prepare_inference` does it for the whole
model at once (loading time rather than first-request time), `release_kernels` gives every canonical field
back, and `weight_memory` reports the bytes the quantized weights hold between forwards next to their exact
bit count, with the kernel each one runs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

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
