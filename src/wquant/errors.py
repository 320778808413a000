"""One error hierarchy for every public boundary of wquant.

Each error message names the offending input and says what to do about it, so a user can fix the call
without reading wquant's source. Catch `WquantError` to handle all of them.
"""

from __future__ import annotations


class WquantError(Exception):
    """Base class of every error wquant raises on purpose."""


class SpecError(WquantError, ValueError):
    """A format spec (string, JSON or dataclass field) is malformed or names an unknown token."""


class TensorError(WquantError, ValueError):
    """A tensor given to wquant is unusable: NaN/Inf, empty, wrong dtype or wrong shape."""


class ScaleRangeError(TensorError):
    """A tensor's magnitude is outside what its format's scales can store (fp16 scales of weights near 1e30)."""


class ParameterError(WquantError, ValueError):
    """A numeric parameter is outside its valid range (bits, block size, alpha, beta, budget, ...)."""


class ConvergenceError(WquantError, RuntimeError):
    """An iterative solver did not converge; the message carries the last residual."""


class CorruptDataError(WquantError, ValueError):
    """Stored data (a bitstream, a checkpoint) fails its integrity check or is truncated."""


class BudgetError(WquantError, ValueError):
    """A bit budget cannot be met by the formats on offer."""


class ConfigWarning(UserWarning):
    """A config is valid but probably not what was meant (a glob that matches nothing, say)."""


def valid_choices(choices: object) -> str:
    """Render a list of valid tokens for an error message."""
    return ", ".join(sorted(str(c) for c in choices))  # type: ignore[union-attr]
