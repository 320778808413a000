"""What the smoothing methods (SmoothQuant, AWQ) share: the scale they return, weights rounded on a format,
and the output error of a group of layers fed one input.

A smoothing scale s (one positive value per input channel) rewrites a group of layers fed the same input x as
(W·diag(s))·(x/s): exact in floating point, it moves quantization difficulty between the weights and the
activations. The model walk folds the 1/s into the module that produces x (`wquant.models.folding`); the
solvers here only choose s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wquant.algorithms.activations import ActivationSpec, fake_quantize, static_scale
from wquant.algorithms.common import check_weight
from wquant.errors import TensorError
from wquant.formats import FormatSpec, as_2d, compute_dtype, parse_spec, prepare_layout, quantize
from wquant.formats.layout import reconstruct


@dataclass(frozen=True)
class ChannelScales:
    """A smoothing scale for a group of layers: they compute (W·diag(scales))·(x / scales)."""

    scales: torch.Tensor  # (in,) float32, positive
    note: str = ""


def rtn_values(weight: torch.Tensor, spec: FormatSpec | str, *, name: str = "weight") -> torch.Tensor:
    """`quantize(weight, spec).dequantize()` as float, without packing the codes (scale searches call it often)."""
    spec = parse_spec(spec)
    if spec.scaling.search or spec.coding is not None:
        return quantize(weight, spec, name=name).dequantize().float()
    layout = prepare_layout(weight, spec, name=name)
    x = layout.without_outliers(as_2d(weight.detach()).to(compute_dtype(weight.dtype)))
    scales = layout.choose_scales(x, fit_factor=True)
    return layout.restore_outliers(reconstruct(layout, x, scales)).float()


def check_group(weights: list[torch.Tensor], name: str) -> list[torch.Tensor]:
    """(out, in) float weights sharing one input width."""
    if not weights:
        raise TensorError(f"{name}: a smoothing scale needs at least one weight")
    checked = [as_2d(check_weight(w, f"{name}[{i}]")).float() for i, w in enumerate(weights)]
    widths = {w.shape[1] for w in checked}
    if len(widths) > 1:
        raise TensorError(f"{name}: layers fed one input must share its width, got input widths {sorted(widths)}")
    return checked


def normalized(scales: torch.Tensor) -> torch.Tensor:
    """s / √(max s · min s): the same smoothing (only ratios matter) with values centred on 1 in log scale."""
    return scales / (scales.max() * scales.min()).sqrt()


def quadratic_error(weights: list[torch.Tensor], approx: list[torch.Tensor], hessian: torch.Tensor) -> float:
    """Σ_l tr(ΔW_l·H·ΔW_lᵀ): the group's output error on the calibration inputs (up to the factor n/2)."""
    total = 0.0
    for w, a in zip(weights, approx, strict=True):
        delta = (a - w).double()
        total += float(((delta @ hessian.double()) * delta).sum())
    return total


def w8a8_error(
    weights: list[torch.Tensor],
    rows: torch.Tensor,
    scales: torch.Tensor,
    spec: FormatSpec,
    activations: ActivationSpec | None,
) -> float:
    """Σ_l ‖Q_w(W_l·s)·Q_a(X/s)ᵀ − W_l·Xᵀ‖² on the sample rows X: the output error once both are quantized."""
    x = rows.float()
    xs = x / scales
    if activations is not None:
        scale = static_scale(activations, xs.abs().amax(dim=0)) if activations.static else None
        xs = fake_quantize(xs, activations, scale)
    total = 0.0
    for w in weights:
        approx = rtn_values(w * scales, spec)
        total += float((xs @ approx.T - x @ w.T).double().square().sum())
    return total
