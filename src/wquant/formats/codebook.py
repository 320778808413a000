"""A codebook: the sorted reproduction levels of an element grid and how values are rounded onto them.

Every element format reduces to one of these, so rounding, decoding and the code width are written once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from wquant.errors import SpecError

_FINE_CELLS = 4096  # cells of the look-up grid used to encode onto non-uniform codebooks
_UNRESOLVED = 255  # marks a look-up cell that a decision boundary touches
_CHUNK = 1 << 18  # elements per pass of a table look-up: index temporaries then fit in cache (2× faster)


@dataclass(frozen=True, eq=False)
class Codebook:
    """Sorted distinct `levels`; decision `boundaries` between neighbours (default: midpoints).

    step: spacing when the levels form an arithmetic progression and rounding is to the nearest level
    (enables arithmetic rounding instead of a search).
    rms_target: where unit-RMS data should sit in grid units when a tensor is scaled by its RMS.
    """

    levels: np.ndarray
    boundaries: np.ndarray
    step: float | None = None
    rms_target: float = 1.0

    @staticmethod
    def from_levels(
        levels: np.ndarray | list[float],
        *,
        boundaries: np.ndarray | None = None,
        rms_target: float | None = None,
    ) -> Codebook:
        lv = np.asarray(levels, dtype=np.float64).reshape(-1)
        if lv.size < 2:
            raise SpecError(f"a codebook needs at least 2 levels, got {lv.size}")
        if not np.all(np.isfinite(lv)):
            raise SpecError("codebook levels must be finite")
        if np.any(np.diff(lv) <= 0):
            raise SpecError("codebook levels must be strictly increasing with no duplicates")
        gaps = np.diff(lv)
        step = float(gaps[0]) if np.allclose(gaps, gaps[0], rtol=1e-12, atol=0) and boundaries is None else None
        bnd = (lv[1:] + lv[:-1]) / 2 if boundaries is None else np.asarray(boundaries, dtype=np.float64)
        hi = float(max(-lv[0], lv[-1]))
        target = hi / math.sqrt(3.0) if rms_target is None else rms_target
        return Codebook(lv, bnd, step, target)

    @property
    def size(self) -> int:
        return int(self.levels.size)

    @property
    def code_bits(self) -> int:
        """Fixed-length code width: ceil(log2(#levels))."""
        return max(1, math.ceil(math.log2(self.size)))

    @property
    def lo(self) -> float:
        return float(self.levels[0])

    @property
    def hi(self) -> float:
        return float(self.levels[-1])

    @property
    def absmax_target(self) -> float:
        """The grid magnitude a block's absolute maximum maps to: the shorter side, so nothing clips."""
        return min(-self.lo, self.hi) if self.lo < 0 else self.hi

    def code_dtype(self) -> torch.dtype:
        return torch.uint8 if self.code_bits <= 8 else torch.int32

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the level each value rounds to. Ties between two levels go away from zero."""
        flat = x.reshape(-1)
        codes = torch.empty(flat.numel(), dtype=self.code_dtype())
        for part, out in zip(flat.split(_CHUNK), codes.split(_CHUNK), strict=True):  # chunks stay in cache
            self._encode_into(part, out)
        return codes.view(x.shape)

    def encode_blocks(
        self, blocks: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None = None
    ) -> torch.Tensor:
        """encode((blocks − offsets) / scales) for (n, B) blocks and (n,) scales (a zero scale counts as 1).

        The same codes as normalizing first, without a full-size normalized tensor: each chunk of blocks is
        normalized and encoded while it is in cache.
        """
        width = blocks.shape[-1]
        flat_blocks = blocks.reshape(-1, width)
        safe = torch.where(scales == 0, torch.ones_like(scales), scales).reshape(-1, 1)
        shift = None if offsets is None else offsets.reshape(-1, 1)
        codes = torch.empty(flat_blocks.shape, dtype=self.code_dtype())
        rows = max(1, _CHUNK // max(1, width))
        for start in range(0, flat_blocks.shape[0], rows):
            part = flat_blocks[start : start + rows]
            if shift is not None:
                part = part - shift[start : start + rows]
            self._encode_into((part / safe[start : start + rows]).reshape(-1), codes[start : start + rows].view(-1))
        return codes.view(blocks.shape)

    def _encode_into(self, x: torch.Tensor, out: torch.Tensor) -> None:
        if self.step is not None:
            out.copy_(torch.sub(x, self.lo).div_(self.step).round_().clamp_(0, self.size - 1))
            return
        fine = self._fine_table
        if fine is None:
            out.copy_(self._encode_exact(x))
            return
        # One table look-up per value on a fine uniform grid. A cell crossed by one decision boundary also
        # holds that boundary, and a comparison settles the code; only cells crossed by several (dense tables
        # such as FP8 near zero) are resolved by the exact search. Same codes as the exact search, 3-5× faster.
        left, origin, inv_width, multi = fine
        threshold = self._fine_thresholds(x.dtype)
        cell = (x - origin).mul_(inv_width).add_(1.0).clamp_(0, left.numel() - 1).to(torch.int64)
        torch.index_select(left, 0, cell, out=out)
        out.add_(x >= threshold.index_select(0, cell))
        if multi:
            unresolved = (out == _UNRESOLVED).nonzero().squeeze(1)
            out[unresolved] = self._encode_exact(x[unresolved])

    def _encode_exact(self, x: torch.Tensor) -> torch.Tensor:
        bnd = torch.as_tensor(self.boundaries, dtype=x.dtype)
        idx = torch.bucketize(x, bnd, right=True)  # ties go up; send negative ones down (away from zero)
        tie = (x < 0) & (idx > 0) & (x == bnd[(idx - 1).clamp(min=0)])
        idx = idx - tie.to(idx.dtype)
        return idx.to(self.code_dtype())

    @cached_property
    def _fine_cells(self) -> tuple[np.ndarray, np.ndarray, float, float] | None:
        """(code below the cell's boundary or _UNRESOLVED, that boundary or +inf, origin, 1/cell width), or None.

        Cell 0 holds everything below the first boundary; cell j ≥ 1 covers [origin + (j-1)w, origin + jw).
        Boundaries are collected within half a cell around each cell, so an index that rounding pushes into
        the neighbouring cell still meets the boundary it must compare against. None when it would not pay
        (more than 5 % of cells crossed by several boundaries).
        """
        if self.size > _UNRESOLVED or self.boundaries.size < 2:
            return None
        origin, end = float(self.boundaries[0]), float(self.boundaries[-1])
        width = (end - origin) / _FINE_CELLS
        left = origin + (np.arange(_FINE_CELLS + 2) - 1) * width
        first = np.searchsorted(self.boundaries, left - width / 2, side="left")
        last = np.searchsorted(self.boundaries, left + 1.5 * width, side="right")
        crossing = last - first
        if np.mean(crossing > 1) > 0.05:
            return None
        codes = np.where(crossing > 1, _UNRESOLVED, first)
        bounds = np.full(codes.shape, np.inf)
        one = crossing == 1
        bounds[one] = self.boundaries[first[one]]
        return codes.astype(np.uint8), bounds, origin, 1.0 / width

    @cached_property
    def _fine_table(self) -> tuple[torch.Tensor, float, float, bool] | None:
        cells = self._fine_cells
        if cells is None:
            return None
        codes, _, origin, inv_width = cells
        return torch.as_tensor(codes), origin, inv_width, bool((codes == _UNRESOLVED).any())

    def _fine_thresholds(self, dtype: torch.dtype) -> torch.Tensor:
        """Per cell: the least value that takes the code above it, in `dtype` (ties go away from zero)."""
        cache = self.__dict__.setdefault("_thresholds", {})
        if dtype not in cache:
            assert self._fine_cells is not None
            bounds = torch.as_tensor(self._fine_cells[1], dtype=dtype)
            # a negative boundary's tie goes down: the upper code starts just above it
            cache[dtype] = torch.where(bounds < 0, torch.nextafter(bounds, torch.tensor(math.inf, dtype=dtype)), bounds)
        return cache[dtype]

    def levels_tensor(self, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> torch.Tensor:
        """The levels as a tensor (made once per dtype and device)."""
        cache = self.__dict__.setdefault("_level_tensors", {})
        key = (dtype, torch.device("cpu") if device is None else torch.device(device))
        if key not in cache:
            cache[key] = torch.tensor(self.levels, dtype=dtype, device=key[1])
        return cache[key]

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.step is not None:
            return codes.to(dtype) * self.step + self.lo
        table = self.levels_tensor(dtype, codes.device)
        flat = codes.reshape(-1)
        out = torch.empty(flat.numel(), dtype=dtype, device=codes.device)
        for part, dest in zip(flat.split(_CHUNK), out.split(_CHUNK), strict=True):  # chunks stay in cache
            torch.index_select(table, 0, part.to(torch.int32), out=dest)  # int32 gathers ~20 % faster
        return out.view(codes.shape)
