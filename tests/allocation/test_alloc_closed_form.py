"""Closed-form allocation against the formats.md C2 toy table and the high-rate model's own optimum."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wquant.allocation import am_gm_saving, closed_form_bits, model_kl

RMS = [0.02, 0.01, 0.04]
FISHER = [1e-5, 1e-3, 1e-6]
NUMEL = [1000, 3000, 4000]


def test_toy_table_matches_formats_md() -> None:
    alloc = closed_form_bits(NUMEL, RMS, FISHER, 4.0)
    assert alloc.delta == pytest.approx([-13.9487, -11.6267, -14.6096], abs=1e-4)
    assert alloc.offset == pytest.approx(17.4084, abs=1e-4)
    assert alloc.bits == pytest.approx([3.4598, 5.7817, 2.7988], abs=1e-4)
    rounded = np.clip(np.round(alloc.bits), 2, None)
    assert rounded.tolist() == [3, 6, 3]
    assert np.dot(NUMEL, alloc.bits) / sum(NUMEL) == pytest.approx(4.0, abs=1e-12)  # budget kept exactly


def test_closed_form_is_the_lagrangian_optimum() -> None:
    """Independent oracle: every budget-preserving move away from b* raises ½ Σ n w 2^(−2b)."""
    weights = [f * s * s for f, s in zip(FISHER, RMS, strict=True)]
    best = model_kl(NUMEL, weights, closed_form_bits(NUMEL, RMS, FISHER, 4.0).bits)
    rng = np.random.default_rng(0)
    b_star = np.array(closed_form_bits(NUMEL, RMS, FISHER, 4.0).bits)
    n = np.array(NUMEL, dtype=float)
    for _ in range(50):
        d = rng.normal(size=3)
        d -= n * (n @ d) / (n @ n)  # keep Σ n_t b_t fixed
        assert model_kl(NUMEL, weights, b_star + 0.1 * d) > best


def test_saving_is_half_log2_am_over_gm() -> None:
    weights = [f * s * s for f, s in zip(FISHER, RMS, strict=True)]
    allocated = model_kl(NUMEL, weights, closed_form_bits(NUMEL, RMS, FISHER, 4.0).bits)
    flat = model_kl(NUMEL, weights, [4.0] * 3)
    # equal-KL saving: flat bits b with ½Σ n w 2^(−2b) = allocated  ⇒  b − 4 = ½ log2(flat / allocated)
    saving = 0.5 * math.log2(flat / allocated)
    n = np.array(NUMEL, dtype=float)
    w = np.array(weights)
    by_hand = 0.5 * math.log2((n @ w / n.sum()) / 2 ** ((n @ np.log2(w)) / n.sum()))
    assert am_gm_saving(NUMEL, weights) == pytest.approx(by_hand, rel=1e-12)
    assert saving == pytest.approx(by_hand, rel=1e-9)
    assert by_hand == pytest.approx(1.0988, abs=1e-4)  # w = [4e-9, 1e-7, 1.6e-9]: AM 3.88e-8, log2 GM −26.8165


def test_equal_weights_save_nothing_and_get_equal_bits() -> None:
    alloc = closed_form_bits([10, 20], [0.1, 0.1], [1e-3, 1e-3], 3.0)
    assert alloc.bits == pytest.approx([3.0, 3.0])
    assert am_gm_saving([10, 20], [1.0, 1.0]) == pytest.approx(0.0, abs=1e-12)
