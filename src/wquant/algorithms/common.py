"""What every algorithm checks and shares: valid weights and Hessians, and meeting a coded bits budget.

Algorithms decide codes and scales their own way but all build on the format primitives
(`wquant.formats.prepare_layout` and `TensorLayout`), so each returns a genuine `QuantizedTensor`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

import torch

from wquant.errors import BudgetError, ParameterError, TensorError
from wquant.formats import FormatSpec, GroupScales, QuantizedTensor, TensorLayout, quantize
from wquant.formats.grids import UniformGrid
from wquant.validation import check_tensor


def check_weight(weight: object, name: str) -> torch.Tensor:
    """A finite float weight of at least one dimension (scalars have no channels to quantize)."""
    w = check_tensor(weight, name)
    if w.ndim == 0:
        raise TensorError(f"{name}: a scalar has no channels; give a 1-D or 2-D weight")
    return w


def check_hessian(hessian: object, cols: int, name: str) -> torch.Tensor:
    """A finite square (in, in) matrix matching the weight's input dimension."""
    h = check_tensor(hessian, f"{name} Hessian")
    if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] != cols:
        raise TensorError(f"{name}: Hessian must be ({cols}, {cols}) for a weight with {cols} inputs, "
                          f"got {tuple(h.shape)}")  # fmt: skip
    return h


Solved = TypeVar("Solved")
BUDGET_TOLERANCE = 0.01  # an algorithm at a budget lands in [target·(1 − tol), target]
BUDGET_SOLVES = 8


def is_budget_spec(spec: FormatSpec) -> bool:
    """A coded uniform grid given as a bits/param budget (`uniform@3.5/...+coded`) rather than a step."""
    return isinstance(spec.element, UniformGrid) and spec.element.target_bits is not None


def solve_at_budget(
    weight: torch.Tensor,
    spec: FormatSpec,
    solve: Callable[[FormatSpec], Solved],
    stored: Callable[[Solved], QuantizedTensor],
    *,
    name: str,
) -> Solved:
    """Run `solve` on step specs until its coded size meets the budget of a `uniform@<bits>` spec.

    An algorithm that moves codes (GPTQ spreads them) changes their entropy, so the step that meets the budget
    under plain rounding misses it by up to ~5 % after the algorithm. Start from that step and take secant
    steps on (log step, bits): at high rate bits fall by one per doubling of the step, so 2–4 solves usually
    land within BUDGET_TOLERANCE. Returns the largest result not over the budget.
    """
    target = spec.element.target_bits  # type: ignore[union-attr]
    floor = target * (1 - BUDGET_TOLERANCE)
    aim = target * (1 - BUDGET_TOLERANCE / 2)
    log_step = math.log2(quantize(weight, spec).spec.element.step)  # type: ignore[union-attr]
    best: tuple[float, Solved] | None = None
    tried: list[tuple[float, float]] = []
    for _ in range(BUDGET_SOLVES):
        step = float(f"{2.0**log_step:.6g}")  # short, reproducible spec strings
        result = solve(replace(spec, element=replace(spec.element, step=step, target_bits=None)))
        bits = stored(result).bits_per_param()
        if bits <= target and (best is None or bits > best[0]):
            best = (bits, result)
        if floor <= bits <= target:
            return result
        tried.append((math.log2(step), bits))
        if len(tried) >= 2 and tried[-1][1] != tried[-2][1]:
            (x0, y0), (x1, y1) = tried[-2], tried[-1]
            slope = min((y1 - y0) / (x1 - x0), -0.25)  # bits fall as the step grows; guard a flat coder
        else:
            slope = -1.0
        log_step = tried[-1][0] + (aim - bits) / slope
    if best is None or best[0] < target * (1 - 4 * BUDGET_TOLERANCE):
        got = "every result over it" if best is None else f"best {best[0]:.4f}"
        raise BudgetError(
            f"{name}: no grid step met {target} bits/param within {BUDGET_TOLERANCE:.0%} after {BUDGET_SOLVES} "
            f"solves ({got}); give a fixed step (uniform<step>/...) instead of a budget"
        )
    return best[1]


def best_scales_per_group(
    layout: TensorLayout,
    x: torch.Tensor,
    multipliers: Sequence[float],
    group_error: Callable[[GroupScales], torch.Tensor],
) -> GroupScales:
    """Per group, the scales of the clip multiplier whose error (scale rows, groups) is least; ties keep the
    earlier multiplier. Every clip search (plain, Fisher-weighted, Hessian-block) differs only in `group_error`."""
    best: GroupScales | None = None
    best_err = torch.empty(0)
    for c in multipliers:
        scales = layout.choose_scales(x, float(c))
        err = group_error(scales)
        if best is None:
            best, best_err = scales, err
        else:
            better = err < best_err
            best, best_err = best.where(better, scales), torch.where(better, err, best_err)
    if best is None:
        raise ParameterError("a clip search needs at least one multiplier")
    return best


def refuse_clip_search_on_unbounded_grid(spec: FormatSpec) -> None:
    """A clip search on a uniform grid would only shrink the step (less error, more bits): refuse it."""
    if isinstance(spec.element, UniformGrid):
        raise ParameterError(
            f"{spec.to_string()}: a uniform grid has no clip to search (its levels run as far as the data, so a "
            "smaller scale only means a finer step and more bits); turn the search off and set the precision "
            "with the step (uniform0.5) or a budget (uniform@3)"
        )
