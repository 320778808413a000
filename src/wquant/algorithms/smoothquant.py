"""SmoothQuant (Xiao et al. 2022): move activation outliers into the weights before W8A8 quantization.

A few input channels of a transformer layer carry activations 10–100× larger than the rest, so a per-token
int8 scale set by them rounds every other channel coarsely. The per-channel scale

    s_j = max|X_j|^α / max|W_j|^(1−α)     (max|W_j| over every layer fed this input)

divides the activations (folded into the previous norm or Linear) and multiplies the weights' columns, so the
product is unchanged in floating point while both operands get flatter ranges: α is the migration strength
(0.5 balances them; α → 1 puts everything on the weights). Note that α = 0 is not "no smoothing": it gives
s_j = 1/max|W_j| (all difficulty on the activations); `alpha=None` switches smoothing off (plain W8A8).
With `search`, α is chosen per layer group on a grid by the W8A8 output error on a sample of calibration rows.
After smoothing each weight is rounded to its format (RTN, or GPTQ with `finish="gptq"`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch

from wquant.algorithms.activations import ActivationSpec, parse_activations
from wquant.algorithms.gptq import GPTQConfig, gptq
from wquant.algorithms.registry import Quantized, register
from wquant.algorithms.rtn import RTNConfig, rtn
from wquant.algorithms.smoothing import ChannelScales, check_group, w8a8_error
from wquant.algorithms.statistics import LayerStatistics
from wquant.errors import ParameterError
from wquant.formats import FormatSpec, parse_spec
from wquant.validation import check_int_range

W8A8_WEIGHTS = "int8/channel:absmax:fp32"


@dataclass(frozen=True)
class SmoothQuantConfig:
    """SmoothQuant before quantizing weights to `format` and inputs to `activations`.

    alpha: migration strength in [0, 1], or None for no smoothing (plain W8A8). search: choose α per layer
    group from `grid` evenly spaced values in [0, 1] by the output error on `input_samples` calibration rows.
    finish: how each smoothed weight is rounded: "rtn" or "gptq" (damping `damp`). fold: where no module
    before a layer group can absorb the scale exactly, "exact" leaves it unscaled, "store" keeps s as a stored fp16
    divisor of the input (16 bits per input channel and group, counted in the model's bits).
    """

    format: str | FormatSpec = W8A8_WEIGHTS
    activations: str | ActivationSpec | None = "int8/token"
    alpha: float | None = 0.5
    search: bool = False
    grid: int = 21
    samples: int = 512
    finish: Literal["rtn", "gptq"] = "rtn"
    damp: float = 0.01
    fold: Literal["exact", "store"] = "exact"
    uses_calibration: ClassVar[bool] = True
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", parse_spec(self.format))
        if self.activations is not None:
            object.__setattr__(self, "activations", parse_activations(self.activations))
        if self.alpha is not None and not 0.0 <= float(self.alpha) <= 1.0:
            raise ParameterError(f"SmoothQuant alpha must be in [0, 1] (or None for no smoothing), got {self.alpha}")
        check_int_range(self.grid, "SmoothQuant alpha grid", 2, 1001)
        check_int_range(self.samples, "SmoothQuant input samples", 1)
        if self.finish not in ("rtn", "gptq"):
            raise ParameterError(f"SmoothQuant finish must be 'rtn' or 'gptq', got {self.finish!r}")
        if self.fold not in ("exact", "store"):
            raise ParameterError(f"SmoothQuant fold must be 'exact' or 'store', got {self.fold!r}")

    @property
    def spec(self) -> FormatSpec:
        return self.format  # type: ignore[return-value]

    @property
    def input_samples(self) -> int:
        return self.samples if self.search else 0

    def with_format(self, spec: FormatSpec | str) -> SmoothQuantConfig:
        return replace(self, format=parse_spec(spec))

    def channel_scales(
        self, weights: list[torch.Tensor], stats: LayerStatistics, *, activations: ActivationSpec | None = None,
        name: str = "layer",
    ) -> ChannelScales | None:  # fmt: skip
        """The group's smoothing scale (None when smoothing is off)."""
        if self.alpha is None and not self.search:
            return None
        return smoothquant_scales(weights, stats, self, activations=activations or self.activations, name=name)  # type: ignore[arg-type]


def migration_scales(act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^α / max|W_j|^(1−α); channels with no activation or no weight keep s_j = 1."""
    a, w = act_max.double(), weight_max.double()
    live = (a > 0) & (w > 0)
    s = torch.where(live, a.clamp(min=1e-30).pow(alpha) / w.clamp(min=1e-30).pow(1.0 - alpha), torch.ones_like(a))
    return s.float()


def smoothquant_scales(
    weights: list[torch.Tensor], stats: LayerStatistics, config: SmoothQuantConfig | None = None, *,
    activations: ActivationSpec | str | None = None, name: str = "layer",
) -> ChannelScales:  # fmt: skip
    """SmoothQuant's scale for the layers `weights` (each (out, in)) fed the inputs `stats` describes."""
    config = config or SmoothQuantConfig()
    group = check_group(weights, name)
    act_max = stats.abs_max()
    weight_max = torch.stack([w.abs().amax(dim=0) for w in group]).amax(dim=0)
    if not config.search:
        return ChannelScales(migration_scales(act_max, weight_max, float(config.alpha or 0.0)), f"α={config.alpha:g}")
    rows = stats.sample_rows()
    if rows is None or not rows.shape[0]:
        raise ParameterError(f"{name}: SmoothQuant's alpha search needs sample input rows (collect with samples>0)")
    act = parse_activations(activations) if activations is not None else None
    alphas = torch.linspace(0.0, 1.0, config.grid).tolist()
    plain = w8a8_error(group, rows, torch.ones_like(act_max), config.spec, act)
    best: tuple[float, float, torch.Tensor] | None = None
    for alpha in alphas:
        s = migration_scales(act_max, weight_max, alpha)
        err = w8a8_error(group, rows, s, config.spec, act)
        if best is None or err < best[0]:
            best = (err, alpha, s)
    assert best is not None
    if plain <= best[0]:
        return ChannelScales(torch.ones_like(act_max), f"α search: no α beat no smoothing ({plain:.4g})")
    return ChannelScales(best[2], f"α={best[1]:.2f} (searched; W8A8 error ×{best[0] / max(plain, 1e-30):.3f})")


def _handler(weight: torch.Tensor, config: SmoothQuantConfig, stats: LayerStatistics | None, name: str) -> Quantized:
    """The weight arrives smoothed (W·diag(s), folded by the model walk); round it to the format."""
    if config.finish == "gptq" and stats is not None:
        return Quantized(gptq(weight, stats.hessian(), GPTQConfig(config.spec, damp=config.damp), name=name).quantized)
    note = "no inputs: RTN" if config.finish == "gptq" else ""
    return Quantized(rtn(weight, RTNConfig(config.spec, search=False), name=name), note)


register("smoothquant", SmoothQuantConfig, _handler, from_format=lambda spec: SmoothQuantConfig(spec),
         summary="SmoothQuant: migrate activation outliers into the weights (scale folded), W8A8")  # fmt: skip
