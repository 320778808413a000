"""AWQ (Lin et al. 2023): activation-aware weight quantization by per-input-channel scaling, then clipping.

Weights feeding on large activations matter most: their rounding error is multiplied by |x|. Scaling such an
input channel's weights up by s_j (and its activation down, folded into the previous module) shrinks their
relative rounding error by about s_j while the group's scale barely moves. AWQ searches the scale family

    s_j = mean|x_j|^α / w̄_j^(1−α)     (duo scaling; the paper's form is s_j = mean|x_j|^α, `duo_scaling=False`)

over a grid of α in [0, 1], normalised to √(max s · min s) = 1, keeping the α whose weights, rounded on the
target format (any wquant grid: int, NF4, FP, tables), give the least output error of the whole group of
layers fed that input: Σ_l tr(ΔW_l·H·ΔW_lᵀ) with H the Hessian of the calibration inputs (the same objective
as GPTQ's; the AutoAWQ/llm-compressor implementations measure the output of the parent module instead, e.g.
the attention block for q/k/v). w̄_j is the mean over output rows of |w| divided by its group's max |w|.

Then each smoothed weight is rounded: with `finish="rtn"` after a clip search (per group of the format, the clip
multiplier in [1 − max_shrink, 1] with the least output error of that group's columns, H's diagonal block),
or with `finish="gptq"` by GPTQ on the smoothed weight and the smoothed inputs' Hessian (AWQ + GPTQ).
α = 0 is s ≡ 1 (plain rounding) in the paper's form, so the search never loses to RTN on its objective.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from wquant.algorithms.activations import ActivationSpec
from wquant.algorithms.common import (
    best_scales_per_group,
    check_hessian,
    check_weight,
    refuse_clip_search_on_unbounded_grid,
)
from wquant.algorithms.gptq import GPTQConfig, gptq
from wquant.algorithms.registry import Quantized, register
from wquant.algorithms.smoothing import ChannelScales, check_group, normalized, quadratic_error, rtn_values
from wquant.algorithms.statistics import LayerStatistics
from wquant.errors import ParameterError
from wquant.formats import (
    DEFAULT_FORMAT,
    FormatSpec,
    GroupScales,
    QuantizedTensor,
    TensorLayout,
    as_2d,
    compute_dtype,
    parse_spec,
    prepare_layout,
)
from wquant.formats.layout import reconstruct
from wquant.validation import check_int_range

SCALE_FLOOR = 1e-4  # smallest raw scale before normalisation (a dead input channel)


@dataclass(frozen=True)
class AWQConfig:
    """AWQ on `format`.

    grid: α points searched (`alpha_grid`). duo_scaling: divide by the weights' normalised magnitude too.
    clip: search each group's clip after scaling (finish "rtn" only); clip_grid / max_shrink: multipliers
    1 − i/clip_grid for i < max_shrink·clip_grid. finish: "rtn" (AWQ) or "gptq" (AWQ scales, then GPTQ with
    damping `damp` and column order `act_order`). fold: where no module before a layer group can absorb the
    scale exactly, "exact" leaves the group unscaled, "store" keeps s as a stored fp16 divisor of the input
    (16 bits per input channel and group, counted in the model's bits).
    """

    format: str | FormatSpec = DEFAULT_FORMAT
    grid: int = 20
    duo_scaling: bool = True
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5
    finish: Literal["rtn", "gptq"] = "rtn"
    damp: float = 0.01
    act_order: bool | Literal["group"] = "group"
    fold: Literal["exact", "store"] = "exact"
    uses_calibration: ClassVar[bool] = True
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", parse_spec(self.format))
        check_int_range(self.grid, "AWQ alpha grid", 3, 1000)
        check_int_range(self.clip_grid, "AWQ clip grid", 1, 1000)
        if not 0.0 <= self.max_shrink < 1.0:
            raise ParameterError(f"AWQ max_shrink must be in [0, 1), got {self.max_shrink}")
        if self.finish not in ("rtn", "gptq"):
            raise ParameterError(f"AWQ finish must be 'rtn' or 'gptq', got {self.finish!r}")
        if self.fold not in ("exact", "store"):
            raise ParameterError(f"AWQ fold must be 'exact' or 'store', got {self.fold!r}")
        if self.clip and self.finish == "rtn":
            refuse_clip_search_on_unbounded_grid(self.spec)

    @property
    def spec(self) -> FormatSpec:
        return self.format  # type: ignore[return-value]

    def with_format(self, spec: FormatSpec | str) -> AWQConfig:
        return replace(self, format=parse_spec(spec))

    def channel_scales(
        self, weights: list[torch.Tensor], stats: LayerStatistics, *, activations: ActivationSpec | None = None,
        name: str = "layer",
    ) -> ChannelScales:  # fmt: skip
        return awq_scales(weights, stats, self, name=name)


def weight_magnitude(weights: list[torch.Tensor], spec: FormatSpec) -> torch.Tensor:
    """Per input channel: the mean over all rows of |w| / (max |w| of its quantization group)."""
    parts = []
    for w in weights:
        layout = prepare_layout(w, spec)
        x = w.abs().float()
        peak = layout.per_element(_group_max(layout, x))
        parts.append(x / (peak + 1e-6))
    return torch.cat(parts).mean(dim=0)


def _group_max(layout: TensorLayout, x: torch.Tensor) -> torch.Tensor:
    blocks, _ = layout.spec.scaling.blocks(x)
    return blocks.amax(dim=-1).reshape(layout.scale_rows, layout.groups)


def candidate_scales(act_mean: torch.Tensor, w_mean: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """s = mean|x|^α (/ w̄^(1−α) with duo scaling), floored at SCALE_FLOOR, normalised."""
    x = act_mean.double().clamp(min=0)
    s = x.pow(alpha)
    if w_mean is not None:
        s = s / (w_mean.double().pow(1.0 - alpha) + SCALE_FLOOR)
    return normalized(s.clamp(min=SCALE_FLOOR)).float()


def alpha_grid(grid: int, duo_scaling: bool) -> list[tuple[float, bool]]:
    """The (α, duo) points searched: α = i/(grid−1) in the paper's form; with duo scaling s ≡ 1 first (the
    paper's α = 0, plain rounding), then α = i/(grid−2) in the duo form — `grid` points either way, as
    llm-compressor's `n_grid`."""
    if not duo_scaling:
        return [(i / max(grid - 1, 1), False) for i in range(grid)]
    return [(0.0, False)] + [(i / max(grid - 2, 1), True) for i in range(grid - 1)]


def awq_scales(
    weights: list[torch.Tensor], stats: LayerStatistics, config: AWQConfig | None = None, *, name: str = "layer"
) -> ChannelScales:
    """AWQ's scale for the layers `weights` (each (out, in)) fed the inputs `stats` describes (see module doc).

    Ties go to the earlier grid point, so s ≡ 1 (first) wins unless some α is strictly better.
    """
    config = config or AWQConfig()
    group = check_group(weights, name)
    hessian = check_hessian(stats.hessian(), group[0].shape[1], name).double()
    act_mean = stats.abs_mean()
    w_mean = weight_magnitude(group, config.spec) if config.duo_scaling else None
    best: tuple[float, float, bool, torch.Tensor] | None = None
    plain = None
    for alpha, duo in alpha_grid(config.grid, config.duo_scaling):
        s = candidate_scales(act_mean, w_mean if duo else None, alpha)
        approx = [rtn_values(w * s, config.spec, name=name) / s for w in group]
        err = quadratic_error(group, approx, hessian)
        plain = err if plain is None else plain
        if best is None or err < best[0]:
            best = (err, alpha, duo, s)
    assert best is not None and plain is not None
    err, alpha, duo, s = best
    if alpha == 0.0 and not duo:
        return ChannelScales(torch.ones_like(act_mean), "AWQ: no α beat plain rounding")
    form = "duo " if duo else ""
    return ChannelScales(s, f"AWQ {form}α={alpha:.3f} s∈[{float(s.min()):.3g}, {float(s.max()):.3g}] "
                            f"err ×{err / max(plain, 1e-300):.3f}")  # fmt: skip


def group_quadratic_errors(layout: TensorLayout, delta: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """(scale rows, groups): each group's error Δ_g·H_gg·Δ_gᵀ with H_gg the Hessian block of its columns."""
    gran = layout.spec.scaling.granularity
    if gran == "tensor":
        return ((delta @ hessian) * delta).sum().reshape(1, 1)
    if gran == "channel":
        return ((delta @ hessian) * delta).sum(dim=1, keepdim=True)
    size, groups, cols = layout.group_len, layout.groups, layout.cols
    pad = groups * size - cols
    d = F.pad(delta, (0, pad)).reshape(delta.shape[0], groups, size)
    h = F.pad(hessian, (0, pad, 0, pad)).reshape(groups, size, groups, size)
    index = torch.arange(groups)
    blocks = h[index, :, index, :]  # (groups, size, size): the diagonal blocks
    return torch.einsum("rgi,gij,rgj->rg", d, blocks, d)


def clip_search(layout: TensorLayout, x: torch.Tensor, hessian: torch.Tensor, multipliers: np.ndarray) -> GroupScales:
    """Per group, the clip multiplier with the least output error of its columns (Hessian block)."""
    mask = layout.outlier_mask()
    h = hessian.to(x.dtype)

    def group_error(scales: GroupScales) -> torch.Tensor:
        delta = reconstruct(layout, x, scales) - x
        return group_quadratic_errors(layout, delta if mask is None else delta.masked_fill(mask, 0.0), h)

    return best_scales_per_group(layout, x, [float(c) for c in multipliers], group_error)


def awq_round(
    weight: torch.Tensor, hessian: torch.Tensor | None, config: AWQConfig, *, name: str = "weight"
) -> QuantizedTensor:
    """Round one (already smoothed) weight as AWQ does: clip search on the Hessian, or GPTQ."""
    weight = check_weight(weight, name)
    if hessian is not None and config.finish == "gptq":
        return gptq(weight, hessian, GPTQConfig(config.spec, damp=config.damp, act_order=config.act_order),
                    name=name).quantized  # fmt: skip
    layout = prepare_layout(weight, config.spec, name=name)
    x = layout.without_outliers(as_2d(weight.detach()).to(compute_dtype(weight.dtype)))
    if hessian is None or not config.clip:
        scales = layout.choose_scales(x)
    else:
        h = check_hessian(hessian, layout.cols, name)
        steps = max(1, int(round(config.max_shrink * config.clip_grid)))
        multipliers = 1.0 - np.arange(steps) / config.clip_grid
        scales = clip_search(layout, x, h, multipliers)
    return layout.assemble(layout.encode(x, scales), scales)


@dataclass(frozen=True)
class AWQResult:
    """AWQ on one group of layers: the scale, and each layer's smoothed weight W·diag(s) quantized."""

    scales: torch.Tensor
    quantized: list[QuantizedTensor]
    note: str

    def effective(self, i: int = 0) -> torch.Tensor:
        """Layer i's weight as seen by unscaled inputs: dequantized(W·diag(s)) / s."""
        return self.quantized[i].dequantize().float() / self.scales


def awq(
    weights: list[torch.Tensor] | torch.Tensor, stats: LayerStatistics, config: AWQConfig | None = None, *,
    name: str = "layer",
) -> AWQResult:  # fmt: skip
    """AWQ on layers fed one input, outside a model: scale search, then each smoothed weight rounded.

    In a model the walk folds 1/s into the previous module; here `AWQResult.effective` divides it back out.
    """
    config = config or AWQConfig()
    group = [weights] if isinstance(weights, torch.Tensor) else list(weights)
    found = awq_scales(group, stats, config, name=name)
    smoothed = stats.scaled(found.scales)
    h = smoothed.hessian()
    out = [awq_round(as_2d(w).float() * found.scales, h, config, name=f"{name}[{i}]") for i, w in enumerate(group)]
    return AWQResult(found.scales, out, found.note)


def _handler(weight: torch.Tensor, config: AWQConfig, stats: LayerStatistics | None, name: str) -> Quantized:
    """The weight arrives smoothed (the walk folded 1/s into the previous module); round it."""
    if stats is None:
        return Quantized(awq_round(weight, None, config, name=name), "no inputs: RTN")
    return Quantized(awq_round(weight, stats.hessian(), config, name=name))


register("awq", AWQConfig, _handler, from_format=lambda spec: AWQConfig(spec),
         summary="AWQ: activation-aware input-channel scales folded into the previous module, clip search")  # fmt: skip
register("awq-gptq", AWQConfig, _handler, from_format=lambda spec: AWQConfig(spec, finish="gptq"),
         summary="AWQ scales, then GPTQ on the smoothed weights")  # fmt: skip
