"""Finite-size teacher-student instances and a heat-bath Monte Carlo sampler of the quantized Gibbs measure.

These are the empirical side of the checks: the replica theory and state evolution predict what AMP and the
sampler measure on one instance of size N. Every random draw takes an explicit seed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wquant.errors import BudgetError, ParameterError
from wquant.theory._validation import check_positive_int
from wquant.theory.quantizers import LevelSet, site_log_weights
from wquant.theory.setting import RegressionSetting


@dataclass(frozen=True)
class RegressionInstance:
    """One draw of the data: F = X / sqrt(N) (M x N), labels y = F w0 + noise, teacher w0."""

    F: np.ndarray
    y: np.ndarray
    w0: np.ndarray
    setting: RegressionSetting
    seed: int

    @property
    def n_weights(self) -> int:
        return self.F.shape[1]

    @property
    def n_samples(self) -> int:
        return self.F.shape[0]


MEMORY_FRACTION = 0.5
"""Share of the available memory one instance (or sampler) may take: the rest is for the solver and the OS."""


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(needed_bytes: int, what: str, fix: str, available_bytes: int | None = None) -> None:
    """Refuse, before allocating, work that needs more than MEMORY_FRACTION of the available memory."""
    free = available_memory_bytes() if available_bytes is None else available_bytes
    if needed_bytes > MEMORY_FRACTION * free:
        raise BudgetError(
            f"{what} needs about {needed_bytes / 2**30:.3g} GiB but only {free / 2**30:.3g} GiB is available "
            f"(at most {MEMORY_FRACTION:.0%} of it may be used); {fix}"
        )


def n_samples_for(setting: RegressionSetting, n_weights: int) -> int:
    """M = round(N / alpha), alpha = N/M."""
    return max(1, int(round(n_weights / setting.alpha)))


def make_instance(
    setting: RegressionSetting, n_weights: int, seed: int, dtype: type = np.float32
) -> RegressionInstance:
    """Gaussian design, Gaussian teacher N(0, rho), Gaussian label noise of std sigma.

    float32 halves the memory of the design (N = 10^4 at alpha = 1.5 is 6.7e7 entries) and is ample for
    order parameters known to 1e-3.
    """
    n = check_positive_int("n_weights", n_weights, 2)
    m = n_samples_for(setting, n)
    itemsize = 4 if dtype == np.float32 else 8
    check_memory(
        m * n * itemsize + 16 * (m + n),
        f"an instance with N={n} weights and M={m} samples (alpha=N/M={setting.alpha:g})",
        "use a smaller N or a larger alpha=N/M",
    )
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(n) * math.sqrt(setting.rho)
    F = rng.standard_normal((m, n), dtype=np.float32 if dtype == np.float32 else np.float64)
    F *= np.asarray(1.0 / math.sqrt(n), dtype=F.dtype)
    y = matvec(F, w0) + setting.sigma * rng.standard_normal(m)
    return RegressionInstance(F=F, y=y, w0=w0, setting=setting, seed=int(seed))


def matvec(F: np.ndarray, v: np.ndarray) -> np.ndarray:
    """F @ v in F's precision (no float64 copy of a float32 design), returned as float64."""
    return (F @ v.astype(F.dtype, copy=False)).astype(np.float64)


def rmatvec(F: np.ndarray, v: np.ndarray) -> np.ndarray:
    """F.T @ v in F's precision, returned as float64."""
    return (v.astype(F.dtype, copy=False) @ F).astype(np.float64)


def fresh_data_error(
    instance: RegressionInstance, w: np.ndarray, n_test: int = 2000, seed: int = 1, batch: int = 1000
) -> tuple[float, float]:
    """Generalization error of weights w on fresh samples from the same teacher: (exact expectation over x,
    empirical mean over n_test new samples). The first is ||w0 - w||^2/N + sigma^2."""
    n = instance.n_weights
    exact = float(np.mean((instance.w0 - w) ** 2) + instance.setting.noise_variance)
    rng = np.random.default_rng(seed)
    total, done = 0.0, 0
    while done < n_test:
        k = min(batch, n_test - done)
        X = rng.standard_normal((k, n), dtype=np.float32) / np.float32(math.sqrt(n))
        y = matvec(X, instance.w0) + instance.setting.sigma * rng.standard_normal(k)
        total += float(np.sum((y - matvec(X, w)) ** 2))
        done += k
    return exact, total / n_test


@dataclass(frozen=True)
class MonteCarloResult:
    """Per-chain time averages after burn-in: marginal means (N x chains), overlaps and training error."""

    mean: np.ndarray
    self_overlap: np.ndarray  # Q per chain: time average of |w|^2/N
    m: np.ndarray  # w0 . <w> / N per chain
    q_self: np.ndarray  # |<w>|^2 / N per chain
    q_between: float  # <w>_1 . <w>_2 / N (first two chains)
    train_error: np.ndarray


def heat_bath_sampler(
    instance: RegressionInstance,
    levels: LevelSet,
    n_sweeps: int,
    burn_in: int,
    n_chains: int = 2,
    seed: int = 0,
) -> MonteCarloResult:
    """Sequential heat-bath Gibbs sampling of P(w) ~ exp(-beta H(w)) over w in levels^N, instance's beta.

    Chains start from independent uniform random configurations and run side by side. The site loop is
    inherently sequential (each update changes every other site's field); it is vectorised over chains and the
    local fields are kept up to date with one column of J = F^T F per update, O(N) work per site.
    """
    setting = instance.setting
    if math.isinf(setting.beta):
        raise ParameterError("beta=inf is invalid for the heat-bath sampler: it samples a finite-beta Gibbs measure")
    sweeps = check_positive_int("n_sweeps", n_sweeps)
    burn = check_positive_int("burn_in", burn_in, 0)
    chains = check_positive_int("n_chains", n_chains)
    n, m = instance.n_weights, instance.n_samples
    check_memory(
        8 * (m * n + n * n + 4 * n * chains),
        f"the heat-bath sampler at N={n}, M={m}",
        "sample a smaller instance",
    )
    beta = setting.beta
    F = instance.F.astype(np.float64)
    J = F.T @ F
    h = F.T @ instance.y
    diag = np.diag(J).copy()
    s = levels.values
    logw = site_log_weights(levels, setting)
    n = F.shape[1]
    rng = np.random.default_rng(seed)
    w = s[rng.integers(0, s.size, size=(n, chains))]
    u = h[:, None] - J @ w  # u_i = h_i - sum_j J_ij w_j
    acc_mean = np.zeros((n, chains))
    acc_sq = np.zeros(chains)
    acc_train = np.zeros(chains)
    kept = 0
    for sweep in range(sweeps):
        rand = rng.random((n, chains))
        for i in range(n):
            field = u[i] + diag[i] * w[i]  # (chains,)
            logits = logw[None, :] - beta * (0.5 * diag[i] * s[None, :] ** 2 - field[:, None] * s[None, :])
            logits -= logits.max(axis=1, keepdims=True)
            cdf = np.cumsum(np.exp(logits), axis=1)
            pick = (cdf < rand[i, :, None] * cdf[:, -1:]).sum(axis=1)
            new = s[np.minimum(pick, s.size - 1)]
            delta = new - w[i]
            if np.any(delta != 0.0):
                u -= J[:, i, None] * delta[None, :]
                w[i] = new
        if sweep >= burn:
            kept += 1
            acc_mean += w
            acc_sq += np.mean(w**2, axis=0)
            acc_train += np.mean((instance.y[:, None] - F @ w) ** 2, axis=0)
    mean = acc_mean / kept
    q_between = float(np.mean(mean[:, 0] * mean[:, 1])) if chains >= 2 else math.nan
    return MonteCarloResult(
        mean=mean,
        self_overlap=acc_sq / kept,
        m=instance.w0 @ mean / n,
        q_self=np.mean(mean**2, axis=0),
        q_between=q_between,
        train_error=acc_train / kept,
    )
