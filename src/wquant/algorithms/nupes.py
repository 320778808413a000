"""NUPES-style power quantization: companded grid sign(w)|w|^a, exponent search, learned codes.

The operator is wquant's `pow<a>:<b>` grid (formats.md B1): round K·(|w|/s)^a to an integer, K = 2^(b−1)−1,
so inference stays integer codes times one scale, and a < 1 crowds levels towards zero where bell-shaped
weights live. Two things are chosen per tensor:

* the exponent a, by a coarse-then-fine grid search of the weight error (data-free) or of the layer
  output error tr(ΔW·H·ΔWᵀ) on calibration inputs (data-driven);
* the codes themselves (data-driven): a continuous latent per weight, in grid units, is trained by Adam on
  the output error with a straight-through estimator, so a weight may land on any level of the grid, not
  only the two around it. The best hard solution seen is kept, so learning never ends worse than it began.

The paper's own optimisation details are not public (formats.md B2); these are our stand-ins.

On a fixed grid that has no power form (the GGUF presets `q4_k`, `iq4_xs`, ...: `NUPESConfig.from_format`
sets `grid`), there is no exponent to search: the same code learning runs on that exact format, so a GGUF
export carries what NUPES measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from wquant.algorithms.common import check_hessian, check_weight
from wquant.algorithms.gptq import GPTQConfig, gptq
from wquant.algorithms.registry import Quantized, hessian_of, register
from wquant.algorithms.statistics import LayerStatistics, relative_error
from wquant.errors import ParameterError, SpecError
from wquant.formats import (
    Codebook,
    FormatSpec,
    IntGrid,
    PowerGrid,
    QuantizedTensor,
    as_2d,
    compute_dtype,
    parse_spec,
    prepare_layout,
    quantize,
)
from wquant.formats.spec import GGUF_PRESETS, parse_scaling, preset_name
from wquant.validation import check_int_range, check_positive

SearchObjective = Literal["weight", "output"]
Init = Literal["rtn", "gptq"]


@dataclass(frozen=True)
class NUPESConfig:
    """Power-grid quantization settings.

    bits, scaling: the format is `pow<a>:<bits>/<scaling>`. exponent: fix a instead of searching.
    search: "output" uses the layer Hessian when there is one (else the weight error), "weight" never does.
    lo, hi, coarse, fine: the exponent grid (coarse steps over [lo, hi], then fine steps around the best).
    steps, lr: Adam steps and learning rate (grid units) of the code learning; 0 steps = rounding only.
    init: start learning from GPTQ on the same power grid (default; learning then refines it) or plain rounding.
    grid: a fixed format to learn codes on instead of a power grid (no exponent search), e.g. "q4_k".
    """

    bits: int = 4
    scaling: str = "channel:absmax:bf16"
    exponent: float | None = None
    search: SearchObjective = "output"
    lo: float = 0.2
    hi: float = 1.0
    coarse: float = 0.1
    fine: float = 0.02
    steps: int = 200
    lr: float = 0.001
    init: Init = "gptq"
    grid: str | None = None

    def __post_init__(self) -> None:
        if self.grid is not None:
            object.__setattr__(self, "grid", parse_spec(self.grid).to_string())
        check_int_range(self.bits, "NUPES bits", 2, 16)
        parse_scaling(self.scaling)  # raises SpecError early
        if self.exponent is not None:
            power_spec(self.bits, self.exponent, self.scaling)
        if self.search not in ("weight", "output"):
            raise ParameterError(f"NUPES search {self.search!r} unknown; valid: output, weight")
        if self.init not in ("rtn", "gptq"):
            raise ParameterError(f"NUPES init {self.init!r} unknown; valid: gptq, rtn")
        for name in ("lo", "hi", "coarse", "fine", "lr"):
            check_positive(getattr(self, name), f"NUPES {name}")
        if not self.lo < self.hi <= 4:
            raise ParameterError(f"NUPES exponent range needs 0 < lo < hi <= 4, got [{self.lo}, {self.hi}]")
        check_int_range(self.steps, "NUPES steps", 0)

    @property
    def needs_calibration(self) -> bool:
        return False  # works data-free; uses calibration when given

    @property
    def uses_calibration(self) -> bool:
        return True

    @staticmethod
    def from_format(spec: FormatSpec | str, **options: object) -> NUPESConfig:
        """NUPES on the bits and scaling of `spec`: a symmetric int grid (exponent searched) or a power grid
        pow<a>:<b> (exponent a kept). A GGUF type with no power form (q4_0, q4_k, iq4_xs, ...; any two-level
        format) keeps its grid, and only the codes are learned. Other grids and modifiers are refused."""
        spec = parse_spec(spec)
        element = spec.element
        usable = isinstance(element, PowerGrid) or (isinstance(element, IntGrid) and element.variant == "sym")
        if spec.scaling.two_level or (not usable and preset_name(spec) in GGUF_PRESETS):
            return NUPESConfig(**{"bits": min(max(element.bits, 2), 16), "grid": spec.to_string(),
                                  **options})  # type: ignore[arg-type]  # fmt: skip
        if not usable or spec.outliers is not None or spec.coding is not None or spec.scaling.search:
            raise SpecError(
                f"NUPES quantizes onto a power grid pow<a>:<bits>; {spec.to_string()!r} has no such form. Give a "
                "symmetric int grid (e.g. int4/block128:absmax:fp16, exponent searched) or pow<a>:<bits>/..., "
                "without +search, +outliers or +coded"
            )
        exponent = element.exponent if isinstance(element, PowerGrid) else None
        return NUPESConfig(**{"bits": element.bits, "scaling": spec.scaling.token, "exponent": exponent,
                              **options})  # type: ignore[arg-type]  # fmt: skip

    def with_format(self, spec: FormatSpec | str) -> NUPESConfig:
        target = NUPESConfig.from_format(spec)
        return replace(self, bits=target.bits, scaling=target.scaling, exponent=target.exponent, grid=target.grid)


@dataclass(frozen=True)
class NUPESResult:
    quantized: QuantizedTensor
    exponent: float
    error_uniform: float  # relative error at a = 1 (the symmetric integer grid of the same bits)
    error_rounded: float  # relative error at the searched a, plain (companded) rounding
    error_final: float  # after code learning
    objective: SearchObjective


def power_spec(bits: int, exponent: float, scaling: str = "channel:absmax:bf16") -> FormatSpec:
    """The `pow<a>:<bits>/<scaling>` spec; a is kept to 4 decimals so the spec string stays short."""
    return parse_spec(f"pow{round(float(exponent), 4)!r}:{bits}/{scaling}".replace("e+", "e"))


def search_exponent(
    weight: torch.Tensor, config: NUPESConfig, hessian: torch.Tensor | None = None
) -> tuple[float, float, dict[float, float]]:
    """(best a, its relative error, every a tried → error): coarse grid over [lo, hi], then a fine one."""
    use_h = hessian if config.search == "output" else None
    curve: dict[float, float] = {}

    def error(a: float) -> float:
        a = round(float(a), 4)
        if a not in curve:
            curve[a] = relative_error(
                weight, quantize(weight, power_spec(config.bits, a, config.scaling)).dequantize(), use_h
            )
        return curve[a]

    coarse = np.arange(config.lo, config.hi + config.coarse / 2, config.coarse)
    best = min(coarse, key=error)
    fine = np.arange(
        max(config.lo, best - config.coarse), min(config.hi, best + config.coarse) + config.fine / 2, config.fine
    )
    best = min(fine, key=error)
    return round(float(best), 4), curve[round(float(best), 4)], curve


def nupes(
    weight: torch.Tensor,
    config: NUPESConfig | None = None,
    *,
    hessian: torch.Tensor | None = None,
    name: str = "weight",
) -> NUPESResult:
    """Quantize `weight` to a power grid: search a (unless fixed), then learn the codes (with a Hessian)."""
    config = config or NUPESConfig()
    weight = check_weight(weight, name)
    if hessian is not None:
        hessian = check_hessian(hessian, as_2d(weight).shape[1], name)
    objective: SearchObjective = "output" if (hessian is not None and config.search == "output") else "weight"
    use_h = hessian if objective == "output" else None
    if config.grid is not None:
        return _on_fixed_grid(weight, config, parse_spec(config.grid), hessian, use_h, objective)
    uniform = relative_error(weight, quantize(weight, power_spec(config.bits, 1.0, config.scaling)).dequantize(), use_h)
    if config.exponent is None:
        a, rounded, _ = search_exponent(weight, config, hessian)
    else:
        a = float(config.exponent)
        rounded = relative_error(
            weight, quantize(weight, power_spec(config.bits, a, config.scaling)).dequantize(), use_h
        )
    spec = power_spec(config.bits, a, config.scaling)
    if hessian is None or config.steps == 0:
        q = quantize(weight, spec)
        if hessian is not None and config.init == "gptq":
            q = gptq(weight, hessian, GPTQConfig(spec)).quantized
        return NUPESResult(q, a, uniform, rounded, relative_error(weight, q.dequantize(), use_h), objective)
    q = learn_codes(weight, spec, hessian, steps=config.steps, lr=config.lr, init=config.init)
    final = relative_error(weight, q.dequantize(), use_h)
    return NUPESResult(q, a, uniform, rounded, final, objective)


def _on_fixed_grid(
    weight: torch.Tensor, config: NUPESConfig, spec: FormatSpec, hessian: torch.Tensor | None,
    use_h: torch.Tensor | None, objective: SearchObjective,
) -> NUPESResult:  # fmt: skip
    """Code learning on a fixed format (exponent reported as NaN: there is none)."""
    rounded = relative_error(weight, quantize(weight, spec).dequantize(), use_h)
    if hessian is None or config.steps == 0:
        q = quantize(weight, spec)
        if hessian is not None and config.init == "gptq":
            q = gptq(weight, hessian, GPTQConfig(spec)).quantized
    else:
        q = learn_codes(weight, spec, hessian, steps=config.steps, lr=config.lr, init=config.init)
    final = relative_error(weight, q.dequantize(), use_h)
    return NUPESResult(q, float("nan"), rounded, rounded, final, objective)


def learn_codes(
    weight: torch.Tensor, spec: FormatSpec, hessian: torch.Tensor, *, steps: int, lr: float, init: Init = "rtn"
) -> QuantizedTensor:
    """Train a latent per weight (grid units) on tr(ΔW·H·ΔWᵀ) with a straight-through rounding estimator.

    Scales stay those of the format (absmax of the original weight), so the result is the same format at
    the same bits; only codes move, and they may move to any level of the grid.
    """
    layout = prepare_layout(weight, spec)
    dtype = compute_dtype(weight.dtype)
    w = as_2d(weight.detach()).to(dtype)
    h = hessian.detach().to(dtype)
    scales = layout.choose_scales(layout.without_outliers(w))
    s = layout.per_element(scales.scales).to(dtype)
    o = None if scales.offsets is None else layout.per_element(scales.offsets).to(dtype)
    safe = torch.where(s == 0, torch.ones_like(s), s)
    start = w if init == "rtn" else gptq(weight, hessian, GPTQConfig(spec)).quantized.dequantize().to(dtype)
    start = as_2d(start)
    latent = ((layout.without_outliers(start) - (0 if o is None else o)) / safe).clone().requires_grad_(True)
    book = layout.book
    norm = ((w @ h) * w).sum().clamp(min=torch.finfo(dtype).tiny)

    def hard(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = book.encode(z.detach())
        values = book.decode(codes, dtype)
        return codes, values

    def to_weight(levels: torch.Tensor) -> torch.Tensor:
        return layout.restore_outliers(levels * s if o is None else levels * s + o)

    def loss_of(approx: torch.Tensor) -> torch.Tensor:
        delta = approx - w
        return ((delta @ h) * delta).sum() / norm

    best_codes, values = hard(latent)
    best = float(loss_of(to_weight(values)))
    opt = torch.optim.Adam([latent], lr=lr)
    with torch.enable_grad():  # callers may run under no_grad (the calibration walk does)
        best, best_codes = _train(latent, opt, steps, hard, lambda v: loss_of(to_weight(v)), book, best, best_codes)
    codes, values = hard(latent)
    if float(loss_of(to_weight(values))) < best:
        best_codes = codes
    return layout.assemble(best_codes, scales)


Hard = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _train(
    latent: torch.Tensor, opt: torch.optim.Optimizer, steps: int, hard: Hard,
    loss_of: Callable[[torch.Tensor], torch.Tensor], book: Codebook, best: float, best_codes: torch.Tensor,
) -> tuple[float, torch.Tensor]:  # fmt: skip
    """Adam on the latent with a straight-through estimator; the best hard codes seen are kept."""
    for _ in range(steps):
        codes, values = hard(latent)
        ste = latent + (values - latent).detach()  # forward: the grid level; backward: identity
        loss = loss_of(ste)
        if float(loss.detach()) < best:
            best, best_codes = float(loss.detach()), codes
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            latent.clamp_(book.lo, book.hi)
    return best, best_codes


def _nupes_handler(weight: torch.Tensor, config: NUPESConfig, stats: LayerStatistics | None, name: str) -> Quantized:
    result = nupes(weight, config, hessian=hessian_of(stats), name=name)
    return Quantized(result.quantized, "learned codes" if config.grid else f"a={result.exponent:g}")


register("nupes", NUPESConfig, _nupes_handler, from_format=NUPESConfig.from_format,
         summary="NUPES: power grid sign(w)|w|^a, exponent searched, codes learned on the layer Hessian")  # fmt: skip
