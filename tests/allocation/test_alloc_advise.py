"""Plans on a tiny Llama: exact budget landing, measured bits = planned bits, determinism, bad budgets."""

from __future__ import annotations

import pytest
from alloc_helpers import TEXT, make_llama

from wquant.allocation import (
    CausalProbe,
    FisherConfig,
    Plan,
    allocate,
    bits_at_distortion,
    check_prediction,
    distortion_at_bits,
    estimate_fisher,
    measure_candidates,
    spearman,
    uniform_plan,
)
from wquant.errors import BudgetError, SpecError
from wquant.models import model_bits, quantize_

FORMATS = ("int{b}/block32:absmax:bf16",)
BITS = (2, 3, 4, 5, 6, 8)


@pytest.fixture(scope="module")
def table(char_tok):  # noqa: ANN001, ANN201
    """Measured once per module on a fresh seeded model (identical to every `tiny_llama`)."""
    tiny_llama = make_llama(char_tok)
    fisher = estimate_fisher(tiny_llama, char_tok, TEXT, "causal-lm", FisherConfig(window=32, max_windows=12))
    return measure_candidates(tiny_llama, fisher, FORMATS, BITS)


@pytest.mark.parametrize("budget", [3.1, 3.5, 4.0, 5.37])
def test_plan_lands_on_the_budget_and_the_applied_model_agrees(tiny_llama, table, budget: float) -> None:  # noqa: ANN001
    plan = allocate(table, budget)
    assert plan.bits_per_param <= budget
    slack = budget * plan.params - plan.total_bits
    # as close as the formats allow: no tensor has a better candidate that fits in what is left
    for t, row in zip(plan.tensors, table.tensors, strict=True):
        for c in row.candidates:
            if row.cost(c, "mean") < t.predicted_kl:
                assert c.bits - t.bits > slack
    quantize_(tiny_llama, plan.quantize_config())
    plan.check_applied(tiny_llama)
    measured = model_bits(tiny_llama)
    assert measured.bits == plan.total_bits and measured.bits_per_param <= budget


def test_allocation_beats_uniform_on_predicted_kl_at_no_more_bits(table) -> None:  # noqa: ANN001
    for b in (3, 4, 5):
        uniform = uniform_plan(table, f"int{b}/block32:absmax:bf16")
        plan = allocate(table, uniform.bits_per_param)
        assert plan.total_bits <= uniform.total_bits
        assert plan.predicted_kl < uniform.predicted_kl


def test_same_inputs_same_plan_and_json_round_trip(tiny_llama, char_tok, table) -> None:  # noqa: ANN001
    again = measure_candidates(
        tiny_llama,
        estimate_fisher(tiny_llama, char_tok, TEXT, "causal-lm", FisherConfig(window=32, max_windows=12)),
        FORMATS,
        BITS,
    )
    a, b = allocate(table, 4.0), allocate(again, 4.0)
    assert a == b
    assert Plan.from_json(a.to_json()) == a


def test_budget_below_cheapest_format_names_the_minimum(table) -> None:  # noqa: ANN001
    lowest = table.min_bits_per_param()
    with pytest.raises(BudgetError, match=f"minimum achievable is {lowest:.4f}"):
        allocate(table, lowest - 0.01)
    assert allocate(table, lowest).bits_per_param <= lowest
    with pytest.raises(SpecError, match="int{b}"):
        measure_candidates(None, None, ("int{b}/blockX",), (4,))  # type: ignore[arg-type]


def test_prediction_check_runs_and_interpolation_is_log_linear(tiny_llama, char_tok, table) -> None:  # noqa: ANN001
    probe = CausalProbe(tiny_llama, char_tok, TEXT, window=32, max_windows=4)
    check = check_prediction(tiny_llama, allocate(table, 4.0), probe)
    assert len(check.measured) == len(table.tensors) and check.measured_total > 0
    assert -1 <= check.rank_correlation <= 1
    assert probe(tiny_llama) == pytest.approx(0.0, abs=1e-9)  # the model was restored after each perturbation
    points = [(3.0, 0.04), (4.0, 0.01), (5.0, 0.0025)]
    assert distortion_at_bits(points, 3.5) == pytest.approx(0.02)
    assert bits_at_distortion(points, 0.005) == pytest.approx(4.5)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
