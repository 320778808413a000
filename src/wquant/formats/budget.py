"""Meet a bits/param budget exactly with an entropy-coded uniform grid, by searching its step.

The coded size is measured, not estimated: every trial quantizes and entropy-codes the tensor, so the
result lands on the real size (tables, scales and container included). Coded size falls monotonically
(up to coder noise of a few bits) as the step grows, so a bracketing bisection on log(step) converges;
it aims at a quarter of `tolerance` below the target and settles for `tolerance` when the coder's size
stops moving with the step.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from wquant.errors import BudgetError
from wquant.formats.grids import UniformGrid
from wquant.formats.quantize import quantize
from wquant.formats.quantized import QuantizedTensor
from wquant.formats.spec import FormatSpec, parse_spec

MAX_TRIALS = 60


def quantize_to_budget(
    x: torch.Tensor,
    spec: FormatSpec | str,
    bits_per_param: float | None = None,
    *,
    tolerance: float = 0.005,
    weights: torch.Tensor | None = None,
    name: str = "tensor",
) -> QuantizedTensor:
    """Quantize with the largest-quality uniform step whose all-in size is in [target·(1-tol), target].

    `spec` is a coded uniform spec, either with a budget (`uniform@3.5/tensor:rms+coded`) or with any step
    plus `bits_per_param`. Raises BudgetError when even the coarsest grid exceeds the target (the scales,
    table and container alone cost more) or the target needs a finer grid than wquant allows.
    """
    spec = parse_spec(spec)
    grid = spec.element
    if not isinstance(grid, UniformGrid) or spec.coding is None:
        raise BudgetError(f"budget search needs a coded uniform grid (e.g. uniform@4/tensor:rms+coded), got {spec}")
    target = bits_per_param if bits_per_param is not None else grid.target_bits
    if target is None or not (0 < target <= 16):
        raise BudgetError(f"bits/param budget must be in (0, 16], got {target!r}")
    floor = target * (1 - tolerance)
    aim = target * (1 - tolerance / 4)

    def trial(log_step: float) -> QuantizedTensor:
        step = float(f"{math.exp(log_step):.6g}")  # a short, exactly reproducible spec string
        concrete = dataclasses.replace(spec, element=dataclasses.replace(grid, step=step, target_bits=None))
        return quantize(x, concrete, weights=weights, name=name)

    # high-rate guess for unit-scaled data: step ≈ √(2πe)·2^-R (ECSQ on a Gaussian), then bracket
    log_lo = log_hi = math.log(math.sqrt(2 * math.pi * math.e)) - target * math.log(2)
    q = trial(log_lo)
    trials = 1
    while q.bits_per_param() <= target:  # too coarse: make the step finer until the size exceeds the budget
        if aim <= q.bits_per_param():
            return q
        log_hi, log_lo = log_lo, log_lo - math.log(2)
        if log_lo < math.log(1e-6):
            raise BudgetError(f"{name}: {target} bits/param needs a step below 1e-6; use a smaller budget")
        q, trials = trial(log_lo), trials + 1
    over = q
    best: QuantizedTensor | None = None
    if log_hi == log_lo:  # the guess was too fine: coarsen until under budget
        while True:
            log_hi += math.log(2)
            if log_hi > math.log(1e3):
                raise BudgetError(
                    f"{name}: even the coarsest grid costs {over.bits_per_param():.4f} bits/param (scales, table "
                    f"and coder container included), above the budget of {target}"
                )
            q, trials = trial(log_hi), trials + 1
            if q.bits_per_param() <= target:
                best = q
                break
    while trials < MAX_TRIALS:
        if best is not None and best.bits_per_param() >= aim:
            return best
        mid = (log_lo + log_hi) / 2
        q, trials = trial(mid), trials + 1
        if q.bits_per_param() > target:
            log_lo = mid
        else:
            log_hi, best = mid, q
    if best is None or best.bits_per_param() < floor:
        got = "nothing under it" if best is None else f"{best.bits_per_param():.4f}"
        raise BudgetError(
            f"{name}: no step met {target} bits/param within {tolerance:.1%} in {MAX_TRIALS} trials ({got})"
        )
    return best
