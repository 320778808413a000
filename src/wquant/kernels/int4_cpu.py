"""Uniform 4-bit grouped weights through torch's own CPU int4 kernel (`_weight_int4pack_mm_for_cpu`).

torch computes y = x·Wᵀ with w = (q − 8)·scale + zero per group of 32/64/128/256 inputs, from codes in a tile
layout of its own: rows in blocks of BLOCK_N (32 under AVX2, 64 under AVX512), each block stored k-major, byte
j of a row k holding rows j and j + BLOCK_N/2 as its low and high nibble; a last block of fewer rows pairs
neighbouring rows. The tile has exactly as many bytes as the canonical field, and the map between the two is a
permutation of nibbles, so while this kernel is prepared the tile is held *instead of* the canonical codes
(`drops_codes`): no second copy, and `canonical_codes` inverts the permutation whenever the canonical field is
asked for (state_dict, `.quantized`, checkpoints). wquant packs the tile itself with a few reshapes and checks
its model of the layout against torch's `_convert_weight_to_int4pack_for_cpu` once per process on probe shapes
covering full and partial blocks; if the op is missing or the layout differs the kernel declines and the table
kernel runs instead.

Scale and zero per group (w = (c + lo/step)·s·step + offset = (c − 8)·S + Z) are built from the canonical
scale/offset fields at each call — a (groups × rows × 2) tensor in the input dtype, a few small ops — rather than
cached, because a cached copy would add 0.25–0.5 bit per weight at group 128. torch's kernel vectorises bf16
only: float32 and fp16 inputs run 40–140× slower than `F.linear` on AVX2 builds, so this kernel takes bf16
inputs (others go to the table kernel), and above `MM_MAX_ROWS` rows it decodes the tile and multiplies in
float32, which is faster than torch's kernel there. Its result is within the bf16 tolerance in
`docs/inference.md` (scale and zero are rounded to bf16; the product accumulates in float32).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

import torch

from wquant.formats.grouping import view_2d
from wquant.formats.quantized import QuantizedTensor
from wquant.kernels.decoding import Grid, cpu_refusal, decode, decoded_scales, grid_levels, linear_from_weight
from wquant.kernels.registry import RuntimeState, register_kernel

GROUP_SIZES = (32, 64, 128, 256)
#: torch's int4 CPU kernel is vectorised for these input dtypes only (measured: docs/inference.md).
DTYPES = (torch.bfloat16,)
#: Inputs with more rows than this decode the tile and run a float32 GEMM (faster than torch's kernel there).
MM_MAX_ROWS = 64


def _ops_present() -> bool:
    aten = torch.ops.aten
    return hasattr(aten, "_convert_weight_to_int4pack_for_cpu") and hasattr(aten, "_weight_int4pack_mm_for_cpu")


def _nibbles(canonical: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Canonical packed bytes (element 2j low nibble of byte j) → (rows, cols) uint8 codes."""
    packed = canonical[: rows * cols // 2].view(rows, cols // 2)
    return torch.stack([packed & 15, packed >> 4], dim=-1).view(rows, cols)


def _pack_pairs(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return lo | (hi << 4)


def to_tile(canonical: torch.Tensor, rows: int, cols: int, block_n: int) -> torch.Tensor:
    """The tile layout (1-D uint8, rows·cols/2 bytes) of canonical 4-bit codes; see the module docstring."""
    codes = _nibbles(canonical, rows, cols)
    full, half = rows // block_n * block_n, block_n // 2
    parts = []
    if full:
        blocks = codes[:full].view(-1, block_n, cols)
        parts.append(_pack_pairs(blocks[:, :half], blocks[:, half:]).transpose(1, 2).reshape(-1))
    if rows > full:
        tail = codes[full:]
        parts.append(_pack_pairs(tail[0::2], tail[1::2]).t().reshape(-1))
    return torch.cat(parts) if len(parts) > 1 else parts[0].contiguous()


def from_tile(tile: torch.Tensor, rows: int, cols: int, block_n: int) -> torch.Tensor:
    """The canonical packed codes field (1-D uint8) of a tile: the inverse of `to_tile`."""
    full, half = rows // block_n * block_n, block_n // 2
    codes = torch.empty(rows, cols, dtype=torch.uint8)
    if full:
        packed = tile[: full * cols // 2].view(-1, cols, half).transpose(1, 2)  # (blocks, half, cols)
        blocks = codes[:full].view(-1, block_n, cols)
        blocks[:, :half] = packed & 15
        blocks[:, half:] = packed >> 4
    if rows > full:
        packed = tile[full * cols // 2 :].view(cols, (rows - full) // 2).t()
        codes[full::2] = packed & 15
        codes[full + 1 :: 2] = packed >> 4
    pairs = codes.view(rows, cols // 2, 2)
    return _pack_pairs(pairs[..., 0], pairs[..., 1]).reshape(-1)


@cache
def tile_block() -> int | None:
    """BLOCK_N of torch's int4 tile layout on this CPU, confirmed against torch's own packer; None if unknown."""
    if not _ops_present():
        return None
    gen = torch.Generator().manual_seed(0)
    for block_n in (32, 64, 16):
        shapes = [block_n, 2 * block_n + 16, *(block_n + tail for tail in range(16, block_n, 16))]
        try:
            for rows in shapes:
                codes = torch.randint(0, 16, (rows, 64), generator=gen, dtype=torch.int32)
                canonical = _pack_pairs(codes[:, 0::2], codes[:, 1::2]).to(torch.uint8).reshape(-1)
                theirs = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1).reshape(-1)
                if not torch.equal(to_tile(canonical, rows, 64, block_n), theirs):
                    break
                if not torch.equal(from_tile(theirs, rows, 64, block_n), canonical):
                    break
            else:
                return block_n
        except RuntimeError:
            return None
    return None


@dataclass(frozen=True)
class Int4Data:
    grid: Grid
    block_n: int
    group: int
    base: float  # lo/step as the reference adds it (the level of code 0 in grid units)


def scale_zeros(q: QuantizedTensor, data: Int4Data, dtype: torch.dtype) -> torch.Tensor:
    """torch's (groups, rows, 2) scale-and-zero tensor: w = (c − 8)·S + Z with S = s·step, Z = (8 + lo/step)·S + o."""
    scales, offsets = decoded_scales(q)
    s = data.grid.scales(scales)
    z = s * (8.0 + data.base)
    if offsets is not None:
        z = z + offsets
    return torch.stack([s, z], dim=-1).transpose(0, 1).to(dtype).contiguous()


@dataclass(frozen=True)
class Int4CpuKernel:
    name: str = "int4-cpu"

    def refusal(self, q: QuantizedTensor, dtype: torch.dtype) -> str | None:
        if (reason := cpu_refusal(q, dtype)) is not None:
            return reason
        if dtype not in DTYPES:
            return f"{dtype} inputs: torch's CPU int4 kernel is vectorised for bfloat16 only"
        if q.spec.coding is not None or q.spec.outliers is not None:
            return "entropy-coded codes or outliers are not in torch's int4 tile"
        book = q.codebook()
        if book.step is None or book.code_bits != 4:
            return "not a uniform grid of 4-bit codes"
        sc = q.spec.scaling
        rows, cols = view_2d(q.shape)
        if sc.granularity != "block" or sc.block_size not in GROUP_SIZES or cols % sc.block_size:
            return f"torch's int4 kernel needs groups of {'/'.join(map(str, GROUP_SIZES))} that divide the row"
        if rows % 16:
            return "torch's int4 kernel needs a multiple of 16 output rows"
        if tile_block() is None:
            return "torch has no CPU int4 kernel here, or its tile layout is not the one wquant inverts"
        return None

    def prepare(self, q: QuantizedTensor, dtype: torch.dtype) -> RuntimeState:
        rows, cols = view_2d(q.shape)
        block_n = tile_block()
        assert block_n is not None
        grid, levels = grid_levels(q)
        tile = to_tile(q.packed_codes, rows, cols, block_n)
        data = Int4Data(grid, block_n, int(q.spec.scaling.block_size), float(levels[0]))  # type: ignore[arg-type]
        return RuntimeState(self, dtype, replace(q, packed_codes=tile), held={"codes": tile, "levels": levels},
                            drops_codes=True, data=data)  # fmt: skip

    def linear(self, x: torch.Tensor, state: RuntimeState, bias: torch.Tensor | None) -> torch.Tensor:
        q, data = state.q, state.data
        rows, cols = view_2d(q.shape)
        flat = x.reshape(-1, cols)
        if x.dtype not in DTYPES or flat.shape[0] > MM_MAX_ROWS or (x.requires_grad and torch.is_grad_enabled()):
            return linear_from_weight(x, self.dequantize(state), bias)  # no autograd formula for torch's op
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            flat.contiguous(), q.packed_codes.view(rows, cols // 2), data.group, scale_zeros(q, data, x.dtype)
        )
        if bias is not None:
            y = y + bias
        return y.view(*x.shape[:-1], rows)

    def dequantize(self, state: RuntimeState) -> torch.Tensor:
        return decode(state.q, self.canonical_codes(state), state.data.grid, state.held["levels"])

    def canonical_codes(self, state: RuntimeState) -> torch.Tensor:
        rows, cols = view_2d(state.q.shape)
        return from_tile(state.q.packed_codes, rows, cols, state.data.block_n)


INT4_CPU = register_kernel(Int4CpuKernel())
