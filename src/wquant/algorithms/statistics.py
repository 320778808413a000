"""Streaming calibration statistics of one layer's inputs, kept apart from the solvers that use them.

The layer objective ‖(W − Ŵ)X‖² is the quadratic form of H = 2/n·XᵀX (the mean keeps H independent of
the token count n). The accumulator adds batches of activations as they stream past, in float32 (or the
dtype asked for), so only one (in, in) matrix is ever held per layer.
"""

from __future__ import annotations

import torch

from wquant.errors import ParameterError, TensorError
from wquant.formats import as_2d
from wquant.validation import check_tensor


class HessianAccumulator:
    """Σ xᵀx over the tokens seen, and their count; `hessian()` is 2/n·XᵀX."""

    def __init__(self, *, dtype: torch.dtype = torch.float32, name: str = "layer") -> None:
        self.dtype = dtype
        self.name = name
        self.total: torch.Tensor | None = None
        self.tokens = 0

    def add(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add activations (..., in); `mask` (the leading dims, e.g. an attention mask) drops padding tokens."""
        if mask is not None and x.ndim == mask.ndim + 1 and tuple(x.shape[:-1]) == tuple(mask.shape):
            rows = x[mask.bool()]
        else:
            rows = x.reshape(-1, x.shape[-1])
        rows = rows.detach().to(self.dtype)
        if not bool(torch.isfinite(rows).all()):
            raise TensorError(f"{self.name}: calibration activations contain NaN/Inf; check the model and its inputs")
        gram = rows.T @ rows
        self.total = gram if self.total is None else self.total.add_(gram)
        self.tokens += rows.shape[0]

    def hessian(self) -> torch.Tensor:
        if self.total is None or self.tokens == 0:
            raise ParameterError(f"{self.name}: no calibration token reached this layer (all padding?)")
        return self.total * (2.0 / self.tokens)


def hessian_from_inputs(x: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """H = 2/n · XᵀX over the n rows (tokens) of `x` (..., in)."""
    acc = HessianAccumulator(dtype=dtype, name="calibration inputs")
    acc.add(check_tensor(x, "calibration inputs"))
    return acc.hessian()


def relative_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor | None) -> float:
    """‖ΔW‖²/‖W‖², or tr(ΔW·H·ΔWᵀ)/tr(W·H·Wᵀ) (the layer output error) when a Hessian is given."""
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = as_2d(weight).to(dtype)
    delta = w - as_2d(approx).to(dtype)
    tiny = torch.finfo(dtype).tiny
    if hessian is None:
        return float(delta.square().sum() / w.square().sum().clamp(min=tiny))
    h = hessian.to(dtype)
    return float(((delta @ h) * delta).sum() / ((w @ h) * w).sum().clamp(min=tiny))
