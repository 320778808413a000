"""Bit allocation under a budget: the Lagrangian closed form, and an exact-budget discrete solver.

Closed form (formats.md A3.1): minimising ½ Σ_t n_t F̄_t σ̂_t² ε² 2^(−2 b_t) subject to Σ n_t b_t = N b̄ gives
b_t = b̄ + δ_t − Σ n_u δ_u / Σ n_u with δ_t = log2 σ̂_t + ½ log2 F̄_t; it saves ½ log2(AM/GM) of
w_t = F̄_t σ̂_t² over equal bits. It is continuous and knows nothing of real formats, so rounding it misses the
budget (scales, tables and coded sizes are ignored).

The solver instead takes *measured* candidates per tensor — (exact stored bits, predicted ΔKL) from really
quantizing the tensor — and solves the multiple-choice knapsack min Σ cost s.t. Σ bits ≤ B:
1. each tensor keeps the lower convex hull of its (bits, cost) points;
2. all hull segments are sorted by slope (ΔKL per bit, most negative first) and taken in that order while
   they fit — the Lagrangian solution: optimal for the budget it spends, and no tensor's next step is
   cheaper per bit than another's last one;
3. the slack left (less than one segment) is filled greedily with any single-candidate change, hull or not,
   that fits and lowers the cost, repeated until nothing fits.
A DP over bits is exact but its table has as many cells as the budget has bits (10⁸ for a small LM); the
hull greedy is O(K log K) in the number of candidates, and its gap to the optimum is below one segment's
cost, which step 3 shrinks further.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from wquant.allocation.plan import WEIGHTINGS, CandidateTable, Plan, TensorPlan, Weighting
from wquant.errors import BudgetError, ParameterError
from wquant.formats import parse_spec
from wquant.validation import check_positive


@dataclass(frozen=True)
class ContinuousAllocation:
    """Closed-form bits per tensor: δ_t, the common offset, and b_t = b̄ + δ_t − offset_mean."""

    delta: tuple[float, ...]
    offset: float  # b̄ − n-weighted mean of δ; b_t = δ_t + offset
    bits: tuple[float, ...]


def closed_form_bits(
    numel: Sequence[int], rms: Sequence[float], fisher_mean: Sequence[float], mean_bits: float
) -> ContinuousAllocation:
    """Lagrangian optimum of A3.1 (ε_t dropped). Zero-Fisher tensors get −inf bits: they cost nothing."""
    n = torch.as_tensor(numel, dtype=torch.float64)
    sigma = torch.as_tensor(rms, dtype=torch.float64)
    fisher = torch.as_tensor(fisher_mean, dtype=torch.float64)
    if n.numel() == 0 or bool((n <= 0).any()) or bool((sigma < 0).any()) or bool((fisher < 0).any()):
        raise ParameterError("closed form needs ≥ 1 tensor, positive sizes, and non-negative RMS and Fisher")
    delta = torch.log2(sigma) + 0.5 * torch.log2(fisher)
    live = torch.isfinite(delta)
    if not bool(live.any()):
        raise ParameterError("every tensor has zero Fisher or zero RMS; the allocation is undefined")
    offset = mean_bits - float((n[live] * delta[live]).sum() / n[live].sum())
    bits = delta + offset
    return ContinuousAllocation(tuple(delta.tolist()), offset, tuple(bits.tolist()))


def am_gm_saving(numel: Sequence[int], weights: Sequence[float]) -> float:
    """½ log2(AM_n(w)/GM_n(w)): bits/param saved by continuous allocation at equal predicted KL."""
    n = torch.as_tensor(numel, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64)
    if bool((w <= 0).any()):
        raise ParameterError("AM/GM saving needs positive weights F̄·RMS²")
    am = float((n * w).sum() / n.sum())
    log_gm = float((n * torch.log2(w)).sum() / n.sum())
    return 0.5 * (math.log2(am) - log_gm)


def model_kl(numel: Sequence[int], weights: Sequence[float], bits: Sequence[float], epsilon: float = 1.0) -> float:
    """½ Σ n_t w_t ε² 2^(−2 b_t): the high-rate predicted KL of an allocation (for checks on toy inputs)."""
    n = torch.as_tensor(numel, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64)
    b = torch.as_tensor(bits, dtype=torch.float64)
    return float(0.5 * (n * w * epsilon**2 * torch.exp2(-2 * b)).sum())


@dataclass(frozen=True)
class Option:
    """One way to store one tensor: exact stored bits and predicted ΔKL."""

    bits: int
    cost: float


def lower_hull(options: Sequence[Option]) -> list[int]:
    """Indices of the lower convex hull of (bits, cost), bits ascending, cost strictly falling."""
    order = sorted(range(len(options)), key=lambda i: (options[i].bits, options[i].cost))
    hull: list[int] = []
    for i in order:
        o = options[i]
        if hull and o.cost >= options[hull[-1]].cost:
            continue  # dominated: more bits, no better
        while len(hull) >= 2:
            a, b = options[hull[-2]], options[hull[-1]]
            # b lies on or above the segment a→o: drop it (cross product in (bits, cost))
            if (b.cost - a.cost) * (o.bits - a.bits) >= (o.cost - a.cost) * (b.bits - a.bits):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def solve_budget(choices: Sequence[Sequence[Option]], budget_bits: int) -> tuple[int, ...]:
    """Index of the chosen option per tensor, with Σ bits ≤ budget_bits and small Σ cost (module docstring).

    Raises BudgetError naming the minimum achievable total when even the cheapest options exceed the budget.
    """
    if not choices or any(len(c) == 0 for c in choices):
        raise ParameterError("every tensor needs at least one candidate format")
    cheapest = [min(range(len(c)), key=lambda i, c=c: (c[i].bits, c[i].cost)) for c in choices]
    floor = sum(c[i].bits for c, i in zip(choices, cheapest, strict=True))
    if floor > budget_bits:
        raise BudgetError(f"the cheapest formats need {floor} bits, above the budget of {budget_bits}")
    hulls = [lower_hull(c) for c in choices]
    segments = []  # (slope, tensor, hull position of the upgrade's target)
    for t, (c, h) in enumerate(zip(choices, hulls, strict=True)):
        for k in range(1, len(h)):
            a, b = c[h[k - 1]], c[h[k]]
            segments.append(((b.cost - a.cost) / (b.bits - a.bits), t, k))
    segments.sort(key=lambda s: (s[0], s[1], s[2]))
    position = [0] * len(choices)
    chosen = [h[0] for h in hulls]
    spent = sum(c[i].bits for c, i in zip(choices, chosen, strict=True))
    for _slope, t, k in segments:
        if position[t] != k - 1:
            continue  # an earlier segment of this tensor was refused: later ones cannot follow
        extra = choices[t][hulls[t][k]].bits - choices[t][chosen[t]].bits
        if spent + extra > budget_bits:
            continue  # does not fit; a cheaper segment of another tensor still may
        spent += extra
        position[t] = k
        chosen[t] = hulls[t][k]
    return _fill(choices, chosen, budget_bits - spent)


def _fill(choices: Sequence[Sequence[Option]], chosen: list[int], slack: int) -> tuple[int, ...]:
    """Spend the leftover bits: best single change (any candidate) that fits and lowers the cost, repeated."""
    while True:
        best: tuple[float, int, int] | None = None
        for t, c in enumerate(choices):
            now = c[chosen[t]]
            for i, o in enumerate(c):
                extra = o.bits - now.bits
                gain = now.cost - o.cost
                if extra <= slack and gain > 0 and (best is None or gain > best[0]):
                    best = (gain, t, i)
        if best is None:
            return tuple(chosen)
        _, t, i = best
        slack -= choices[t][i].bits - choices[t][chosen[t]].bits
        chosen[t] = i


def _closed_form(table: CandidateTable, budget: float) -> tuple[float, ...]:
    """The closed form's b_t for reference; NaN when it is undefined (every tensor with zero Fisher)."""
    n = [t.numel for t in table.tensors]
    mean_bits = (budget * table.params - table.fixed_bits) / sum(n)
    try:
        return closed_form_bits(n, [t.rms for t in table.tensors], [t.fisher_mean for t in table.tensors],
                                mean_bits).bits  # fmt: skip
    except ParameterError:
        return (math.nan,) * len(n)


def _plan(table: CandidateTable, budget: float, chosen: Sequence[int], weighting: Weighting) -> Plan:
    continuous = _closed_form(table, budget)
    rows = []
    for t, i, b in zip(table.tensors, chosen, continuous, strict=True):
        c = t.candidates[i]
        rows.append(
            TensorPlan(
                t.name, t.numel, t.fisher_mean, t.rms, b, c.spec, c.bits, c.sq_error, t.cost(c, weighting), c.family
            )
        )
    return Plan(budget, tuple(rows), table.fixed_bits, table.params, table.targets, weighting, table.mode)


def allocate(table: CandidateTable, budget: float, weighting: Weighting = "mean") -> Plan:
    """The plan with measured all-in bits/param ≤ budget that minimises the summed cost (module docstring).

    weighting: "measured" (each candidate's measured output distortion, after `measure_sensitivity`), or the
    Fisher proxy "mean" / "diag".
    """
    check_positive(budget, "budget")
    if weighting not in WEIGHTINGS:
        raise ParameterError(f"weighting {weighting!r} unknown; valid: {', '.join(WEIGHTINGS)}")
    limit = table.budget_bits(budget)
    lowest = table.min_bits_per_param()
    if limit < sum(min(c.bits for c in t.candidates) for t in table.tensors):
        raise BudgetError(
            f"budget {budget} bits/param is below the cheapest candidate formats: the minimum achievable is "
            f"{lowest:.4f} bits/param all-in (unquantized parameters cost {table.fixed_bits / table.params:.4f}); "
            f"raise the budget or add a smaller format"
        )
    options = [[Option(c.bits, t.cost(c, weighting)) for c in t.candidates] for t in table.tensors]
    return _plan(table, budget, solve_budget(options, limit), weighting)


def uniform_plan(table: CandidateTable, spec: str, weighting: Weighting = "mean") -> Plan:
    """Every tensor in one candidate format (the baseline the allocation is compared with)."""
    wanted = parse_spec(spec).to_string()
    chosen = []
    for t in table.tensors:
        match = [i for i, c in enumerate(t.candidates) if c.source == wanted]
        if not match:
            raise ParameterError(f"{spec!r} is not among the measured candidates")
        chosen.append(match[0])
    plan = _plan(table, 0.0, chosen, weighting)
    return replace(plan, budget=plan.bits_per_param)  # its own size is its budget; closed form kept for reference
