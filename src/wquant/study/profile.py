"""Profile a weight tensor: scale, shape of its distribution (Normal / Laplace / Student-t fit), tails."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

#: Values used for the distribution fit (a seeded subsample: the fit is about shape, not every value).
FIT_SAMPLES = 2**15
NU_GRID = np.geomspace(2.5, 100, 12)


@dataclass(frozen=True)
class TensorProfile:
    """What a format designer needs to know about one tensor; `family` is the best fit by log-likelihood."""

    name: str
    shape: tuple[int, ...]
    numel: int
    rms: float
    kurtosis: float  # excess kurtosis: 0 Normal, 3 Laplace, 6/(ν-4) Student-t
    outlier_share: float  # share of |w| > 6·RMS
    family: str  # "normal", "laplace" or "t:<ν>"
    loglik_per_value: dict[str, float]  # each family's mean log-likelihood on the standardised values


def profile_tensor(name: str, w: torch.Tensor, seed: int = 0) -> TensorProfile:
    values = w.detach().reshape(-1).double().numpy()
    rms = float(np.sqrt(np.mean(values**2)))
    centred = values - values.mean()
    var = float(np.mean(centred**2)) or 1.0
    kurt = float(np.mean(centred**4) / var**2 - 3.0)
    outliers = float(np.mean(np.abs(values) > 6 * rms)) if rms > 0 else 0.0
    sample = values
    if sample.size > FIT_SAMPLES:
        sample = sample[np.random.default_rng(seed).choice(sample.size, FIT_SAMPLES, replace=False)]
    z = (sample - sample.mean()) / (sample.std() or 1.0)
    loglik = {
        "normal": float(stats.norm.logpdf(z).mean()),
        "laplace": float(stats.laplace.logpdf(z, scale=math.sqrt(0.5)).mean()),
    }
    # unit-variance Student-t over a grid of ν: the best ν by likelihood
    t_ll = [float(stats.t.logpdf(z, nu, scale=math.sqrt((nu - 2) / nu)).mean()) for nu in NU_GRID]
    best_nu = float(NU_GRID[int(np.argmax(t_ll))])
    loglik[f"t:{best_nu:.3g}"] = max(t_ll)
    family = max(loglik, key=loglik.__getitem__)
    return TensorProfile(name, tuple(w.shape), values.size, rms, kurt, outliers, family, loglik)
