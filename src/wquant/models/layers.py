"""Drop-in modules that keep only a quantized weight and rebuild it on forward.

They store the `QuantizedTensor` itself (not a dequantized copy), so memory, bit counts and saved bytes all
describe the same thing; a cache of the dequantized weight is opt-in because it gives the memory back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wquant.errors import ParameterError
from wquant.formats import QuantizedTensor

#: How a replaced module lays out its weight. "transposed" is transformers' Conv1D (GPT-2), whose weight is
#: (in, out); wquant stores it as (out, in) so quantization groups run along the input dimension.
LAYOUTS = ("linear", "transposed", "embedding")


class QuantizedWeight:
    """One stored tensor, shared by every module that uses it (tied weights are quantized once)."""

    def __init__(self, quantized: QuantizedTensor, *, cache: bool = False) -> None:
        self.quantized = quantized
        self.cache = cache
        self._cached: torch.Tensor | None = None

    def dequantize(self, device: torch.device | None = None) -> torch.Tensor:
        """The weight as the format stores it; rebuilt every call unless caching was asked for."""
        if self._cached is not None:
            weight = self._cached
        else:
            weight = self.quantized.dequantize()
            if self.cache:
                self._cached = weight
        return weight if device is None or weight.device == device else weight.to(device)

    def clear_cache(self) -> None:
        self._cached = None


class QuantizedLinear(nn.Module):
    """y = x·Wᵀ + b, W dequantized from its stored format (replaces nn.Linear and transformers' Conv1D)."""

    def __init__(self, weight: QuantizedWeight, bias: nn.Parameter | None, *, layout: str = "linear") -> None:
        super().__init__()
        if layout not in ("linear", "transposed"):
            raise ParameterError(f"QuantizedLinear layout must be 'linear' or 'transposed', got {layout!r}")
        self.stored = weight
        self.layout = layout
        self.out_features, self.in_features = weight.quantized.shape
        self.bias = bias

    @property
    def weight(self) -> torch.Tensor:
        """Read-only dequantized weight in the replaced module's own layout, for code that inspects it."""
        w = self.stored.dequantize()
        return w.t() if self.layout == "transposed" else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.stored.dequantize(x.device), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, "
            f"format={self.stored.quantized.spec.to_string()}"
        )


class QuantizedEmbedding(nn.Module):
    """Row lookup into a dequantized table (replaces nn.Embedding; max_norm is refused before we get here)."""

    def __init__(self, weight: QuantizedWeight, *, padding_idx: int | None = None) -> None:
        super().__init__()
        self.stored = weight
        self.layout = "embedding"
        self.num_embeddings, self.embedding_dim = weight.quantized.shape
        self.padding_idx = padding_idx

    @property
    def weight(self) -> torch.Tensor:
        return self.stored.dequantize()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.stored.dequantize(ids.device), self.padding_idx)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, "
            f"format={self.stored.quantized.spec.to_string()}"
        )


def quantized_modules(model: nn.Module) -> list[tuple[str, QuantizedLinear | QuantizedEmbedding]]:
    """Every (path, module) that holds a quantized weight, tied or shared modules listed under each path."""
    return [
        (name, module)
        for name, module in model.named_modules(remove_duplicate=False)
        if isinstance(module, QuantizedLinear | QuantizedEmbedding)
    ]
