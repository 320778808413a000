"""Round-to-nearest with a per-group clip search: the cheapest data-aware baseline for any format.

Absmax scales waste grid levels on a block's single largest weight; shrinking the scale clips that weight
but refines every other one. Which trade wins depends on which weights matter, so the error is weighted:
ones (plain MSE), |w| (large weights matter more), the diagonal of the layer Hessian (mean squared input
per column, llama.cpp's imatrix idea) or a Fisher estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from wquant.algorithms.common import (
    best_scales_per_group,
    check_hessian,
    check_weight,
    refuse_clip_search_on_unbounded_grid,
)
from wquant.algorithms.registry import Quantized, hessian_of, register
from wquant.algorithms.statistics import LayerStatistics
from wquant.errors import ParameterError, TensorError
from wquant.formats import (
    DEFAULT_FORMAT,
    FormatSpec,
    GroupScales,
    QuantizedTensor,
    TensorLayout,
    as_2d,
    compute_dtype,
    parse_spec,
    prepare_layout,
    quantize,
)
from wquant.formats.fit import FIT_MULTIPLIERS
from wquant.formats.layout import reconstruct
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

    format: str | FormatSpec = DEFAULT_FORMAT
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
        return False  # a Hessian-weighted search without inputs falls back to plain MSE (noted per layer)

    @property
    def uses_calibration(self) -> bool:
        return self.search and self.importance == "hessian"

    def with_format(self, spec: FormatSpec | str) -> RTNConfig:
        return replace(self, format=parse_spec(spec))


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


def search_scales(
    layout: TensorLayout, x: torch.Tensor, importance: torch.Tensor | None, lo: float, hi: float, points: int
) -> GroupScales:
    """Per group, the scales of the clip multiplier in [lo, hi] (1.0 always tried) with the least weighted error.

    x: (rows, k) values with outliers zeroed, starting on a group boundary; outlier positions (stored
    exactly, whatever the scale) do not count. importance: (rows, k) weights of the squared error, or None.
    """
    candidates = np.unique(np.concatenate([np.exp(np.linspace(np.log(lo), np.log(hi), points)), [1.0]]))
    mask = layout.outlier_mask()
    keep = None if mask is None else (~mask[:, : x.shape[1]]).to(x.dtype)
    weight = importance if keep is None else (keep if importance is None else importance * keep)
    if layout.spec.scaling.two_level:  # block scales share a super-block number: fit them per block, together
        few = np.exp(np.linspace(np.log(lo), np.log(hi), min(points, 16)))
        fit = tuple(float(c) for c in np.unique(np.concatenate([few, FIT_MULTIPLIERS])))
        return layout.choose_scales(x, importance=weight, candidates=fit)

    def group_error(scales: GroupScales) -> torch.Tensor:
        sq = (reconstruct(layout, x, scales) - x).square()
        return layout.group_sum(sq if weight is None else sq * weight)

    return best_scales_per_group(layout, x, candidates.tolist(), group_error)


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
    if not config.search:
        return quantize(weight, config.spec, name=name)
    layout = prepare_layout(weight, config.spec, name=name)
    x = layout.without_outliers(as_2d(weight.detach()).to(compute_dtype(weight.dtype)))
    imp = importance_weights(x, config.importance, hessian=hessian, fisher=fisher)
    lo, hi = config.bounds
    scales = search_scales(layout, x, imp, lo, hi, config.grid)
    return layout.assemble(layout.encode(x, scales), scales)


def _rtn_handler(weight: torch.Tensor, config: RTNConfig, stats: LayerStatistics | None, name: str) -> Quantized:
    hessian = hessian_of(stats) if config.uses_calibration else None
    if config.uses_calibration and hessian is None:
        return Quantized(rtn(weight, replace(config, importance="ones"), name=name), "no inputs: plain-MSE clip")
    return Quantized(rtn(weight, config, hessian=hessian, name=name))


register("rtn", RTNConfig, _rtn_handler, from_format=lambda spec: RTNConfig(spec, search=False),
         summary="round to nearest (data-free)")  # fmt: skip
register("rtn-search", RTNConfig, _rtn_handler, from_format=lambda spec: RTNConfig(spec, search=True),
         summary="round to nearest, each group's clip searched on the weight MSE (data-free)")  # fmt: skip
