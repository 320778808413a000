"""Measured sensitivities: the output distortion each tensor causes on its own in each candidate format, and the
decision between the allocation and the best uniform plan.

Why not the Fisher proxy alone: ½ Σ F_ii δ_i² is a second-order expansion around the trained weights with an
estimated diagonal. Measured on MiniLM (each tensor perturbed alone with coded and int g64 grids at 2-6 bits,
16 WikiText paragraphs), real/predicted distortion is 1.0-2.4× depending on the tensor, nearly constant across
bit widths, and grows at 2 bits where the perturbation stops being small; an unused tensor (BERT's pooler under
mean pooling) has zero Fisher and really costs nothing. A factor of 2 between two tensors moves half a bit to
the wrong one, which is how the proxy-allocated plan lost to one uniform grid. So:

1. every tensor is perturbed alone at a few anchor candidates and the output distortion measured (one forward
   each, earlier blocks replayed: `probe.py`);
2. its curve log D = f(log u), u the Fisher-weighted error Σ F_ii δ_i² (the plain ‖δ‖² when the Fisher does
   not see the tensor), is interpolated through the anchors — log-linear between them, slope 1 (the
   second-order limit, D ∝ u) below the smallest error, the last segment's slope clamped to [1, 2] above the
   largest — and gives every candidate of every family its distortion (the Fisher corrected per tensor by
   measured points);
3. `allocate(table, budget, "measured")` minimises the sum of these, and `decide` measures the whole plan
   against the best uniform plan of every family at no more bits and ships the better one.

Per-tensor distortions add only approximately (cross terms, saturation of 1 − cos); step 3 is why the shipped
plan never loses to a uniform plan on the probe.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from torch import nn

from wquant.allocation.allocate import allocate, uniform_plan
from wquant.allocation.plan import Candidate, CandidateTable, Plan, TensorCandidates
from wquant.allocation.probe import measure_plans, stored_values, substituted
from wquant.errors import ParameterError
from wquant.models import weight_sites

#: Slope bounds of the measured curve beyond its largest anchor (d log D / d log u): 1 is the second-order
#: limit; measured curves steepen at low bits, and 2 keeps one noisy segment from extrapolating wildly.
MAX_SLOPE = 2.0


def curve_error(tensor: TensorCandidates, c: Candidate) -> float:
    """The error a tensor's sensitivity curve is drawn against: Fisher-weighted where the Fisher sees the
    tensor (every candidate has a positive weighted error), else the plain squared error."""
    if all(x.weighted_error > 0 for x in tensor.candidates):
        return c.weighted_error
    return c.sq_error


def interpolate_curve(points: Sequence[tuple[float, float]]) -> Callable[[float], float]:
    """D(u) through measured (u, D) points, log-log linear (module docstring, step 2). Points with D ≤ 0 or
    u ≤ 0 carry no slope information and are dropped; with none left every error costs 0 (an unused tensor)."""
    pts = sorted((u, d) for u, d in points if u > 0 and d > 0)
    clean: list[tuple[float, float]] = []
    for u, d in pts:  # non-decreasing: a noisy anchor never makes more error cost less
        if clean and u == clean[-1][0]:
            d = max(d, clean.pop()[1])
        clean.append((u, max(d, clean[-1][1]) if clean else d))
    if not clean:
        return lambda u: 0.0
    logs = [(math.log(u), math.log(d)) for u, d in clean]
    xs = [x for x, _ in logs]
    last = 1.0
    if len(logs) >= 2:
        (x0, y0), (x1, y1) = logs[-2], logs[-1]
        last = min(max((y1 - y0) / (x1 - x0), 1.0), MAX_SLOPE)

    def curve(u: float) -> float:
        if u <= 0:
            return 0.0
        x = math.log(u)
        if x <= xs[0]:
            return math.exp(logs[0][1] + (x - xs[0]))
        if x >= xs[-1]:
            return math.exp(logs[-1][1] + last * (x - xs[-1]))
        k = bisect.bisect_right(xs, x)
        (xa, ya), (xb, yb) = logs[k - 1], logs[k]
        return math.exp(ya + (yb - ya) * (x - xa) / (xb - xa))

    return curve


def anchor_candidates(tensor: TensorCandidates, levels: Sequence[float], family: str | None = None) -> list[int]:
    """Indices of the candidates measured for this tensor: per level (bits/param), the candidate of `family`
    (default: the family with the most candidates) nearest to it."""
    families = [c.family for c in tensor.candidates]
    family = family if family is not None else max(dict.fromkeys(families), key=families.count)
    pool = [i for i, c in enumerate(tensor.candidates) if c.family == family] or list(range(len(tensor.candidates)))
    picked: list[int] = []
    for level in levels:
        i = min(pool, key=lambda j: (abs(tensor.candidates[j].bits / tensor.numel - level), j))
        if i not in picked:
            picked.append(i)
    return picked


def measure_sensitivity(
    model: nn.Module,
    table: CandidateTable,
    probe: Callable[..., float],
    levels: Sequence[float],
    *,
    family: str | None = None,
    log: Callable[[str], None] | None = None,
) -> CandidateTable:
    """The table with every candidate's output distortion filled in from measured anchors (module docstring).

    levels: bits/param at which each tensor is measured (one forward per tensor and level), e.g. the budget's
    per-tensor bits ± 1. probe(model, perturbed=name) measures the distortion with only that weight changed.
    """
    if not levels:
        raise ParameterError("give at least one bits/param level to measure sensitivities at")
    sites = {s.name: s for s in weight_sites(model, table.targets)}
    rows = []
    for t in table.tensors:
        weight = sites[t.name].weight().float().contiguous()
        points = []
        for i in anchor_candidates(t, levels, family):
            c = t.candidates[i]
            value = stored_values(weight, c.spec, t.name)
            with substituted(model, {t.name: value}):
                points.append((curve_error(t, c), probe(model, perturbed=t.name)))
        curve = interpolate_curve(points)
        cands = tuple(replace(c, distortion=curve(curve_error(t, c))) for c in t.candidates)
        rows.append(replace(t, candidates=cands, anchors=tuple(points)))
        if log is not None:
            log(f"{t.name}: " + ", ".join(f"{d:.3g}" for _, d in points))
    return replace(table, tensors=tuple(rows))


@dataclass(frozen=True)
class Contender:
    """A whole-model plan and the distortion measured with all of it applied."""

    label: str
    plan: Plan
    distortion: float


@dataclass(frozen=True)
class Decision:
    """The shipped plan: the allocation, unless a uniform plan at no more bits measured better."""

    shipped: Contender
    allocation: Contender
    uniform: tuple[Contender, ...]  # the best-fitting uniform plan of every family

    @property
    def best_uniform(self) -> Contender | None:
        return min(self.uniform, key=lambda c: (c.distortion, -c.plan.total_bits), default=None)

    @property
    def reason(self) -> str:
        best = self.best_uniform
        if best is None:
            return "no uniform plan fits the budget; the allocation is the only candidate"
        if self.shipped is self.allocation:
            return (f"the allocation measured {self.allocation.distortion:.4g} against {best.distortion:.4g} for the "
                    f"best uniform plan ({best.label}) at no more bits")  # fmt: skip
        return (f"the best uniform plan ({best.label}) measured {best.distortion:.4g}, the allocation "
                f"{self.allocation.distortion:.4g}: the uniform plan is shipped")  # fmt: skip


def uniform_plans(table: CandidateTable, budget: float) -> list[tuple[str, Plan]]:
    """Per family, (label, plan) of the uniform plan — one candidate source on every tensor — with the most bits
    within the budget."""
    limit = table.budget_bits(budget) + table.fixed_bits
    shared = set.intersection(*({c.source for c in t.candidates} for t in table.tensors))
    best: dict[str, tuple[str, Plan]] = {}
    weighting = "measured" if table.measured else "mean"
    for source in sorted(shared):
        plan = uniform_plan(table, source, weighting)  # type: ignore[arg-type]
        family = plan.tensors[0].family
        if plan.total_bits <= limit and (family not in best or plan.total_bits > best[family][1].total_bits):
            best[family] = (f"uniform {source}", plan)
    return list(best.values())


def decide(
    model: nn.Module,
    table: CandidateTable,
    probe: Callable[..., float],
    budget: float,
    *,
    weighting: str = "measured",
) -> Decision:
    """Allocate at the budget, measure the plan and every family's best uniform plan at no more bits with the
    whole plan applied, and ship the one with the lower distortion (ties go to the allocation, which then is
    no worse)."""
    plan = allocate(table, budget, weighting)  # type: ignore[arg-type]
    labelled = [("allocation", plan), *uniform_plans(table, budget)]
    measured = measure_plans(model, [p for _, p in labelled], probe)
    allocation, *uniform = (Contender(label, p, d) for (label, p), d in zip(labelled, measured, strict=True))
    best = min(uniform, key=lambda c: (c.distortion, -c.plan.total_bits), default=None)
    shipped = allocation if best is None or allocation.distortion <= best.distortion else best
    return Decision(shipped, allocation, tuple(uniform))


__all__ = [
    "Contender",
    "Decision",
    "anchor_candidates",
    "curve_error",
    "decide",
    "interpolate_curve",
    "measure_sensitivity",
    "uniform_plans",
]
