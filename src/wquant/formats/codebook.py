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
        if self.step is not None:
            idx = (x - self.lo).div_(self.step).round_().clamp_(0, self.size - 1)
            return idx.to(self.code_dtype())
        fine = self._fine_table
        if fine is None:
            return self._encode_exact(x)
        # One table look-up per value on a fine uniform grid; only values in a cell that a decision boundary
        # touches (about 1 %) are resolved exactly. Same result as the exact search, several times faster.
        table, origin, inv_width = fine
        flat = x.reshape(-1)
        codes = torch.empty(flat.numel(), dtype=torch.uint8)
        for part, out in zip(flat.split(_CHUNK), codes.split(_CHUNK), strict=True):  # chunks stay in cache
            cell = (part - origin).mul_(inv_width).add_(1.0).clamp_(0, table.numel() - 1).to(torch.int64)
            torch.index_select(table, 0, cell, out=out)
        unresolved = (codes == _UNRESOLVED).nonzero().squeeze(1)
        codes[unresolved] = self._encode_exact(flat[unresolved])
        return codes.view(x.shape)

    def _encode_exact(self, x: torch.Tensor) -> torch.Tensor:
        bnd = torch.as_tensor(self.boundaries, dtype=x.dtype)
        idx = torch.bucketize(x, bnd, right=True)  # ties go up; send negative ones down (away from zero)
        tie = (x < 0) & (idx > 0) & (x == bnd[(idx - 1).clamp(min=0)])
        idx = idx - tie.to(idx.dtype)
        return idx.to(self.code_dtype())

    @cached_property
    def _fine_table(self) -> tuple[torch.Tensor, float, float] | None:
        """(code per fine cell or _UNRESOLVED, grid origin, 1/cell width), or None when it would not pay.

        Cell 0 holds everything below the first boundary; cell j ≥ 1 covers [origin + (j-1)w, origin + jw).
        A cell is unresolved when a boundary lies within half a cell of it, so an index that rounding
        pushes into the neighbouring cell can never cross a boundary unnoticed.
        """
        if self.size > _UNRESOLVED or self.boundaries.size < 2:
            return None
        origin, end = float(self.boundaries[0]), float(self.boundaries[-1])
        width = (end - origin) / _FINE_CELLS
        left = origin + (np.arange(_FINE_CELLS + 2) - 1) * width
        first = np.searchsorted(self.boundaries, left - width / 2, side="left")
        last = np.searchsorted(self.boundaries, left + 1.5 * width, side="right")
        codes = np.where(last > first, _UNRESOLVED, np.searchsorted(self.boundaries, left, side="right"))
        codes[0] = 0
        if np.mean(codes == _UNRESOLVED) > 0.05:
            return None
        return torch.as_tensor(codes.astype(np.uint8)), origin, 1.0 / width

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.step is not None:
            return codes.to(dtype) * self.step + self.lo
        table = torch.tensor(self.levels, dtype=dtype)
        flat = codes.reshape(-1)
        out = torch.empty(flat.numel(), dtype=dtype)
        for part, dest in zip(flat.split(_CHUNK), out.split(_CHUNK), strict=True):  # chunks stay in cache
            torch.index_select(table, 0, part.to(torch.int64), out=dest)
        return out.view(codes.shape)
