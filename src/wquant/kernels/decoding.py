"""Decoding the canonical fields the way the reference does, fast: scales from byte views, codes through tables.

Shared by every CPU kernel. `decode` is bit-identical to `QuantizedTensor.dequantize()`: the same float32
multiply (and add) per value, in one pass over the packed bytes (`native.decode`; without a C compiler, 4-bit
codes go through a 256-entry byte → (low, high) value table a cache-sized chunk of rows at a time, other widths
through `unpack_bits`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wquant.formats.bitpack import unpack_bits
from wquant.formats.grouping import apply_scales, group_shape, view_2d
from wquant.formats.quantized import QuantizedTensor
from wquant.formats.scaling import E8M0_BIAS
from wquant.kernels import native

ACTIVATION_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_IEEE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_E8M0 = ("e8m0", "e8m0-floor", "e8m0-rceil")
_CHUNK = 1 << 16  # elements per row chunk of the eager byte-pair path (values stay in cache while scaled)


def _half_matmul_native() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16/AMX); if not, bf16 GEMMs are emulated and slow."""
    probe = getattr(torch._C, "_cpu", None)
    return bool(probe is not None and getattr(probe, "_is_avx512_bf16_supported", lambda: False)())


#: bf16/fp16 inputs are multiplied in float32 unless the CPU has native bf16 arithmetic.
HALF_IN_FP32 = not _half_matmul_native()


# -------------------------------------------------------------------------------- fields, as the reference reads them


def _float_view(packed: torch.Tensor, dtype: torch.dtype, count: int) -> torch.Tensor:
    """`count` little-endian floats of `dtype` stored as bytes → float32 (zero-copy view for float32)."""
    size = torch.finfo(dtype).bits // 8
    raw = packed[: count * size]
    if raw.storage_offset() % size:
        raw = raw.clone()
    return raw.view(dtype).to(torch.float32)


def decoded_scales(q: QuantizedTensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(`q.scales()`, `q.offsets()`) bit for bit, from views of the packed bytes where the scale format allows.

    The reference unpacks every field through numpy on each call; a forward cannot afford that per layer.
    """
    sc = q.spec.scaling
    rows, groups = group_shape(sc, q.shape)
    name = sc.scale_format.name
    if sc.two_level:  # GGUF-style sub-scale codes × super-block scales: the reference's own decoder
        scales = q.scales()
    elif name in _IEEE and sys.byteorder == "little":
        scales = _float_view(q.packed_scales, _IEEE[name], rows * groups).view(rows, groups)
    elif name in _E8M0:
        scales = torch.exp2(q.packed_scales[: rows * groups].to(torch.float32) - E8M0_BIAS).view(rows, groups)
    else:  # narrow ExMy scale codes index the format's value table (and carry a per-tensor factor)
        scales = q.scales()
    if q.packed_offsets is None:
        return scales, None
    if sc.rule == "minmax" and not sc.two_level and name in _IEEE and sys.byteorder == "little":
        return scales, _float_view(q.packed_offsets, _IEEE[name], rows * groups).view(rows, groups)
    return scales, q.offsets(scales)


@dataclass(frozen=True)
class Grid:
    """How `formats.grouping.decode_values` turns codes into grid units: levels[code], then × scale (· step)."""

    width: int
    step: float | None

    def scales(self, scales: torch.Tensor) -> torch.Tensor:
        return scales if self.step is None else scales * self.step  # exactly the reference's product


def grid_levels(q: QuantizedTensor) -> tuple[Grid, torch.Tensor]:
    """The grid and its float32 levels, padded to 2^width entries with NaN (codes past the table decode to NaN)."""
    book = q.codebook()
    width = book.code_bits
    if book.step is not None:  # the reference adds lo/step to the float code and folds the step into the scales
        levels = torch.arange(book.size, dtype=torch.int32).to(torch.float32).add_(book.lo / book.step)
    else:
        levels = book.levels_tensor(torch.float32).clone()
    padded = torch.full((1 << width,), float("nan"), dtype=torch.float32)
    padded[: book.size] = levels
    return Grid(width, book.step), padded


def decode(
    q: QuantizedTensor, codes: torch.Tensor, grid: Grid, levels: torch.Tensor, *, native_ok: bool = True
) -> torch.Tensor:
    """Ŵ in the stored dtype from fixed-width `codes` (the canonical field, or any bytes `levels` is indexed by)."""
    rows, cols = view_2d(q.shape)
    sc = q.spec.scaling
    scales, offsets = decoded_scales(q)
    scales = grid.scales(scales)
    if native_ok and native.library() is not None:
        block = int(sc.block_size) if sc.granularity == "block" else cols  # type: ignore[arg-type]
        out = torch.empty(rows, cols, dtype=torch.float32)
        native.decode(codes, grid.width, rows, cols, block, levels, scales, offsets, out)
    else:
        out = _eager_decode(codes, grid.width, rows, cols, levels, scales, offsets, q)
    if q.n_outliers:
        assert q.spec.outliers is not None
        index = torch.as_tensor(q.outlier_index)
        out.view(-1)[index] = q.spec.outliers.value_format.decode(q.outlier_codes, None).to(torch.float32)
    return out.view(q.shape).to(q.dtype)


def _eager_decode(
    codes: torch.Tensor, width: int, rows: int, cols: int, levels: torch.Tensor, scales: torch.Tensor,
    offsets: torch.Tensor | None, q: QuantizedTensor,
) -> torch.Tensor:  # fmt: skip
    """The same values with torch ops: 4-bit codes through a byte → (low, high) table, a chunk of rows at a time."""
    scaling = q.spec.scaling
    if width != 4 or cols % 2:
        index = unpack_bits(codes, width, rows * cols, torch.int32)
        return apply_scales(levels.index_select(0, index).view(rows, cols), scales, offsets, scaling)
    pair = torch.stack([levels[:16].repeat(16), levels[:16].repeat_interleave(16)], dim=1)  # byte → (lo, hi)
    out = torch.empty(rows, cols, dtype=torch.float32)
    row_bytes = codes[: rows * cols // 2].view(rows, cols // 2)
    step = max(1, _CHUNK // cols)
    shared = scales.shape[0] == 1 and rows > 1  # one row of scales for the whole tensor
    for start in range(0, rows, step):
        part = out[start : start + step]
        torch.index_select(pair, 0, row_bytes[start : start + step].reshape(-1).to(torch.int32), out=part.view(-1, 2))
        s = scales if shared else scales[start : start + step]
        o = None if offsets is None else (offsets if shared else offsets[start : start + step])
        apply_scales(part, s, o, scaling)
    return out


def linear_from_weight(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear on a decoded Ŵ: exactly the reference's call for float32 inputs; float32 math for bf16/fp16."""
    if x.dtype == torch.float32 or not HALF_IN_FP32:
        return F.linear(x, w.to(x.dtype), bias)
    return F.linear(x.float(), w.float(), None if bias is None else bias.float()).to(x.dtype)


def cpu_refusal(q: QuantizedTensor, dtype: torch.dtype) -> str | None:
    """Why no CPU kernel can take this tensor at all (None: any may)."""
    if q.device.type != "cpu":
        return f"the fields are on {q.device}, CPU kernels only"
    if dtype not in ACTIVATION_DTYPES:
        return f"inputs of {dtype}; CPU kernels take float32, bfloat16 and float16"
    if q.dtype == torch.float64:
        return "float64 weights decode in float64"
    return None
