"""The reference kernel: decode the whole weight with `QuantizedTensor.dequantize()`, then `F.linear`.

It accepts every layout, device and dtype, so it is registered last and serves whatever no fast kernel takes;
the tests hold every fast kernel to what it computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wquant.formats.quantized import QuantizedTensor
from wquant.kernels.registry import RuntimeState


@dataclass(frozen=True)
class ReferenceKernel:
    name: str = "reference"

    def refusal(self, q: QuantizedTensor, dtype: torch.dtype) -> str | None:
        return None

    def prepare(self, q: QuantizedTensor, dtype: torch.dtype) -> RuntimeState:
        return RuntimeState(self, dtype, q)

    def linear(self, x: torch.Tensor, state: RuntimeState, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, state.q.dequantize().to(x.dtype), bias)

    def dequantize(self, state: RuntimeState) -> torch.Tensor:
        return state.q.dequantize()

    def canonical_codes(self, state: RuntimeState) -> torch.Tensor:
        return state.q.packed_codes


REFERENCE = ReferenceKernel()


def reference_linear(q: QuantizedTensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The oracle every kernel is tested against: `F.linear(x, q.dequantize().to(x.dtype), bias)`."""
    return F.linear(x, q.dequantize().to(x.dtype), None if bias is None else bias.to(x.dtype))
