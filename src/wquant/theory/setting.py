"""The teacher-student regression setting shared by the replica theory, AMP and the simulations.

User-facing `alpha` is N/M (weights per sample), the convention of Kashiwamura, Sakata & Imaizumi (2024):
alpha > 1 is the over-parameterised side. The equations in docs/theory.md are written with the load
M/N (samples per weight); `RegressionSetting.load` does the conversion in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from wquant.errors import ParameterError
from wquant.theory._validation import check_alpha, check_beta, check_lam, check_rho, check_sigma

CostVariant = Literal["V1", "V2", "V3"]
COST_VARIANTS: tuple[str, ...] = ("V1", "V2", "V3")
"""Where the L2 penalty acts. V1: on the quantized weight s (lam s^2/2). V2: on a continuous latent
weight u with s = phi(u) (the paper's Fig. 1 form; at finite beta each level weighs the Gaussian mass of
its bin). V3: Bayesian latent prior u ~ N(0, 1/lam), independent of beta."""


@dataclass(frozen=True)
class RegressionSetting:
    """Linear teacher y = x.w0/sqrt(N) + noise, student with quantized weights, Gibbs measure at inverse
    temperature `beta` (math.inf = zero-temperature ERM).

    alpha: N/M (paper's convention). sigma: label-noise standard deviation. lam: L2 strength.
    rho: teacher weight variance. cost: regulariser placement, see `COST_VARIANTS`.
    """

    alpha: float
    sigma: float
    lam: float
    beta: float
    rho: float = 1.0
    cost: CostVariant = "V1"

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
        object.__setattr__(self, "sigma", check_sigma(self.sigma))
        object.__setattr__(self, "lam", check_lam(self.lam))
        object.__setattr__(self, "beta", check_beta(self.beta))
        object.__setattr__(self, "rho", check_rho(self.rho))
        if self.cost not in COST_VARIANTS:
            raise ParameterError(f"cost={self.cost!r} is invalid: cost must be one of {', '.join(COST_VARIANTS)}")
        if self.cost in ("V2", "V3") and self.lam == 0.0 and (self.cost == "V3" or math.isfinite(self.beta)):
            raise ParameterError(
                f"lam=0 is invalid for cost={self.cost}: lam must be > 0 (the latent weight's Gaussian bin "
                "masses are not normalisable at lam = 0; use cost='V1', equal to V2 at lam = 0, beta = inf)"
            )

    @property
    def load(self) -> float:
        """M/N, samples per weight: the variable the replica equations are written in."""
        return 1.0 / self.alpha

    @property
    def noise_variance(self) -> float:
        return self.sigma**2

    @property
    def zero_temperature(self) -> bool:
        return math.isinf(self.beta)

    def with_(self, **changes: object) -> RegressionSetting:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]
