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


SCALE_MIN, SCALE_MAX = 1e-6, 1e6
"""Range of the teacher variance, noise level, widths and level magnitudes: beyond it squares and products of the
RS equations under- or overflow (the solver's bounds then fail) and the setting is meaningless at rho ~ 1."""
RATE_MIN, RATE_MAX = 1e-12, 1e12
"""Range of alpha and of a finite beta: far enough for every regime, short of overflow in beta^2 (M/N) terms."""


def _bounded(name: str, value: float, lo: float, hi: float, what: str, *, zero_ok: bool = False) -> float:
    x = _finite_real(name, value)
    if not ((zero_ok and x == 0.0) or lo <= x <= hi):
        low = "0 or " if zero_ok else ""
        raise _fail(name, value, f"{low}in [{lo:g}, {hi:g}] ({what})")
    return x


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """alpha = N/M (weights per sample, the paper's convention): positive, within RATE_MIN..RATE_MAX."""
    return _bounded(name, alpha, RATE_MIN, RATE_MAX, "alpha = N/M, weights per sample")


def check_sigma(sigma: float) -> float:
    """sigma is the label-noise standard deviation: 0 or within SCALE_MIN..SCALE_MAX."""
    return _bounded("sigma", sigma, SCALE_MIN, SCALE_MAX, "label-noise standard deviation", zero_ok=True)


def check_lam(lam: float) -> float:
    """lam is the L2 regularisation strength: 0 or within RATE_MIN..RATE_MAX."""
    return _bounded("lam", lam, RATE_MIN, RATE_MAX, "L2 regularisation strength", zero_ok=True)


def check_beta(beta: float) -> float:
    """beta is the inverse temperature; math.inf selects the zero-temperature (ERM) limit."""
    x = _finite_real("beta", beta)
    if x == math.inf:
        return x
    if not RATE_MIN <= x <= RATE_MAX:
        raise _fail(
            "beta",
            beta,
            f"in [{RATE_MIN:g}, {RATE_MAX:g}] or inf (inverse temperature; inf for the zero-temperature limit)",
        )
    return x


def check_rho(rho: float) -> float:
    """rho is the variance of the Gaussian teacher weights."""
    return _bounded("rho", rho, SCALE_MIN, SCALE_MAX, "teacher weight variance")


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


def check_width(width: float, name: str = "width") -> float:
    """width (omega) is the half-range of the quantization grid."""
    return _bounded(name, width, SCALE_MIN, SCALE_MAX, "quantization half-range omega")


def check_gamma(gamma: float) -> float:
    """gamma is the power-law companding exponent (1 = uniform, > 1 packs levels near 0)."""
    return _bounded("gamma", gamma, 0.01, 100.0, "companding exponent; 1 is uniform")


def check_levels(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """A user level set: at least two finite, distinct values of magnitude <= SCALE_MAX, the largest >=
    SCALE_MIN (returned sorted)."""
    arr = np.asarray(values, dtype=float).ravel()
    shown = arr.tolist()
    if arr.size < 2:
        raise _fail("levels", shown, "at least 2 distinct finite values")
    if not np.all(np.isfinite(arr)):
        raise _fail("levels", shown, "finite values only")
    s = np.sort(arr)
    if np.any(np.diff(s) <= 0.0):
        dup = s[:-1][np.diff(s) <= 0.0]
        raise _fail("levels", shown, f"distinct values (duplicates: {sorted(set(dup.tolist()))})")
    top = float(np.abs(s).max())
    if not SCALE_MIN <= top <= SCALE_MAX:
        raise _fail("levels", shown, f"values whose largest magnitude is in [{SCALE_MIN:g}, {SCALE_MAX:g}]")
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
