"""How every format sees a tensor: one 2-D view, one compute dtype, one group layout, one codebook per spec.

Dim 0 is the output channel and the rest is flattened into the input dimension; groups (blocks of B) run
along the input dimension. These few functions are shared by quantizing, storing and decoding, so the
three can never disagree about where a scale applies.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from wquant.formats.codebook import Codebook
from wquant.formats.grids import ElementGrid
from wquant.formats.scaling import Scaling
from wquant.formats.spec import FormatSpec


def view_2d(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) of the (out, in) view: scalars are 1×1, vectors one row."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


def as_2d(x: torch.Tensor) -> torch.Tensor:
    """`x` reshaped to its (out, in) view."""
    return x.reshape(view_2d(tuple(x.shape)))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 inputs are computed in float64; everything else in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def group_shape(scaling: Scaling, shape: tuple[int, ...]) -> tuple[int, int]:
    """(scale rows, groups): one stored scale per entry."""
    rows, cols = view_2d(shape)
    if scaling.granularity == "tensor":
        return 1, 1
    if scaling.granularity == "channel":
        return rows, 1
    return rows, -(-cols // int(scaling.block_size))  # type: ignore[arg-type]


def group_length(scaling: Scaling, shape: tuple[int, ...]) -> int:
    """Columns one group column spans (all columns for tensor and channel granularity)."""
    cols = view_2d(shape)[1]
    return int(scaling.block_size) if scaling.granularity == "block" else cols  # type: ignore[arg-type]


def codebook_of(spec: FormatSpec, table: np.ndarray | None = None) -> Codebook:
    """The codebook values are encoded on: a fitted grid's stored table once there is one, else the nominal grid."""
    if spec.element.data_dependent and table is not None:
        return spec.element.codebook_from_table(table)
    return nominal_codebook(spec)


def nominal_codebook(spec: FormatSpec) -> Codebook:
    """The grid's nominal codebook, which scales are chosen against (also for fitted grids, before fitting)."""
    return _nominal(spec.element, spec.scaling.rule, spec.scaling.block_size)


@lru_cache(maxsize=256)
def _nominal(element: ElementGrid, rule: str, block_size: int | None) -> Codebook:
    """Grids are frozen, so their codebooks (and the look-up tables those build) are made once, not per call."""
    return element.codebook(rule, block_size)


def apply_scales(
    values: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None, scaling: Scaling
) -> torch.Tensor:
    """values (rows, cols) in grid units → weights, in place, broadcasting one scale (and offset) per group."""
    rows, cols = values.shape
    if scaling.granularity == "block":
        size = int(scaling.block_size)  # type: ignore[arg-type]
        if cols % size == 0:
            grouped = values.view(rows, -1, size).mul_(scales[..., None])
            if offsets is not None:
                grouped.add_(offsets[..., None])
            return values
        scales = scales.repeat_interleave(size, dim=1)[:, :cols]
        offsets = None if offsets is None else offsets.repeat_interleave(size, dim=1)[:, :cols]
    values.mul_(scales)
    return values if offsets is None else values.add_(offsets)


def decode_values(
    codes: torch.Tensor, book: Codebook, scales: torch.Tensor, offsets: torch.Tensor | None, scaling: Scaling,
    dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """(rows, cols) codes → weights in `dtype`; a step grid folds its step into the scales (one pass fewer)."""
    scales = scales.to(dtype)
    if book.step is not None:
        values = codes.to(dtype).add_(book.lo / book.step)
        scales = scales * book.step
    else:
        values = book.decode(codes, dtype)
    return apply_scales(values, scales, None if offsets is None else offsets.to(dtype), scaling)
