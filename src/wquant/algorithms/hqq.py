"""HQQ: data-free zero optimisation for scale + zero formats (Badri & Shaji 2023, Half-Quadratic Quantization).

Min/max RTN spends the grid on each group's two extremes. HQQ keeps that scale s but moves the zero z to
minimise Σ|W − s·(Q − z)|^p with p < 1: a sparsity-promoting error lets a few weights (the extremes) err a
lot while the bulk sits closer to the grid. Half-quadratic splitting makes every step closed-form: round
(Q), shrink the residual with the generalised soft threshold (E), and solve z as a mean. No calibration data,
same stored fields and bits as RTN in the same format.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from wquant.algorithms.common import check_weight
from wquant.algorithms.registry import Quantized, register
from wquant.algorithms.statistics import LayerStatistics
from wquant.errors import ParameterError, SpecError
from wquant.formats import QuantizedTensor, TensorLayout, as_2d, compute_dtype, parse_spec, prepare_layout
from wquant.formats.scaling import OFFSET_RULES
from wquant.formats.spec import DEFAULT_FORMAT, FormatSpec
from wquant.validation import check_int_range, check_positive


@dataclass(frozen=True)
class HQQConfig:
    """HQQ on `format`, whose rule must store a zero: `minmax` (real offset) or `zeropoint` (integer level).

    p: the l_p exponent of the error, in (0, 2) (HQQ uses 0.7; p < 1 is the point of the method). beta, kappa:
    the half-quadratic penalty and its growth per iteration. iterations: zero updates at most; the loop stops
    as soon as the tensor's l_p error stops falling and keeps the zeros of the best iterate.
    """

    format: str | FormatSpec = DEFAULT_FORMAT
    p: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    iterations: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", parse_spec(self.format))
        rule = self.spec.scaling.rule
        if rule not in OFFSET_RULES:
            raise SpecError(
                f"HQQ moves each group's zero, but {self.spec.to_string()!r} uses the {rule} rule, which stores "
                "none; use the minmax rule (real-valued zero offset, e.g. int4:unsigned/block64:minmax:bf16) or "
                "zeropoint (integer zero point, e.g. int4:unsigned/block128:zeropoint:fp16)"
            )
        if self.spec.scaling.two_level:
            raise SpecError(
                f"HQQ moves each group's zero freely; {self.spec.to_string()!r} stores zeros as integers under a "
                "super-block number (two-level scaling). Use GPTQ or rtn-search on it, or HQQ on a single-level format"
            )
        if check_positive(self.p, "HQQ p") >= 2.0:
            raise ParameterError(f"HQQ p must be in (0, 2) (0.7 is HQQ's default), got {self.p}")
        check_positive(self.beta, "HQQ beta")
        if check_positive(self.kappa, "HQQ kappa") < 1.0:
            raise ParameterError(f"HQQ kappa must be >= 1 (beta grows by it each iteration), got {self.kappa}")
        check_int_range(self.iterations, "HQQ iterations", 1, 10_000)

    @property
    def spec(self) -> FormatSpec:
        return self.format  # type: ignore[return-value]

    @property
    def needs_calibration(self) -> bool:
        return False

    @property
    def uses_calibration(self) -> bool:
        return False

    def with_format(self, spec: FormatSpec | str) -> HQQConfig:
        return replace(self, format=parse_spec(spec))


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalised soft threshold sign(x)·relu(|x| − |x|^(p−1)/β): the proximal step of |·|^p (p = 1: soft).

    Small residuals go to 0 (they are absorbed by the zero), large ones are kept: that is what lets the zero
    ignore outliers. At x = 0 the power is +inf for p < 1 and the result is 0.
    """
    mag = x.abs()
    return torch.sign(x) * torch.relu(mag - mag.pow(p - 1.0) / beta)


def hqq(weight: torch.Tensor, config: HQQConfig | None = None, *, name: str = "weight") -> QuantizedTensor:
    """Quantize `weight` with min/max scales and HQQ-optimised zeros; a genuine QuantizedTensor in the format.

    Works on the (rows, groups, group length) block view, vectorised over groups; only the iterations loop.
    The stored (format-rounded) scales are used throughout and z starts at the RTN zero. The best iterate is
    judged on the whole tensor, as HQQ does: choosing per group by l_p error measured a little lower l_p but
    about 1 % higher MSE. zeropoint formats optimise z as a real number and round it to the nearest grid level
    at the end. The zeros are stored through the format (`Scaling.store_offsets`), and if the stored zeros lose
    to RTN's on the l_p error, RTN's are kept, so `dequantize()` uses exactly what was judged.
    """
    config = config or HQQConfig()
    weight = check_weight(weight, name)
    layout = prepare_layout(weight, config.spec, name=name)
    book, sc = layout.book, layout.spec.scaling
    dtype = compute_dtype(weight.dtype)
    x = layout.without_outliers(as_2d(weight.detach()).to(dtype))
    rtn_scales = layout.choose_scales(x)
    assert rtn_scales.offsets is not None
    blocks, pad = sc.blocks(x)  # (rows or 1, groups, group length)
    keep = _stored_mask(layout, pad, dtype)
    count = keep.sum(dim=-1, keepdim=True)
    scale = rtn_scales.scales.to(dtype).unsqueeze(-1)
    active = (scale > 0) & (count > 0)
    safe = torch.where(active, scale, torch.ones_like(scale))
    z_rtn = -rtn_scales.offsets.to(dtype).unsqueeze(-1) / safe  # in level units: ŵ = s·(level − z)

    def residual(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        levels = book.decode(book.encode(blocks / safe + z), dtype)
        return blocks - safe * (levels - z), levels

    def lp_error(r: torch.Tensor) -> torch.Tensor:
        return (r.abs().pow(config.p) * keep).sum(dim=-1, keepdim=True)

    r, levels = residual(z_rtn)
    rtn_error = float(lp_error(r).sum())
    z, best_z, best, beta = z_rtn, z_rtn, rtn_error, config.beta
    for _ in range(config.iterations):
        e = shrink_lp(r, beta, config.p)
        z = ((levels - (blocks - e) / safe) * keep).sum(dim=-1, keepdim=True) / count.clamp(min=1)
        z = torch.where(active, z, z_rtn)  # constant or all-outlier groups keep their zero
        beta *= config.kappa
        r, levels = residual(z)
        error = float(lp_error(r).sum())
        if not error < best:
            break
        best_z, best = z, error

    # Store the zeros as the format does (zeropoint: the nearest level); keep RTN's if storing lost the gain.
    # with_offsets takes a group minimum m and stores m − s·lo (minmax) or the level nearest lo − m/s
    # (zeropoint); m = s·(lo − z) makes both mean "zero z".
    stored = layout.with_offsets(rtn_scales, (scale * (book.lo - best_z)).squeeze(-1).to(rtn_scales.scales.dtype))
    use = active.squeeze(-1)
    stored = rtn_scales.where(use, stored)
    assert stored.offsets is not None
    stored_error = float(lp_error(residual(-stored.offsets.to(dtype).unsqueeze(-1) / safe)[0]).sum())
    scales = stored if stored_error < rtn_error else rtn_scales
    return layout.assemble(layout.encode(x, scales), scales)


def _stored_mask(layout: TensorLayout, pad: int, dtype: torch.dtype) -> torch.Tensor:
    """Block-view weights of the error: 1 for stored elements, 0 for block padding and exact outliers."""
    keep = torch.ones(layout.rows, layout.cols, dtype=dtype)
    mask = layout.outlier_mask()
    if mask is not None:
        keep = keep.masked_fill(mask, 0.0)
    blocks, _ = layout.spec.scaling.blocks(keep)
    if pad:  # blocks() replicates the last column into the padding; padding is never stored
        blocks[:, -1, blocks.shape[-1] - pad :] = 0.0
    return blocks


def _hqq_handler(weight: torch.Tensor, config: HQQConfig, stats: LayerStatistics | None, name: str) -> Quantized:
    return Quantized(hqq(weight, config, name=name))


register("hqq", HQQConfig, _hqq_handler, from_format=lambda spec: HQQConfig(spec),
         summary="HQQ: data-free zero optimisation of scale+zero formats (minmax or zeropoint rule)")  # fmt: skip
