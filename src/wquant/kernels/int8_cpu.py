"""Uniform 8-bit weights with one scale per row (or per tensor) through torch's `_weight_int8pack_mm`.

torch computes y = (x·Vᵀ)·S for int8 V and one scale per output row. A uniform 8-bit grid stores code c for
the value (c + lo/step)·s·step (+ offset): with V = c + d (d = lo/step when that is an integer that keeps V in
int8 — int8 and int8:asym — else −128) the weight is V·S + Z per row, Z = (lo/step − d)·S + offset, and Z ≠ 0
(unsigned grids, zero offsets) adds rowsum(x)·Z. The int8 bytes are the canonical bytes shifted by d modulo
256 — a bijection of the same size — so the kernel holds them *instead of* the canonical codes and shifts back
whenever the canonical field is asked for; decoding reads the shifted bytes through the grid's levels rotated
by d, bit-identical to the reference. Like torch's int4 kernel it is vectorised for bf16 inputs only (float32
runs 40–80× slower than `F.linear` on AVX2 builds), so it takes bf16 inputs of up to `MM_MAX_ROWS` rows and
multiplies larger ones in float32 from the decoded weight.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from wquant.formats.grouping import view_2d
from wquant.formats.quantized import QuantizedTensor
from wquant.kernels.decoding import Grid, cpu_refusal, decode, decoded_scales, grid_levels, linear_from_weight
from wquant.kernels.registry import RuntimeState, register_kernel

DTYPES = (torch.bfloat16,)
MM_MAX_ROWS = 64
#: torch 2.13's kernel reads rows in vectors and crashes (SIGSEGV, no error) on rows of 4, 12, 20, 36, 66, 68, 70,
#: 76 or 100 inputs (multiples of 8 pass); 32 keeps a margin for wider vector units.
ROW_MULTIPLE = 32


def _ops_present() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


@dataclass(frozen=True)
class Int8Data:
    grid: Grid
    shift: int  # V = c + shift (mod 256)
    zero: float  # lo/step − shift: Z = zero·S + offset


@dataclass(frozen=True)
class Int8CpuKernel:
    name: str = "int8-cpu"

    def refusal(self, q: QuantizedTensor, dtype: torch.dtype) -> str | None:
        if (reason := cpu_refusal(q, dtype)) is not None:
            return reason
        if dtype not in DTYPES:
            return f"{dtype} inputs: torch's CPU int8 kernel is vectorised for bfloat16 only"
        if not _ops_present():
            return "torch has no _weight_int8pack_mm"
        if q.spec.coding is not None or q.spec.outliers is not None:
            return "entropy-coded codes or outliers are not int8 rows"
        book = q.codebook()
        if book.step is None or book.code_bits != 8:
            return "not a uniform grid of 8-bit codes"
        if q.spec.scaling.granularity not in ("channel", "tensor"):
            return "torch's int8 kernel takes one scale per row, not per group"
        if view_2d(q.shape)[1] % ROW_MULTIPLE:
            return f"rows of {view_2d(q.shape)[1]} inputs; torch's int8 kernel needs a multiple of {ROW_MULTIPLE}"
        return None

    def prepare(self, q: QuantizedTensor, dtype: torch.dtype) -> RuntimeState:
        grid, levels = grid_levels(q)
        base, size = float(levels[0]), q.codebook().size
        shift = int(base) if base.is_integer() and -128 <= base and base + size - 1 <= 127 else -128
        rows, cols = view_2d(q.shape)
        shifted = torch.add(q.packed_codes, shift % 256)  # uint8 arithmetic wraps: (c + shift) mod 256
        rotated = torch.roll(levels, shift % 256)  # rotated[(c + shift) mod 256] = levels[c]
        data = Int8Data(grid, shift, base - shift)
        return RuntimeState(self, dtype, replace(q, packed_codes=shifted), held={"codes": shifted, "levels": rotated},
                            drops_codes=True, data=data)  # fmt: skip

    def linear(self, x: torch.Tensor, state: RuntimeState, bias: torch.Tensor | None) -> torch.Tensor:
        q, data = state.q, state.data
        rows, cols = view_2d(q.shape)
        flat = x.reshape(-1, cols)
        if x.dtype not in DTYPES or flat.shape[0] > MM_MAX_ROWS or (x.requires_grad and torch.is_grad_enabled()):
            return linear_from_weight(x, self.dequantize(state), bias)
        scales, offsets = decoded_scales(q)
        s = data.grid.scales(scales).reshape(-1).expand(rows)
        weight = q.packed_codes.view(torch.int8).view(rows, cols)
        y = torch.ops.aten._weight_int8pack_mm(flat.contiguous(), weight, s.to(x.dtype).contiguous())
        if data.zero != 0 or offsets is not None:
            z = s * data.zero if offsets is None else s * data.zero + offsets.reshape(-1).expand(rows)
            y = (y.float() + flat.float().sum(dim=1, keepdim=True) * z).to(x.dtype)
        if bias is not None:
            y = y + bias
        return y.view(*x.shape[:-1], rows)

    def dequantize(self, state: RuntimeState) -> torch.Tensor:
        return decode(state.q, state.q.packed_codes, state.data.grid, state.held["levels"])

    def canonical_codes(self, state: RuntimeState) -> torch.Tensor:
        return torch.sub(state.q.packed_codes, state.data.shift % 256)


INT8_CPU = register_kernel(Int8CpuKernel())
