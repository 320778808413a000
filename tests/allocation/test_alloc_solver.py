"""Exact-budget multiple-choice knapsack: never over budget, optimal where brute force can check it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from wquant.allocation import Option, lower_hull, solve_budget
from wquant.errors import BudgetError


def _brute(choices: list[list[Option]], budget: int) -> float:
    best = float("inf")
    for combo in itertools.product(*[range(len(c)) for c in choices]):
        bits = sum(choices[t][i].bits for t, i in enumerate(combo))
        if bits <= budget:
            best = min(best, sum(choices[t][i].cost for t, i in enumerate(combo)))
    return best


def _high_rate(n: list[int], w: list[float], widths: range, overhead: int = 16) -> list[list[Option]]:
    return [
        [Option(nt * b + overhead, 0.5 * nt * wt * 2.0 ** (-2 * b)) for b in widths]
        for nt, wt in zip(n, w, strict=True)
    ]


def test_lower_hull_drops_dominated_and_concave_points() -> None:
    opts = [Option(10, 5.0), Option(20, 2.0), Option(30, 1.9), Option(40, 0.5), Option(25, 6.0)]
    assert lower_hull(opts) == [0, 1, 3]


@pytest.mark.parametrize("seed", range(6))
def test_equal_sized_convex_instances_reach_the_brute_force_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = [64] * 4
    w = list(10 ** rng.uniform(-4, 0, size=4))
    choices = _high_rate(n, w, range(2, 8))
    for budget in (64 * 4 * 3 + 64, 64 * 4 * 4 + 64, 64 * 4 * 5 + 70):
        picked = solve_budget(choices, budget)
        bits = sum(choices[t][i].bits for t, i in enumerate(picked))
        cost = sum(choices[t][i].cost for t, i in enumerate(picked))
        assert bits <= budget
        assert cost == pytest.approx(_brute(choices, budget), rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_random_instances_stay_in_budget_and_near_optimum(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = list(rng.integers(20, 200, size=4))
    w = list(10 ** rng.uniform(-4, 0, size=4))
    choices = _high_rate(n, w, range(2, 8))
    budget = int(sum(n) * rng.uniform(3, 6))
    picked = solve_budget(choices, budget)
    bits = sum(choices[t][i].bits for t, i in enumerate(picked))
    cost = sum(choices[t][i].cost for t, i in enumerate(picked))
    optimum = _brute(choices, budget)
    assert bits <= budget
    assert cost <= 1.5 * optimum  # hull greedy + fill; the gap is below one hull segment
    # nothing left that would fit: no single upgrade fits in the remaining slack and lowers the cost
    for t, c in enumerate(choices):
        for o in c:
            if o.cost < c[picked[t]].cost:
                assert o.bits - c[picked[t]].bits > budget - bits


def test_budget_below_cheapest_names_the_minimum() -> None:
    choices = _high_rate([100, 100], [1.0, 1.0], range(2, 5))
    with pytest.raises(BudgetError, match="432 bits"):
        solve_budget(choices, 431)
    assert sum(choices[t][i].bits for t, i in enumerate(solve_budget(choices, 432))) == 432
