"""One range check per concept, shared by every public entry point of `wquant.theory`.

Each helper raises `ParameterError` naming the parameter and its valid range, so that a bad CLI flag and a bad
Python argument produce the same message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from wquant.errors import ParameterError


def _fail(name: str, value: object, valid: str) -> ParameterError:
    return ParameterError(f"{name}={value!r} is invalid: {name} must be {valid}")


def _finite_real(name: str, value: float) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError) as exc:
        raise _fail(name, value, "a real number") from exc
    if math.isnan(x):
        raise _fail(name, value, "a real number (got NaN)")
    return x


def check_alpha(alpha: float) -> float:
    """alpha = N/M (weights per sample, the paper's convention) must be a positive finite number."""
    x = _finite_real("alpha", alpha)
    if not (0.0 < x < math.inf):
        raise _fail("alpha", alpha, "> 0 and finite (alpha = N/M, weights per sample)")
    return x


def check_sigma(sigma: float) -> float:
    """sigma is the label-noise standard deviation."""
    x = _finite_real("sigma", sigma)
    if not (0.0 <= x < math.inf):
        raise _fail("sigma", sigma, ">= 0 and finite (label-noise standard deviation)")
    return x


def check_lam(lam: float) -> float:
    """lam is the L2 regularisation strength."""
    x = _finite_real("lam", lam)
    if not (0.0 <= x < math.inf):
        raise _fail("lam", lam, ">= 0 and finite (L2 regularisation strength)")
    return x


def check_beta(beta: float) -> float:
    """beta is the inverse temperature; math.inf selects the zero-temperature (ERM) limit."""
    x = _finite_real("beta", beta)
    if not x > 0.0:
        raise _fail("beta", beta, "> 0 (inverse temperature; inf for the zero-temperature limit)")
    return x


def check_rho(rho: float) -> float:
    """rho is the variance of the Gaussian teacher weights."""
    x = _finite_real("rho", rho)
    if not (0.0 < x < math.inf):
        raise _fail("rho", rho, "> 0 and finite (teacher weight variance)")
    return x


def check_bits(bits: int) -> int:
    """bits of a uniform quantizer: 2**bits levels; 1..16 keeps the level set tractable."""
    if isinstance(bits, bool) or not float(bits).is_integer():
        raise _fail("bits", bits, "an integer in [1, 16]")
    b = int(bits)
    if not 1 <= b <= 16:
        raise _fail("bits", bits, "an integer in [1, 16]")
    return b


def check_n_levels(n_levels: int) -> int:
    """Number of quantization levels of a non-uniform grid."""
    if isinstance(n_levels, bool) or not float(n_levels).is_integer() or not 2 <= int(n_levels) <= 65536:
        raise _fail("n_levels", n_levels, "an integer in [2, 65536]")
    return int(n_levels)


def check_width(width: float) -> float:
    """width (omega) is the half-range of the quantization grid."""
    x = _finite_real("width", width)
    if not (0.0 < x < math.inf):
        raise _fail("width", width, "> 0 and finite (quantization half-range omega)")
    return x


def check_gamma(gamma: float) -> float:
    """gamma is the power-law companding exponent (1 = uniform, > 1 packs levels near 0)."""
    x = _finite_real("gamma", gamma)
    if not (0.0 < x < math.inf):
        raise _fail("gamma", gamma, "> 0 and finite (companding exponent)")
    return x


def check_levels(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """A user level set: at least two finite, distinct values (returned sorted)."""
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size < 2:
        raise _fail("levels", list(arr), "at least 2 distinct finite values")
    if not np.all(np.isfinite(arr)):
        raise _fail("levels", list(arr), "finite values only")
    s = np.sort(arr)
    if np.any(np.diff(s) <= 0.0):
        dup = s[:-1][np.diff(s) <= 0.0]
        raise _fail("levels", list(arr), f"distinct values (duplicates: {sorted(set(dup.tolist()))})")
    return s


def check_damping(damping: float) -> float:
    """Damping of a fixed-point iteration: the weight kept from the previous iterate."""
    x = _finite_real("damping", damping)
    if not 0.0 <= x < 1.0:
        raise _fail("damping", damping, "in [0, 1)")
    return x


def check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    """Counts (N, seeds, iterations, sweeps): integers >= minimum."""
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < minimum:
        raise _fail(name, value, f"an integer >= {minimum}")
    return int(value)


def check_tolerance(tol: float) -> float:
    """Convergence tolerance: a small positive number."""
    x = _finite_real("tol", tol)
    if not 0.0 < x < 1.0:
        raise _fail("tol", tol, "in (0, 1)")
    return x
