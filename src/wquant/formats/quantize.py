"""quantize(): a tensor → its stored fields, by the format primitives of `layout.py` in their plain order.

Fix the layout (budget step, outliers, fitted table, per-tensor factor), choose every group's scale (with
`+search`, after one tensor-wide clip multiplier is searched), round to nearest, assemble.
"""

from __future__ import annotations

import numpy as np
import torch

from wquant.formats.grids import UniformGrid
from wquant.formats.grouping import as_2d, compute_dtype
from wquant.formats.layout import TensorLayout, prepare_layout, reconstruct
from wquant.formats.quantized import QuantizedTensor
from wquant.formats.spec import FormatSpec, parse_spec
from wquant.validation import NanPolicy, check_tensor

#: Scale multipliers tried by +search: 17 log-spaced values in [1/4, 4], then a finer pass around the best.
SEARCH_COARSE = 2.0 ** np.linspace(-2, 2, 17)
SEARCH_FINE_POINTS = 9


def quantize(
    x: torch.Tensor,
    spec: FormatSpec | str,
    *,
    weights: torch.Tensor | None = None,
    nan_policy: NanPolicy = "raise",
    name: str = "tensor",
) -> QuantizedTensor:
    """Quantize `x` to `spec`. `weights` (same shape, ≥ 0) weight the squared error of +search and fitted grids.

    A budget spec (`uniform@3.5/...+coded`) gets the step whose coded size meets the bits/param target
    (`quantize_to_budget`); the returned tensor's spec names that step.
    """
    spec = parse_spec(spec)
    x = check_tensor(x, name, nan_policy=nan_policy)
    if isinstance(spec.element, UniformGrid) and spec.element.target_bits is not None:
        from wquant.formats.budget import quantize_to_budget

        return quantize_to_budget(x, spec, weights=weights, name=name)
    layout = prepare_layout(x, spec, weights=weights, name=name)
    work = layout.without_outliers(as_2d(x.detach()).to(compute_dtype(x.dtype)))
    multiplier = 1.0
    if layout.spec.scaling.search:
        w2d = None if weights is None else as_2d(weights.detach()).to(work.dtype)
        multiplier = search_multiplier(layout, work, w2d)
    scales = layout.choose_scales(work, multiplier, fit_factor=True)
    return layout.assemble(layout.encode(work, scales), scales)


def search_multiplier(layout: TensorLayout, x: torch.Tensor, weights: torch.Tensor | None) -> float:
    """Tensor-wide scale multiplier minimising the (weighted) squared error: coarse grid, then refine."""

    def error(c: float) -> float:
        # in float64: squared errors of large weights (1e20 and up) overflow float32 sums
        sq = (reconstruct(layout, x, layout.choose_scales(x, c, fit_factor=True)) - x).double().square()
        return float((sq if weights is None else sq * weights).sum())

    coarse = [error(float(c)) for c in SEARCH_COARSE]
    best = int(np.argmin(coarse))
    lo = SEARCH_COARSE[max(best - 1, 0)]
    hi = SEARCH_COARSE[min(best + 1, len(SEARCH_COARSE) - 1)]
    fine = np.exp(np.linspace(np.log(lo), np.log(hi), SEARCH_FINE_POINTS))
    errors = [error(float(c)) for c in fine]
    return float(fine[int(np.argmin(errors))])
