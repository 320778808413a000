"""Streaming calibration statistics of one layer's inputs, kept apart from the solvers that use them.

The layer objective ‖(W − Ŵ)X‖² is the quadratic form of H = 2/n·XᵀX (the mean keeps H independent of
the token count n). Activation-aware methods need more of the inputs than H: AWQ the mean |x| of each input
channel, SmoothQuant its max |x|, a static activation scale the largest |x|, and objectives that are not
quadratic in the weight (the output error with quantized inputs) a sample of the input rows themselves. One
accumulator, `LayerStatistics`, gathers all of it as batches stream past, in float32 (or the dtype asked for),
so only one (in, in) matrix and at most `samples` rows are ever held per layer.
"""

from __future__ import annotations

import torch

from wquant.errors import ParameterError, TensorError
from wquant.formats import as_2d
from wquant.validation import check_tensor


class LayerStatistics:
    """Σ xᵀx, Σ |x|, max |x| and the signed range per input channel over the tokens seen, their count, and a
    seeded sample of rows.

    `hessian()` is 2/n·XᵀX, `abs_mean()` / `abs_max()` are per input channel. With `samples` > 0 a uniform
    sample of that many rows (without replacement) is kept: every row draws a seeded random priority and the
    rows of least priority stay (bottom-k sampling), so the sample does not depend on how rows are batched.
    """

    def __init__(
        self, *, dtype: torch.dtype = torch.float32, name: str = "layer", samples: int = 0, seed: int = 0
    ) -> None:
        if samples < 0:
            raise ParameterError(f"{name}: samples must be >= 0, got {samples}")
        self.dtype = dtype
        self.name = name
        self.total: torch.Tensor | None = None
        self.abs_total: torch.Tensor | None = None
        self.peak: torch.Tensor | None = None
        self.low: torch.Tensor | None = None  # signed per-channel minimum and maximum (a channel's range)
        self.high: torch.Tensor | None = None
        self.tokens = 0
        self.samples = samples
        self._rows: torch.Tensor | None = None
        self._priority: torch.Tensor | None = None
        self._gen = torch.Generator().manual_seed(seed)

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
        magnitude = rows.abs()
        self.total = gram if self.total is None else self.total.add_(gram)
        summed = magnitude.sum(dim=0)
        self.abs_total = summed if self.abs_total is None else self.abs_total.add_(summed)
        if rows.shape[0]:
            peak, low, high = magnitude.amax(dim=0), rows.amin(dim=0), rows.amax(dim=0)
            self.peak = peak if self.peak is None else torch.maximum(self.peak, peak)
            self.low = low if self.low is None else torch.minimum(self.low, low)
            self.high = high if self.high is None else torch.maximum(self.high, high)
        self.tokens += rows.shape[0]
        if self.samples:
            self._sample(rows)

    def _sample(self, rows: torch.Tensor) -> None:
        priority = torch.rand(rows.shape[0], generator=self._gen, dtype=torch.float64)
        if self._rows is not None and self._priority is not None:
            rows, priority = torch.cat([self._rows, rows]), torch.cat([self._priority, priority])
        if rows.shape[0] > self.samples:
            keep = torch.topk(priority, self.samples, largest=False).indices.sort().values
            rows, priority = rows[keep], priority[keep]
        self._rows, self._priority = rows.clone(), priority

    def _require(self) -> None:
        if self.total is None or self.tokens == 0:
            raise ParameterError(f"{self.name}: no calibration token reached this layer (all padding?)")

    def hessian(self) -> torch.Tensor:
        self._require()
        assert self.total is not None
        return self.total * (2.0 / self.tokens)

    def abs_mean(self) -> torch.Tensor:
        """Mean |x| of each input channel (AWQ's activation salience)."""
        self._require()
        if self.abs_total is None:
            raise ParameterError(f"{self.name}: these statistics hold only a Hessian; collect them from inputs")
        return self.abs_total / self.tokens

    def abs_max(self) -> torch.Tensor:
        """Largest |x| of each input channel (SmoothQuant's activation range, static activation scales)."""
        self._require()
        if self.peak is None:
            raise ParameterError(f"{self.name}: these statistics hold only a Hessian; collect them from inputs")
        return self.peak

    def value_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Smallest and largest (signed) value of each input channel."""
        self._require()
        if self.low is None or self.high is None:
            raise ParameterError(f"{self.name}: these statistics hold only a Hessian; collect them from inputs")
        return self.low, self.high

    def sample_rows(self) -> torch.Tensor | None:
        """The kept input rows (k, in), k = min(samples, tokens); None when no sample was asked for."""
        return self._rows

    def scaled(self, divisor: torch.Tensor) -> LayerStatistics:
        """The statistics of the inputs x / divisor (per input channel), as if they had been collected so.

        What a layer sees after a smoothing scale s was folded into the module before it: H → S⁻¹HS⁻¹,
        |x| → |x|/s, rows → rows/s.
        """
        self._require()
        d = divisor.to(self.dtype).reshape(-1)
        if d.numel() != self.total.shape[0] or not bool((d > 0).all()):  # type: ignore[union-attr]
            raise TensorError(f"{self.name}: a smoothing divisor must be positive with one value per input channel")
        out = LayerStatistics(dtype=self.dtype, name=self.name, samples=self.samples)
        inv = 1.0 / d
        out.total = self.total * inv[:, None] * inv[None, :]  # type: ignore[operator]
        out.abs_total = None if self.abs_total is None else self.abs_total * inv
        out.peak = None if self.peak is None else self.peak * inv
        out.low = None if self.low is None else self.low * inv
        out.high = None if self.high is None else self.high * inv
        out.tokens = self.tokens
        out._rows = None if self._rows is None else self._rows * inv
        out._priority = self._priority
        return out

    @staticmethod
    def from_hessian(hessian: torch.Tensor, tokens: int = 0, *, name: str = "layer") -> LayerStatistics:
        """Statistics that know only a Hessian (what a caller holding just H can give a handler)."""
        out = LayerStatistics(dtype=hessian.dtype, name=name)
        out.tokens = max(int(tokens), 1)
        out.total = hessian * (out.tokens / 2.0)
        return out


#: The accumulator's former name (it gathered only the Hessian); the same class.
HessianAccumulator = LayerStatistics


def hessian_from_inputs(x: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """H = 2/n · XᵀX over the n rows (tokens) of `x` (..., in)."""
    return statistics_from_inputs(x, dtype=dtype).hessian()


def statistics_from_inputs(
    x: torch.Tensor, *, dtype: torch.dtype = torch.float32, samples: int = 0, seed: int = 0
) -> LayerStatistics:
    """`LayerStatistics` of the rows (tokens) of `x` (..., in), e.g. to call an activation-aware solver directly."""
    acc = LayerStatistics(dtype=dtype, name="calibration inputs", samples=samples, seed=seed)
    acc.add(check_tensor(x, "calibration inputs"))
    return acc


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
