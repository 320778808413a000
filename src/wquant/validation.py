"""Input checks shared by every public boundary, so each failure reads the same way everywhere."""

from __future__ import annotations

import math
from typing import Literal

import torch

from wquant.errors import ParameterError, TensorError, WquantError

NanPolicy = Literal["raise", "zero"]
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_tensor(x: object, name: str = "tensor", *, nan_policy: NanPolicy = "raise") -> torch.Tensor:
    """Return `x` as a finite floating tensor, or raise a `TensorError` that says what to fix.

    nan_policy="zero" replaces NaN/Inf by 0 (the caller asked for it explicitly); "raise" refuses them.
    """
    if not isinstance(x, torch.Tensor):
        raise TensorError(f"{name}: expected a torch.Tensor, got {type(x).__name__}; wrap arrays with torch.as_tensor")
    if x.dtype not in _FLOAT_DTYPES:
        raise TensorError(
            f"{name}: dtype {x.dtype} is not a floating type; quantize float32/float64/float16/bfloat16 weights "
            f"(convert with .float())"
        )
    if x.numel() == 0:
        raise TensorError(f"{name}: tensor of shape {tuple(x.shape)} is empty; there is nothing to quantize")
    total = x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    if bool(torch.isfinite(total)):  # NaN and Inf propagate into a sum: one cheap reduction clears the tensor
        return x
    finite = torch.isfinite(x)  # the sum may also have overflowed: count properly
    if not bool(finite.all()):
        bad = int((~finite).sum())
        if nan_policy == "zero":
            return torch.where(finite, x, torch.zeros((), dtype=x.dtype))
        if nan_policy != "raise":
            raise ParameterError(f"nan_policy={nan_policy!r} is not valid; use 'raise' or 'zero'")
        raise TensorError(
            f"{name}: {bad} of {x.numel()} values are NaN or Inf; clean the tensor or pass nan_policy='zero'"
        )
    return x


def check_int_range(
    value: object, name: str, lo: int, hi: int | None = None, *, error: type[WquantError] = ParameterError
) -> int:
    """An integer parameter in [lo, hi]; bools and floats with a fraction are refused.

    Spec fields pass error=SpecError so a bad format reads as a bad spec, not a bad call argument.
    """
    bound = f"[{lo}, {hi if hi is not None else 'inf'}]"
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not is_number or (isinstance(value, float) and not value.is_integer()):
        raise error(f"{name} must be an integer in {bound}, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        raise error(f"{name} must be in {bound}, got {value}")
    return value


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """A finite real parameter > 0 (or >= 0 with allow_zero)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParameterError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ParameterError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return float(value)


def check_model_output(x: torch.Tensor, what: str) -> torch.Tensor:
    """A model's output (logits, embeddings) must be finite: a NaN perplexity or cosine is a wrong answer."""
    if not bool(torch.isfinite(x).all()):
        raise TensorError(
            f"{what} contain NaN or Inf: the model does not compute finite numbers on this text (a checkpoint of "
            "another model, NaN weights, or an fp16 overflow); no measurement is reported"
        )
    return x
