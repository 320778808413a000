"""The table kernel: decode straight from the packed bytes through a per-group look-up table, then `F.linear`.

Every fixed-width layout of up to 16-bit codes on the CPU: NF4, AF4, SF4, IQ4_NL-style `lut:` grids, Lloyd–Max,
cube-root and power grids, ExMy elements (MXFP4/6/8, NVFP4), integer grids, any granularity, rule, scale format
and outliers. It reads the canonical fields only, so it holds nothing beside them but the grid's 2^width
levels (64 bytes for 4-bit codes). Ŵ is bit-identical to `QuantizedTensor.dequantize()` (`decoding.decode`),
so for float32 inputs y is bit-identical to the reference too. bf16/fp16 inputs are multiplied in float32 and
rounded once at the end (on CPUs without native bf16 arithmetic that is ~8× faster than a bf16 `F.linear`),
within the tolerance stated in `docs/inference.md`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wquant.formats.quantized import QuantizedTensor
from wquant.kernels import native
from wquant.kernels.decoding import cpu_refusal, decode, grid_levels, linear_from_weight
from wquant.kernels.registry import RuntimeState, register_kernel


@dataclass(frozen=True)
class TableKernel:
    name: str = "table"

    def refusal(self, q: QuantizedTensor, dtype: torch.dtype) -> str | None:
        if (reason := cpu_refusal(q, dtype)) is not None:
            return reason
        if q.spec.coding is not None:
            return "entropy-coded codes are decoded to their fixed-rate layout first (kernel 'coded')"
        if q.codebook().code_bits > native.MAX_WIDTH:
            return f"{q.codebook().code_bits}-bit codes; the table kernel reads at most {native.MAX_WIDTH}"
        return None

    def prepare(self, q: QuantizedTensor, dtype: torch.dtype) -> RuntimeState:
        grid, levels = grid_levels(q)
        return RuntimeState(self, dtype, q, held={"levels": levels}, data=grid)

    def linear(self, x: torch.Tensor, state: RuntimeState, bias: torch.Tensor | None) -> torch.Tensor:
        return linear_from_weight(x, self.dequantize(state), bias)

    def dequantize(self, state: RuntimeState) -> torch.Tensor:
        return decode(state.q, state.q.packed_codes, state.data, state.held["levels"])

    def canonical_codes(self, state: RuntimeState) -> torch.Tensor:
        return state.q.packed_codes


TABLE = register_kernel(TableKernel())
