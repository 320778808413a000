"""Round-to-nearest with a per-group clip search: the cheapest data-aware baseline for any format.

Absmax scales waste grid levels on a block's single largest weight; shrinking the scale clips that weight
but refines every other one. Which trade wins depends on which weights matter, so the error is weighted:
ones (plain MSE), |w| (large weights matter more), the diagonal of the layer Hessian (mean squared input
per column, llama.cpp's imatrix idea) or a Fisher estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from wquant.algorithms._grid import (
    GroupGrid,
    as_2d,
    check_hessian,
    check_weight,
    prepare,
    refuse_clip_search_on_unbounded_grid,
)
from wquant.errors import ParameterError, TensorError
from wquant.formats import FormatSpec, QuantizedTensor, parse_spec
from wquant.validation import check_int_range, check_positive

Importance = Literal["ones", "abs", "hessian", "fisher"]
IMPORTANCE_KINDS = ("ones", "abs", "hessian", "fisher")


@dataclass(frozen=True)
class RTNConfig:
    """Round-to-nearest to `format`; with `search`, each group picks its clip multiplier.

    Multipliers are `grid` log-spaced values in [lo, hi] (1.0 is always tried, so the search never loses to
    plain RTN on its own objective). Defaults: [0.5, 1.0] for absmax/signmax/minmax scales, whose grid
    already ends at the block extreme, and [0.5, 2.0] for rms scales. A uniform grid has no clip (its levels
    run as far as the data), so it takes no search: its precision is its step or its bits budget.
    """

    format: str | FormatSpec = "int4/block64:absmax:bf16"
    search: bool = True
    importance: Importance = "ones"
    grid: int = 32
    lo: float | None = None
    hi: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", parse_spec(self.format))
        if self.importance not in IMPORTANCE_KINDS:
            raise ParameterError(f"importance {self.importance!r} unknown; valid: {', '.join(IMPORTANCE_KINDS)}")
        check_int_range(self.grid, "scale search grid", 2, 4096)
        for name in ("lo", "hi"):
            if getattr(self, name) is not None:
                check_positive(getattr(self, name), f"scale search {name}")
        if self.search:
            refuse_clip_search_on_unbounded_grid(self.spec)
        lo, hi = self.bounds
        if not lo < hi:
            raise ParameterError(f"scale search needs lo < hi, got [{lo}, {hi}]")

    @property
    def spec(self) -> FormatSpec:
        return self.format  # type: ignore[return-value]

    @property
    def bounds(self) -> tuple[float, float]:
        wide = self.spec.scaling.rule == "rms"
        return (self.lo or 0.5), (self.hi or (2.0 if wide else 1.0))

    @property
    def needs_calibration(self) -> bool:
        return self.search and self.importance == "hessian"


def importance_weights(
    weight: torch.Tensor, kind: Importance, *, hessian: torch.Tensor | None = None, fisher: torch.Tensor | None = None
) -> torch.Tensor | None:
    """(rows, cols) non-negative weights of the squared error, or None for plain MSE."""
    w2d = as_2d(weight)
    if kind == "ones":
        return None
    if kind == "abs":
        return w2d.abs()
    if kind == "hessian":
        if hessian is None:
            raise ParameterError("importance='hessian' needs calibration data (a layer Hessian)")
        h = check_hessian(hessian, w2d.shape[1], "importance")
        return h.diagonal().clamp(min=0).to(w2d.dtype).expand_as(w2d)
    if fisher is None:
        raise ParameterError("importance='fisher' needs a Fisher estimate of the weight's shape")
    if fisher.shape != weight.shape or bool((fisher < 0).any()) or not bool(torch.isfinite(fisher).all()):
        raise TensorError(f"Fisher weights must be finite, >= 0 and of shape {tuple(weight.shape)}")
    return as_2d(fisher).to(w2d.dtype)


def search_multipliers(
    grid: GroupGrid, x: torch.Tensor, importance: torch.Tensor | None, lo: float, hi: float, points: int
) -> torch.Tensor:
    """Per-group clip multipliers (scale rows, groups) minimising the weighted squared error of `x`."""
    candidates = np.unique(np.concatenate([np.exp(np.linspace(np.log(lo), np.log(hi), points)), [1.0]]))
    base_scales, base_codes = grid.scales.clone(), grid.scale_codes.copy()
    base_offsets = None if grid.offsets is None else grid.offsets.clone()
    base_offset_codes = None if grid.offset_codes is None else grid.offset_codes.copy()
    best_err = best_mult = None
    for c in candidates:
        grid.fit(x, 0, float(c))
        _, values = grid.round_all(x)
        sq = (values - x).square()
        err = grid.group_sum(sq if importance is None else sq * importance)
        if best_err is None:
            best_err, best_mult = err, torch.full_like(err, float(c))
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_mult = torch.where(better, torch.full_like(err, float(c)), best_mult)
    grid.scales, grid.scale_codes, grid.offsets, grid.offset_codes = (
        base_scales, base_codes, base_offsets, base_offset_codes,
    )  # fmt: skip
    assert best_mult is not None
    return best_mult


def rtn(
    weight: torch.Tensor,
    config: RTNConfig | None = None,
    *,
    hessian: torch.Tensor | None = None,
    fisher: torch.Tensor | None = None,
    name: str = "weight",
) -> QuantizedTensor:
    """Quantize `weight` to the config's format, choosing each group's clip by weighted error when asked.

    Without search this is exactly `formats.quantize`. The search runs in the weight's own groups, so the
    result stores the same fields at the same bits.
    """
    config = config or RTNConfig()
    weight = check_weight(weight, name)
    grid = prepare(weight, config.spec)
    x = as_2d(weight.detach()).to(grid.scales.dtype if weight.dtype != torch.float64 else torch.float64)
    if config.search:
        imp = importance_weights(x, config.importance, hessian=hessian, fisher=fisher)
        lo, hi = config.bounds
        mult = search_multipliers(grid, x, imp, lo, hi, config.grid)
        grid.fit(x, 0, mult)
    codes, _ = grid.round_all(x)
    return grid.assemble(codes)
