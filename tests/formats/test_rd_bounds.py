"""Rate–distortion limits against published numbers and closed forms derived independently here.

Oracles: anchors.md §3.2 (exact Gaussian ECSQ), §3.3 (Panter–Dite), formats.md C3 (high-rate R·2^b
constants), Shannon's Gaussian D(R), scipy's entropies, and the cube-root closure of Student-t densities.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import special, stats

from wquant.errors import ParameterError, TensorError
from wquant.formats import rd_bounds

# ------------------------------------------------------------------------------------ Gaussian identities


@pytest.mark.parametrize("variance", [1.0, 0.25, 9.0])
def test_gaussian_rate_and_distortion_are_inverse(variance: float) -> None:
    rates = np.array([0.0, 0.5, 1.0, 3.0, 8.0])
    distortion = rd_bounds.gaussian_distortion_rate(rates, variance)
    np.testing.assert_allclose(distortion, variance * 4.0**-rates, rtol=1e-12)
    np.testing.assert_allclose(rd_bounds.gaussian_rate_distortion(distortion, variance), rates, atol=1e-12)
    # Each extra bit buys exactly 6.02 dB.
    db_per_bit = 10 * math.log10(distortion[2] / distortion[3]) / (rates[3] - rates[2])
    assert db_per_bit == pytest.approx(6.0206, abs=1e-4)
    assert rd_bounds.gaussian_rate_distortion(2 * variance, variance) == 0.0


def test_gaussian_slb_is_tight() -> None:
    for d in (0.5, 0.01, 1e-4):
        slb = rd_bounds.shannon_lower_bound_rate(rd_bounds.normal_entropy_bits(), d)
        assert slb == pytest.approx(rd_bounds.gaussian_rate_distortion(d), abs=1e-12)


# ------------------------------------------------------------------------------------------- entropies


def test_differential_entropies_match_scipy() -> None:
    assert rd_bounds.normal_entropy_bits(4.0) == pytest.approx(stats.norm(scale=2).entropy() / math.log(2))
    b = math.sqrt(0.5)
    assert rd_bounds.laplace_entropy_bits() == pytest.approx(stats.laplace(scale=b).entropy() / math.log(2))
    for nu in (3.0, 5.0, 30.0):
        scale = math.sqrt((nu - 2) / nu)
        expected = stats.t(nu, scale=scale).entropy() / math.log(2)
        assert rd_bounds.student_t_entropy_bits(nu) == pytest.approx(expected, rel=1e-9)
        assert rd_bounds.source_entropy_bits(f"t:{nu:g}") == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------------------------ exact Gaussian ECSQ

ANCHOR_ECSQ = {2: (1.08245, 0.0889412), 3: (0.52243, 0.0222388), 4: (0.25902, 0.00555972), 6: (0.06459, 0.000347483)}


@pytest.mark.parametrize("rate", sorted(ANCHOR_ECSQ))
def test_exact_gaussian_ecsq_matches_anchors(rate: int) -> None:
    step, distortion = ANCHOR_ECSQ[rate]
    point = rd_bounds.gaussian_ecsq(rate)
    assert point.step == pytest.approx(step, abs=1e-5)
    assert abs(10 * math.log10(point.distortion / distortion)) < 0.05
    gap_db = 10 * math.log10(point.distortion / 4.0**-rate)
    assert gap_db == pytest.approx(1.53, abs=0.05)
    assert rd_bounds.gap_to_bound_db(rate, point.distortion, "normal") == pytest.approx(gap_db, abs=1e-9)
    # In bits at equal distortion the gap tends to ½·log2(πe/6) = 0.2546.
    assert rd_bounds.gap_to_bound_bits(rate, point.distortion, "normal") == pytest.approx(0.2546, abs=0.01)


def test_exact_ecsq_entropy_is_the_requested_rate() -> None:
    # Recompute the output entropy of the returned step from scratch (all cells, both signs).
    point = rd_bounds.gaussian_ecsq(3.0, variance=4.0)
    step = point.step / 2.0
    edges = (np.arange(-400, 401) + 0.5) * step
    probs = np.diff(stats.norm.cdf(np.concatenate([[-np.inf], edges, [np.inf]])))
    probs = probs[probs > 0]
    assert float(-(probs * np.log2(probs)).sum()) == pytest.approx(3.0, abs=1e-6)
    assert point.distortion == pytest.approx(4.0 * 0.0222388, rel=1e-4)


# --------------------------------------------------------------------------- high-rate constants (C3, §3.3)


def test_panter_dite_constants() -> None:
    assert rd_bounds.panter_dite_constant("normal") == pytest.approx(2.7207, abs=1e-4)
    assert rd_bounds.panter_dite_constant("laplace") == pytest.approx(4.5, abs=1e-12)
    # formats.md C3: R·2^b = √constant.
    assert math.sqrt(rd_bounds.panter_dite_constant("normal")) == pytest.approx(1.64945, abs=1e-5)
    assert math.sqrt(rd_bounds.panter_dite_constant("laplace")) == pytest.approx(2.12132, abs=1e-5)
    assert rd_bounds.panter_dite_distortion(3, "normal", variance=2.0) == pytest.approx(2 * 2.7207 / 64, rel=1e-4)


@pytest.mark.parametrize("nu", [3.0, 5.0, 7.0])
def test_panter_dite_student_t_matches_cube_root_closure(nu: float) -> None:
    """p^(1/3) of t(ν, s) is an unnormalised t(ν′ = (ν−2)/3, s′ = s√(ν/ν′)): ∫p^(1/3) in closed form."""

    def norm_const(dof: float) -> float:
        return math.exp(special.gammaln((dof + 1) / 2) - special.gammaln(dof / 2)) / math.sqrt(dof * math.pi)

    s = math.sqrt((nu - 2) / nu)
    nu_prime = (nu - 2) / 3
    s_prime = s * math.sqrt(nu / nu_prime)
    integral = (norm_const(nu) / s) ** (1 / 3) * s_prime / norm_const(nu_prime)
    assert rd_bounds.panter_dite_constant(f"t:{nu:g}") == pytest.approx(integral**3 / 12, rel=1e-6)


def test_panter_dite_heavy_dof_approaches_normal() -> None:
    assert rd_bounds.panter_dite_constant("t:2000") == pytest.approx(2.7207, rel=2e-3)


@pytest.mark.parametrize(("source", "constant"), [("normal", 1.19302), ("laplace", 1.10973)])
def test_ecsq_high_rate_constant(source: str, constant: float) -> None:
    h = rd_bounds.source_entropy_bits(source)
    for rate in (2.0, 5.0):
        d = rd_bounds.ecsq_high_rate_distortion(rate, h)
        assert math.sqrt(d) * 2**rate == pytest.approx(constant, abs=1e-5)


def test_exact_ecsq_approaches_high_rate_formula() -> None:
    high = rd_bounds.ecsq_high_rate_distortion(8, rd_bounds.normal_entropy_bits())
    assert rd_bounds.gaussian_ecsq(8).distortion == pytest.approx(high, rel=2e-3)


# ------------------------------------------------------------------------------------------ Blahut–Arimoto


@pytest.fixture(scope="module")
def gaussian_samples() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(400_000)


@pytest.mark.parametrize("rate", [1, 2, 3, 4])
def test_blahut_arimoto_recovers_gaussian_distortion_rate(gaussian_samples: np.ndarray, rate: int) -> None:
    point = rd_bounds.empirical_distortion_at_rate(gaussian_samples, rate)
    shannon = gaussian_samples.var() * 4.0**-rate
    assert point.distortion == pytest.approx(shannon, rel=0.01)
    assert point.bound_gap_bits < 2e-3  # BA's own certificate
    assert point.rate_lower_bits <= rate <= point.rate_upper_bits + 1e-9


def test_blahut_arimoto_rate_at_distortion_and_curve(gaussian_samples: np.ndarray) -> None:
    variance = gaussian_samples.var()
    point = rd_bounds.empirical_rate_at_distortion(gaussian_samples, 0.01)
    assert point.rate_bits == pytest.approx(0.5 * math.log2(variance / 0.01), abs=0.01)
    slopes = np.array([1.0, 10.0, 100.0])  # −dR/dD in bits; for a Gaussian D = 1/(2 ln2 · slope)
    curve = rd_bounds.empirical_rate_distortion_curve(gaussian_samples[:100_000], slopes)
    for pt, slope in zip(curve, slopes, strict=True):
        assert pt.distortion == pytest.approx(1 / (2 * math.log(2) * slope), rel=0.02)
        assert pt.rate_bits == pytest.approx(0.5 * math.log2(variance / pt.distortion), abs=0.01)
    assert [pt.rate_bits for pt in curve] == sorted(pt.rate_bits for pt in curve)


def test_blahut_arimoto_on_a_known_discrete_source() -> None:
    """Equiprobable ±1 with reproduction ±1 under squared error is a binary source with Hamming cost 4:
    R(D) = 1 − H_b(D/4)."""
    point, _ = rd_bounds.blahut_arimoto(
        np.array([-1.0, 1.0]), np.array([0.5, 0.5]), np.array([-1.0, 1.0]), slope_bits=2.0, tolerance_bits=1e-9
    )
    flip = point.distortion / 4
    binary_entropy = -(flip * math.log2(flip) + (1 - flip) * math.log2(1 - flip))
    assert point.rate_bits == pytest.approx(1 - binary_entropy, abs=1e-6)


@pytest.mark.parametrize("rate", [1, 2, 3, 4])
def test_laplace_rate_distortion_between_slb_and_ecsq(rate: int) -> None:
    samples = np.random.default_rng(1).laplace(scale=math.sqrt(0.5), size=300_000)
    h = rd_bounds.laplace_entropy_bits(samples.var())
    d = rd_bounds.empirical_distortion_at_rate(samples, rate).distortion
    slb = 2 ** (2 * h) / (2 * math.pi * math.e) * 4.0**-rate
    ecsq = rd_bounds.ecsq_high_rate_distortion(rate, h)
    assert slb * (1 - 0.01) <= d < ecsq


def test_laplace_exact_rate_distortion_exceeds_slb() -> None:
    for d in (0.2, 0.02, 0.004):
        exact = rd_bounds.laplace_rate_distortion(d)
        slb = rd_bounds.laplace_rate_distortion_slb(d)
        assert slb - 0.01 <= exact <= slb + 0.1  # SLB is asymptotically tight for Laplace
    assert rd_bounds.laplace_distortion_rate(2.0) == pytest.approx(
        rd_bounds.laplace_distortion_rate(2.0, variance=3.0) / 3.0, rel=1e-9
    )


def test_gap_to_bound_for_samples_and_named_sources(gaussian_samples: np.ndarray) -> None:
    point = rd_bounds.gaussian_ecsq(4)
    by_samples = rd_bounds.gap_to_bound_bits(4, point.distortion * gaussian_samples.var(), gaussian_samples)
    assert by_samples == pytest.approx(0.2546, abs=0.01)
    assert rd_bounds.gap_to_bound_db(3, 0.02, "laplace") > 0


# -------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call",
    [
        lambda: rd_bounds.gaussian_distortion_rate(-0.5),
        lambda: rd_bounds.gaussian_rate_distortion(0.0),
        lambda: rd_bounds.gaussian_rate_distortion(-1.0),
        lambda: rd_bounds.gaussian_distortion_rate(1.0, variance=0.0),
        lambda: rd_bounds.shannon_lower_bound_rate(2.0, float("nan")),
        lambda: rd_bounds.gaussian_ecsq(0.0),
        lambda: rd_bounds.panter_dite_constant("t:2"),
        lambda: rd_bounds.panter_dite_constant("cauchy"),
        lambda: rd_bounds.gap_to_bound_bits(-1.0, 0.1, "normal"),
        lambda: rd_bounds.gap_to_bound_bits(1.0, 0.0, "normal"),
    ],
)
def test_bad_parameters_raise_parameter_error(call: Callable[[], object]) -> None:
    with pytest.raises(ParameterError):
        call()


@pytest.mark.parametrize("samples", [np.array([]), np.array([1.0, np.nan]), np.array([np.inf, 1.0]), np.ones(5)])
def test_bad_samples_raise_tensor_error(samples: np.ndarray) -> None:
    with pytest.raises(TensorError):
        rd_bounds.empirical_rate_at_distortion(samples, 0.1)
