"""A codebook: the sorted reproduction levels of an element grid and how values are rounded onto them.

Every element format reduces to one of these, so rounding, decoding and the code width are written once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from wquant.errors import SpecError


@dataclass(frozen=True, eq=False)
class Codebook:
    """Sorted distinct `levels`; decision `boundaries` between neighbours (default: midpoints).

    step: spacing when the levels form an arithmetic progression and rounding is to the nearest level
    (enables arithmetic rounding instead of a search).
    rms_target: where unit-RMS data should sit in grid units when a tensor is scaled by its RMS.
    table_bits: bits of a stored code table (data-fitted grids); 0 for fixed grids.
    """

    levels: np.ndarray
    boundaries: np.ndarray
    step: float | None = None
    rms_target: float = 1.0
    table_bits: int = 0

    @staticmethod
    def from_levels(
        levels: np.ndarray | list[float],
        *,
        boundaries: np.ndarray | None = None,
        rms_target: float | None = None,
        table_bits: int = 0,
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
        return Codebook(lv, bnd, step, target, table_bits)

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
        """Index of the level each value rounds to (nearest, or nearest in the companded domain)."""
        if self.step is not None:
            idx = torch.round((x - self.lo) / self.step).clamp_(0, self.size - 1)
            return idx.to(self.code_dtype())
        bnd = torch.as_tensor(self.boundaries, dtype=x.dtype)
        idx = torch.bucketize(x, bnd, right=True)  # ties go up; make them symmetric about zero below
        tie = (x < 0) & (idx > 0) & (x == bnd[(idx - 1).clamp(min=0)])
        idx = idx - tie.to(idx.dtype)
        return idx.to(self.code_dtype())

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.step is not None:
            return codes.to(dtype) * self.step + self.lo
        table = torch.tensor(self.levels, dtype=dtype)
        return table[codes.to(torch.int64)]
