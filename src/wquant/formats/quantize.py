"""quantize(): tensor → stored fields (codes, scales, outliers, tables); QuantizedTensor → tensor and bits.

A QuantizedTensor holds exactly what is stored and nothing derivable, so `bits()` is a sum over its fields
and `to_bytes()` writes those fields into one bit stream of exactly ceil(bits/8) bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from wquant.errors import CorruptDataError, TensorError
from wquant.formats.bitpack import BitReader, BitWriter
from wquant.formats.codebook import Codebook
from wquant.formats.coding import decode_codes, encode_codes
from wquant.formats.grids import ElementGrid, UniformGrid
from wquant.formats.scaling import Scaling
from wquant.formats.spec import OUTLIER_INDEX_BITS, FormatSpec, parse_spec
from wquant.validation import NanPolicy, check_tensor

#: Scale multipliers tried by +search: 17 log-spaced values in [1/4, 4], then a finer pass around the best.
SEARCH_COARSE = 2.0 ** np.linspace(-2, 2, 17)
SEARCH_FINE_POINTS = 9
TABLE_COUNT_BITS = 32  # a fitted grid's table is stored with its entry count
MAX_TABLE_SIZE = 2**21 + 1


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """The stored fields of one quantized tensor, plus the spec, shape and dtype needed to read them."""

    spec: FormatSpec
    shape: tuple[int, ...]
    dtype: torch.dtype
    codes: torch.Tensor  # flat element codes (indices into the codebook), row-major, no padding
    scale_codes: np.ndarray  # stored scale patterns, (scale rows × groups)
    offset_codes: np.ndarray | None  # zero offsets (minmax) or zero points (zeropoint), same layout as scales
    tensor_scale: float | None  # per-tensor fp32 factor of ExMy scale formats
    table: np.ndarray | None  # fitted levels (float32) of data-dependent grids
    outlier_index: np.ndarray  # flat indices (int64), ascending
    outlier_codes: np.ndarray  # stored outlier value patterns
    payload: bytes | None = None  # the entropy-coded codes (spec.coding), a self-checking container

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.shape else 1

    def codebook(self) -> Codebook:
        return _codebook(self.spec, self.table)

    def scales(self) -> torch.Tensor:
        """Decoded scale values, shape (scale rows, groups)."""
        rows, groups = _group_layout(self.spec.scaling, self.shape)
        fmt = self.spec.scaling.scale_format
        return fmt.decode(self.scale_codes.reshape(-1), self.tensor_scale).reshape(rows, groups)

    def bit_breakdown(self) -> dict[str, int]:
        """Exact stored bits per field (coded codes: the container's real length, plus byte alignment)."""
        sc = self.spec.scaling
        n_groups = int(self.scale_codes.size)
        out = {
            "codes": self.numel * self.codebook().code_bits if self.payload is None else 8 * len(self.payload),
            "scales": n_groups * sc.scale_format.bits,
            "offsets": 0 if self.offset_codes is None else n_groups * sc.offset_bits(self.codebook()),
            "tensor_scale": sc.scale_format.tensor_scale_bits,
            "table": 0 if self.table is None else TABLE_COUNT_BITS + self.table.size * 32,
            "outliers": 0,
            "alignment": 0,
        }
        if self.spec.outliers is not None:
            out["outliers"] = int(self.outlier_index.size) * self.spec.outliers.bits_each
        if self.payload is not None:  # the coded container starts on a byte boundary
            out["alignment"] = -(sum(out.values()) - out["codes"]) % 8
        return out

    def bits(self) -> int:
        return sum(self.bit_breakdown().values())

    def bits_per_param(self) -> float:
        return self.bits() / self.numel

    def dequantize(self) -> torch.Tensor:
        sc = self.spec.scaling
        book = self.codebook()
        rows, cols = _view_2d(self.shape)
        dtype = _compute_dtype(self.dtype)
        scales = self.scales().to(dtype)
        offsets = None
        if self.offset_codes is not None:
            offsets = sc.decode_offsets(self.offset_codes, scales, book)
        if book.step is not None:  # fold the grid step into the scales: one pass fewer over the tensor
            values = self.codes.to(dtype).add_(book.lo / book.step).reshape(rows, cols)
            scales = scales * book.step
        else:
            values = book.decode(self.codes, dtype).reshape(rows, cols)
        out = _apply_scales(values, scales, offsets, sc)
        if self.outlier_index.size:
            assert self.spec.outliers is not None
            vals = self.spec.outliers.value_format.decode(self.outlier_codes, None)
            out.view(-1)[torch.as_tensor(self.outlier_index)] = vals.to(dtype)
        return out.reshape(self.shape).to(self.dtype)

    def to_bytes(self) -> bytes:
        """All stored fields as one bit stream; its length is exactly ceil(bits()/8) bytes."""
        sc = self.spec.scaling
        writer = BitWriter()
        if self.table is not None:  # first: the code width of a fitted grid depends on its size
            writer.write(np.array([self.table.size]), TABLE_COUNT_BITS)
            writer.write(_f32_bits(self.table), 32)
        if self.payload is None:
            writer.write(self.codes.to(torch.int64).numpy(), self.codebook().code_bits)
        writer.write(self.scale_codes, sc.scale_format.bits)
        if self.offset_codes is not None:
            writer.write(self.offset_codes, sc.offset_bits(self.codebook()))
        if self.tensor_scale is not None:
            writer.write(_f32_bits(np.array([self.tensor_scale])), 32)
        if self.spec.outliers is not None:
            writer.write(self.outlier_codes, self.spec.outliers.value_format.bits)
            writer.write(self.outlier_index, OUTLIER_INDEX_BITS)
        if self.payload is not None:
            writer.write(np.zeros(-writer.bits % 8, dtype=np.int64), 1)
            writer.write(np.frombuffer(self.payload, dtype=np.uint8), 8)
        data = writer.getvalue()
        if writer.bits != self.bits() or len(data) != -(-self.bits() // 8):
            raise AssertionError(f"bit accounting broken: counted {self.bits()}, wrote {writer.bits}")
        return data

    @staticmethod
    def from_bytes(data: bytes, spec: FormatSpec | str, shape: tuple[int, ...], dtype: torch.dtype) -> QuantizedTensor:
        """Read the fields written by `to_bytes`; the spec, shape and dtype come from the caller's manifest."""
        spec = parse_spec(spec)
        shape = tuple(int(s) for s in shape)
        numel = math.prod(shape) if shape else 1
        sc = spec.scaling
        rows, groups = _group_layout(sc, shape)
        reader = BitReader(data)
        table = None
        if spec.element.data_dependent:
            size = int(reader.read(TABLE_COUNT_BITS, 1)[0])
            if not 2 <= size <= MAX_TABLE_SIZE:
                raise CorruptDataError(f"stored code table claims {size} entries; the stream is damaged")
            table = _f32_from_bits(reader.read(32, size))
            if not (np.all(np.isfinite(table)) and np.all(np.diff(table) > 0)):
                raise CorruptDataError("stored code table is not a strictly increasing set of numbers")
        book = _codebook(spec, table)
        narrow = np.uint8 if book.code_bits <= 8 else np.int32  # the dtype codes are held in: no int64 detour
        codes = reader.read(book.code_bits, numel, narrow) if spec.coding is None else None
        scale_codes = reader.read(sc.scale_format.bits, rows * groups)
        offset_codes = reader.read(sc.offset_bits(book), rows * groups) if sc.has_offsets else None
        tensor_scale = float(_f32_from_bits(reader.read(32, 1))[0]) if sc.scale_format.tensor_scale_bits else None
        if tensor_scale is not None and not (math.isfinite(tensor_scale) and tensor_scale > 0):
            raise CorruptDataError(f"stored per-tensor scale factor {tensor_scale} is not a positive number")
        k = spec.outliers.count(numel) if spec.outliers is not None else 0
        outlier_codes = reader.read(spec.outliers.value_format.bits, k) if spec.outliers else np.zeros(0, np.int64)
        outlier_index = reader.read(OUTLIER_INDEX_BITS, k) if spec.outliers else np.zeros(0, np.int64)
        payload = None
        if spec.coding is not None:
            start = -(-reader.position // 8)
            payload = bytes(data[start:])
            codes = decode_codes(payload).reshape(-1)
            if codes.size != numel:
                raise CorruptDataError(f"coded stream holds {codes.size} codes, the tensor has {numel}")
        elif -(-reader.position // 8) != len(data):
            raise CorruptDataError(f"stream has {len(data)} bytes but the format needs {-(-reader.position // 8)}")
        assert codes is not None
        # fixed-width codes are unsigned and below 2^code_bits; only a wider width or the coder can overflow
        if codes.size and (spec.coding is not None or book.size < 2**book.code_bits):
            if int(codes.min()) < 0 or int(codes.max()) >= book.size:
                raise CorruptDataError(f"element codes {int(codes.min())}..{int(codes.max())} out of range for "
                                       f"{book.size} levels")  # fmt: skip
        codes = codes.astype(narrow, copy=False)
        if outlier_index.size and int(outlier_index.max()) >= numel:
            raise CorruptDataError("outlier index points outside the tensor")
        stored = QuantizedTensor(
            spec, shape, dtype, torch.as_tensor(codes).to(book.code_dtype()), scale_codes, offset_codes,
            tensor_scale, table, outlier_index, outlier_codes, payload,
        )  # fmt: skip
        scales = stored.scales()  # refuses scale codes no encoder writes (NaN/Inf patterns, out-of-table codes)
        if offset_codes is not None:
            sc.decode_offsets(offset_codes, scales, book)
        if spec.outliers is not None:
            spec.outliers.value_format.decode(outlier_codes, None)
        return stored


def quantize(
    x: torch.Tensor,
    spec: FormatSpec | str,
    *,
    weights: torch.Tensor | None = None,
    nan_policy: NanPolicy = "raise",
    name: str = "tensor",
) -> QuantizedTensor:
    """Quantize `x` to `spec`. `weights` (same shape, ≥ 0) weight the squared error of +search and fitted grids.

    A budget spec (`uniform@3.5/...+coded`) is resolved by `quantize_to_budget`: the step is chosen so the
    coded size meets the bits/param target, and the returned tensor's spec names that step.
    """
    spec = parse_spec(spec)
    x = check_tensor(x, name, nan_policy=nan_policy)
    if isinstance(spec.element, UniformGrid) and spec.element.target_bits is not None:
        from wquant.formats.budget import quantize_to_budget

        return quantize_to_budget(x, spec, weights=weights, name=name)
    work = x.detach().to(_compute_dtype(x.dtype)).reshape(_view_2d(tuple(x.shape)))
    w2d = None
    if weights is not None:
        weights = check_tensor(weights, f"{name} weights")
        if weights.shape != x.shape or bool((weights < 0).any()):
            raise TensorError(f"{name} weights must have shape {tuple(x.shape)} and be >= 0")
        w2d = weights.detach().to(work.dtype).reshape(work.shape)

    outlier_index = np.zeros(0, dtype=np.int64)
    outlier_codes = np.zeros(0, dtype=np.int64)
    if spec.outliers is not None and (k := spec.outliers.count(work.numel())) > 0:
        flat = work.reshape(-1)
        idx = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
        _, codes_np, _ = spec.outliers.value_format.quantize(flat[idx], 1.0)
        outlier_index, outlier_codes = idx.numpy().astype(np.int64), codes_np
        work = work.clone()
        work.view(-1)[idx] = 0.0

    sc = spec.scaling
    blocks, pad = sc.blocks(work)
    wblocks = _weight_blocks(w2d, sc, pad, blocks)
    book = _codebook(spec, None)
    table = None
    if spec.element.data_dependent:
        # scales come from the grid's nominal range; the fitted table then adapts to the scaled data
        groups = _quantize_groups(blocks, pad, book, sc, 1.0)
        normalized = _normalize(blocks, groups).reshape(-1)
        keep = _valid_mask(blocks.shape, pad).reshape(-1)
        w = None if wblocks is None else wblocks.reshape(-1)[keep].double().numpy()
        table = spec.element.fit(normalized[keep].double().numpy(), w)
        codes = _codebook(spec, table).encode(normalized.reshape(blocks.shape))
    else:
        multiplier = _search_multiplier(blocks, pad, book, sc, wblocks) if sc.search else 1.0
        groups = _quantize_groups(blocks, pad, book, sc, multiplier)
        codes = book.encode_blocks(blocks, groups.scales, groups.offsets)
    rows, cols = work.shape
    codes = codes.reshape(blocks.shape[0], -1)
    if sc.granularity == "block":
        codes = codes.reshape(rows, -1)[:, :cols]
    codes = codes.reshape(-1).contiguous()
    payload = None
    if spec.coding is not None:
        payload = encode_codes(codes.numpy(), group_size=spec.coding.group_size)
    return QuantizedTensor(
        spec, tuple(x.shape), x.dtype, codes, groups.scale_codes,
        groups.offset_codes, groups.tensor_scale, table, outlier_index, outlier_codes, payload,
    )  # fmt: skip


@dataclass(frozen=True)
class _Groups:
    scales: torch.Tensor
    scale_codes: np.ndarray
    tensor_scale: float | None
    offsets: torch.Tensor | None
    offset_codes: np.ndarray | None


def _quantize_groups(blocks: torch.Tensor, pad: int, book: Codebook, sc: Scaling, multiplier: float) -> _Groups:
    raw, mins = sc.raw_scales(blocks, book, pad)
    scales, scale_codes, factor = sc.scale_format.quantize(raw * multiplier, book.absmax_target)
    offsets = offset_codes = None
    if mins is not None:
        offsets, offset_codes = sc.store_offsets(mins, scales, book)
    return _Groups(scales, scale_codes, factor, offsets, offset_codes)


def _normalize(blocks: torch.Tensor, groups: _Groups) -> torch.Tensor:
    safe = torch.where(groups.scales == 0, torch.ones_like(groups.scales), groups.scales)
    shifted = blocks if groups.offsets is None else blocks - groups.offsets[..., None]
    return shifted / safe[..., None]


def _reconstruct(blocks: torch.Tensor, book: Codebook, groups: _Groups) -> torch.Tensor:
    values = book.decode(book.encode_blocks(blocks, groups.scales, groups.offsets), blocks.dtype)
    out = values * groups.scales[..., None]
    return out if groups.offsets is None else out + groups.offsets[..., None]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 inputs are computed in float64; everything else in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _search_multiplier(
    blocks: torch.Tensor, pad: int, book: Codebook, sc: Scaling, wblocks: torch.Tensor | None
) -> float:
    """Tensor-wide scale multiplier minimising the (weighted) squared error: coarse grid, then refine."""
    weight = wblocks if wblocks is not None else _valid_mask(blocks.shape, pad).to(blocks.dtype)

    def error(c: float) -> float:
        recon = _reconstruct(blocks, book, _quantize_groups(blocks, pad, book, sc, c))
        return float(((recon - blocks).square() * weight).sum())

    coarse = [error(float(c)) for c in SEARCH_COARSE]
    best = int(np.argmin(coarse))
    lo = SEARCH_COARSE[max(best - 1, 0)]
    hi = SEARCH_COARSE[min(best + 1, len(SEARCH_COARSE) - 1)]
    fine = np.exp(np.linspace(np.log(lo), np.log(hi), SEARCH_FINE_POINTS))
    errors = [error(float(c)) for c in fine]
    return float(fine[int(np.argmin(errors))])


def _valid_mask(shape: torch.Size | tuple[int, ...], pad: int) -> torch.Tensor:
    mask = torch.ones(shape, dtype=torch.bool)
    if pad:
        mask[:, -1, shape[-1] - pad :] = False
    return mask


def _weight_blocks(w2d: torch.Tensor | None, sc: Scaling, pad: int, blocks: torch.Tensor) -> torch.Tensor | None:
    if w2d is None:
        return None
    wb, _ = sc.blocks(w2d)
    return wb * _valid_mask(blocks.shape, pad)


def _codebook(spec: FormatSpec, table: np.ndarray | None) -> Codebook:
    """The codebook of a spec; fitted grids use their stored table once there is one."""
    if spec.element.data_dependent and table is not None:
        return spec.element.codebook_from_table(table)
    return _nominal_codebook(spec.element, spec.scaling.rule, spec.scaling.block_size)


@lru_cache(maxsize=256)
def _nominal_codebook(element: ElementGrid, rule: str, block_size: int | None) -> Codebook:
    """Grids are frozen, so their codebooks (and the look-up tables those build) are made once, not per call."""
    return element.codebook(rule, block_size)


def _view_2d(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


def _group_layout(sc: Scaling, shape: tuple[int, ...]) -> tuple[int, int]:
    rows, cols = _view_2d(shape)
    if sc.granularity == "tensor":
        return 1, 1
    if sc.granularity == "channel":
        return rows, 1
    return rows, -(-cols // int(sc.block_size))  # type: ignore[arg-type]


def _apply_scales(
    values: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None, sc: Scaling
) -> torch.Tensor:
    """values (rows, cols) in grid units → weights, in place, broadcasting one scale (and offset) per group."""
    rows, cols = values.shape
    if sc.granularity == "block":
        size = int(sc.block_size)  # type: ignore[arg-type]
        if cols % size == 0:
            grouped = values.view(rows, -1, size).mul_(scales[..., None])
            if offsets is not None:
                grouped.add_(offsets[..., None])
            return values
        scales = scales.repeat_interleave(size, dim=1)[:, :cols]
        offsets = None if offsets is None else offsets.repeat_interleave(size, dim=1)[:, :cols]
    values.mul_(scales)
    return values if offsets is None else values.add_(offsets)


def _f32_bits(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype="<f4").view("<u4").astype(np.int64)


def _f32_from_bits(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits, dtype="<u4").view("<f4").astype(np.float32)
