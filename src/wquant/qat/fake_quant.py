"""Differentiable fake quantization of Linear weights for every wquant format, and conversion to packed modules.

`FakeQuantLinear` keeps a float weight and, on every forward, quantizes it with the format primitives
(`prepare_layout`, `choose_scales`, `encode`, `decode`): the forward weight *is* what `formats.quantize` stores
for the current weight, so converting after training stores exactly the codes the model was trained
with (RTN of the trained weights, bits exact). The backward pass is a straight-through estimator (STE):

* weight: identity where the grid covers the value, zero where it clips (`clip_gradient`; absmax scales
  never clip, rms / learned scales can);
* learned scales (LSQ, Esser et al. 2020; `learn_scales`): each group's scale, and the minmax offset, are
  parameters, rounded through the spec's scale format in the forward (STE), so they are always storable.
  d ŵ/ds = q − (w − o)/s inside the grid, q at a clip; d ŵ/do = 0 inside, 1 at a clip (q: the level);
* learned power exponent (NUPES; `learn_exponent`): on `pow<a>:<b>` grids (or `int<b>`, which is pow1),
  a is a parameter, kept to 4 decimals in the forward like `power_spec`; d ŵ/da = s·∂level/∂a.

`PEQALinear` (Kim et al. 2023) freezes the integer codes of a first quantization and trains only the scales
(and minmax offsets; integer zero points stay fixed): ŵ = s·q + o is linear in them, so the gradient is exact.

Each forward value is the exact decoded weight (`values + (surrogate − surrogate.detach())` adds an exact 0),
so `convert_qat` swaps in `QuantizedLinear`s whose outputs equal the last fake-quant forward bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from wquant.errors import ParameterError, SpecError, TensorError
from wquant.formats import (
    DEFAULT_FORMAT,
    FormatSpec,
    GroupScales,
    IntGrid,
    PowerGrid,
    QuantizedTensor,
    TensorLayout,
    as_2d,
    compute_dtype,
    parse_spec,
    prepare_layout,
    quantize,
)
from wquant.formats.grids import UniformGrid
from wquant.formats.grouping import decode_values, nominal_codebook
from wquant.formats.quantize import search_multiplier
from wquant.models.layers import PackedWeight, QuantizedLinear, quantized_modules
from wquant.models.quantize import LayerReport
from wquant.models.sites import matches, set_submodule, weight_sites

#: Smallest and largest exponent a learned power grid may take (PowerGrid accepts (0, 4]).
EXPONENT_RANGE = (0.05, 4.0)
EXPONENT_DECIMALS = 4  # as `algorithms.power_spec` keeps it, so spec strings stay short


@dataclass(frozen=True)
class FakeQuantConfig:
    """How a Linear weight is fake-quantized during training.

    format: the wquant spec the weight is stored in after training.
    learn_scales: LSQ — each group's scale (and a minmax offset) is a parameter (not on uniform grids).
    learn_offsets: with learned scales or PEQA, minmax offsets train too (integer zero points never do).
    learn_exponent: NUPES — the exponent of a `pow<a>:<b>` grid (`int<b>` starts at a = 1) is a parameter.
    freeze_codes: PEQA — codes come from a first quantization and stay fixed; only scales (offsets) train.
    round_scales: the forward uses scales rounded through the spec's scale format (what is stored). PEQA may
      turn it off (train float scales, round once when converting: the paper's way; measure the effect).
    clip_gradient: the STE passes no weight gradient where the grid clips the value.
    """

    format: str | FormatSpec = DEFAULT_FORMAT
    learn_scales: bool = False
    learn_offsets: bool = True
    learn_exponent: bool = False
    freeze_codes: bool = False
    round_scales: bool = True
    clip_gradient: bool = True

    def __post_init__(self) -> None:
        spec = parse_spec(self.format)
        object.__setattr__(self, "format", spec)
        name = spec.to_string()
        unbounded = isinstance(spec.element, UniformGrid)
        if (self.learn_scales or self.freeze_codes) and spec.scaling.super_size is not None:
            raise ParameterError(
                f"{name}: learned scales and PEQA round each scale on its own, but two-level (super-block) scales "
                "are integer multiples of a shared super scale, which they do not learn yet; train this format "
                "with plain STE (method llm-qat or ste without learned scales), or use a one-level spec"
            )
        if self.learn_scales and self.freeze_codes:
            raise ParameterError("freeze_codes (PEQA) already trains the scales; drop learn_scales")
        if self.learn_scales and unbounded:
            raise ParameterError(
                f"{name}: a uniform grid's scale is its step (its levels run as far as the data), so learning it "
                "only trades error for bits; drop learn_scales or use a bounded grid (int<b>, nf4, ...)"
            )
        if self.learn_exponent:
            grid = spec.element
            if not (isinstance(grid, PowerGrid) or (isinstance(grid, IntGrid) and grid.variant == "sym")):
                raise SpecError(
                    f"{name}: learn_exponent needs a power grid pow<a>:<bits> or a symmetric int<bits> grid (which "
                    "is pow1); use e.g. int3/block64:absmax:bf16"
                )
            if self.freeze_codes:
                raise ParameterError("learn_exponent moves codes between levels; it cannot run with freeze_codes")
        if not self.round_scales and not self.freeze_codes:
            raise ParameterError(
                "round_scales=False is only for PEQA (freeze_codes): STE and LSQ encode onto the stored scales"
            )

    @property
    def spec(self) -> FormatSpec:
        return self.format  # type: ignore[return-value]

    def with_format(self, spec: FormatSpec | str) -> FakeQuantConfig:
        return replace(self, format=parse_spec(spec))


def _is_budget(spec: FormatSpec) -> bool:
    return isinstance(spec.element, UniformGrid) and spec.element.target_bits is not None


def _value_independent(spec: FormatSpec) -> bool:
    """The layout of such a spec depends only on the shape, so it is prepared once, not on every forward."""
    sc = spec.scaling
    return not (spec.element.data_dependent or spec.outliers is not None or sc.scale_format.tensor_scale_bits)


def _round_through(values: torch.Tensor, layout: TensorLayout, factor: float | None) -> tuple[torch.Tensor, ...]:
    """(stored values, codes) of float scales or offsets in the spec's scale format, relative to `factor`."""
    fmt = layout.spec.scaling.scale_format
    stored, codes, _ = fmt.quantize(values.detach().float(), layout.scale_book.absmax_target, factor=factor)
    return stored.reshape(values.shape), torch.as_tensor(codes).reshape(values.shape)


def _straight(param: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """Forward: the stored value; backward: identity to the parameter."""
    return param + (stored.to(param.dtype) - param).detach()


def _finish(values: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """`values` exactly in the forward, the gradient of `surrogate` in the backward."""
    return values + (surrogate - surrogate.detach())


class FakeQuantLinear(nn.Module):
    """A Linear (or transformers Conv1D, `layout="transposed"`) whose weight is fake-quantized in the forward.

    The weight stays the module's trainable float Parameter; `to_quantized()` gives the stored tensor.
    """

    def __init__(
        self, weight: nn.Parameter, bias: nn.Parameter | None, config: FakeQuantConfig, *,
        layout: str = "linear", name: str = "weight", initial: QuantizedTensor | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        if layout not in ("linear", "transposed"):
            raise ParameterError(f"FakeQuantLinear layout must be 'linear' or 'transposed', got {layout!r}")
        if initial is not None and not config.learn_scales:
            raise ParameterError(
                f"{name}: starting from stored codes (e.g. GPTQ's) needs learned scales that start at the stored "
                "ones (rule-made scales of the decoded weight round it elsewhere); pass learn_scales=True"
            )
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight.detach().clone())
        self.bias = bias
        self.config = config
        self.layout = layout
        self.name = name
        w2d = self._weight_2d().detach()
        self.out_features, self.in_features = w2d.shape
        spec = config.spec
        if config.learn_exponent and isinstance(spec.element, IntGrid):
            spec = replace(spec, element=PowerGrid(spec.element.bits, 1.0))
        first = prepare_layout(w2d, spec, name=name)  # validates; resolves a budget's step once
        self._train_spec = first.spec  # the spec every forward uses (a budget is re-met when converting)
        self._static = first if _value_independent(first.spec) and not config.learn_exponent else None
        self._multiplier = 1.0
        self._factor: float | None = None
        if config.learn_scales:
            work = first.without_outliers(w2d.to(compute_dtype(w2d.dtype)))
            if first.spec.scaling.search:
                self._multiplier = search_multiplier(first, work, None)
            init = first.choose_scales(work, self._multiplier, fit_factor=True)
            if initial is not None:  # the stored scales: rounding the decoded weight on them gives back its codes
                stored = initial.scales()
                init = replace(init, scales=stored.to(init.scales.dtype).reshape(init.scales.shape),
                               offsets=None if init.offsets is None else initial.offsets(stored).to(init.offsets.dtype)
                               .reshape(init.offsets.shape), tensor_scale=initial.tensor_scale)  # fmt: skip
            self._factor = init.tensor_scale
            self.scale = nn.Parameter(init.scales.clone())
            if first.spec.scaling.rule == "minmax":
                assert init.offsets is not None
                if config.learn_offsets:
                    self.offset = nn.Parameter(init.offsets.clone())
                else:
                    self.register_buffer("offset", init.offsets.clone())
        if config.learn_exponent:
            self.exponent = nn.Parameter(torch.tensor(float(spec.element.exponent), dtype=torch.float32))  # type: ignore[union-attr]

    # ------------------------------------------------------------------------------------------- pieces

    def _weight_2d(self) -> torch.Tensor:
        w = self.weight.t() if self.layout == "transposed" else self.weight
        return as_2d(w)

    def current_exponent(self) -> float:
        """The exponent the forward uses: the parameter clamped to EXPONENT_RANGE, kept to 4 decimals."""
        a = float(self.exponent.detach().clamp(*EXPONENT_RANGE))
        return round(a, EXPONENT_DECIMALS)

    def current_spec(self) -> FormatSpec:
        if not self.config.learn_exponent:
            return self._train_spec
        grid = self._train_spec.element
        assert isinstance(grid, PowerGrid)
        return replace(self._train_spec, element=PowerGrid(grid.bits, self.current_exponent(), grid.rounding))

    def _layout(self, x: torch.Tensor) -> TensorLayout:
        return self._static if self._static is not None else prepare_layout(x, self.current_spec(), name=self.name)

    def _scales(self, layout: TensorLayout, work: torch.Tensor) -> GroupScales:
        """The group scales of this forward: the spec's rule on the current weight, or the learned ones rounded."""
        if not self.config.learn_scales:
            mult = search_multiplier(layout, work, None) if layout.spec.scaling.search else 1.0
            return layout.choose_scales(work, mult, fit_factor=True)
        scales, scale_codes = _round_through(self.scale, layout, self._factor)
        rule = layout.spec.scaling.rule
        gs = GroupScales(scales, scale_codes, tensor_scale=self._factor)
        if rule == "minmax":
            offsets, offset_codes = _round_through(self.offset, layout, None)
            gs = replace(gs, offsets=offsets, offset_codes=offset_codes)
        elif rule == "zeropoint":  # the integer zero point follows the group minimum and the learned scale
            sc = layout.spec.scaling
            blocks, pad = sc.blocks(work)
            _, mins = sc.raw_scales(blocks, layout.scale_book, pad)
            gs = layout.with_offsets(gs, mins * self._multiplier)  # type: ignore[operator]
        return gs

    def quantized_fields(self) -> tuple[TensorLayout, GroupScales, torch.Tensor]:
        """(layout, group scales, codes) of the current weight: what the forward decodes and `to_quantized` stores."""
        with torch.no_grad():
            x = self._weight_2d().detach()
            x = x.to(compute_dtype(x.dtype))
            layout = self._layout(x)
            work = layout.without_outliers(x)
            scales = self._scales(layout, work)
            return layout, scales, layout.encode(work, scales)

    # ------------------------------------------------------------------------------------------ forward

    def fake_weight(self) -> torch.Tensor:
        """The weight as it will be stored (forward) with the straight-through gradient (backward)."""
        layout, gs, codes = self.quantized_fields()
        w2d = self._weight_2d()
        dtype = compute_dtype(w2d.dtype)
        x = w2d.to(dtype)
        values = layout.restore_outliers(layout.decode(codes, gs, dtype))
        book = layout.book
        level = book.decode(codes, dtype)  # grid units
        if self.config.learn_scales:
            s_stored = _straight(self.scale, gs.scales)
            if layout.spec.scaling.rule == "minmax":
                o_group = _straight(self.offset, gs.offsets)  # type: ignore[arg-type]
            elif layout.spec.scaling.rule == "zeropoint":  # −level[z]·s: moves with the learned scale
                zero = (-gs.offsets / torch.where(gs.scales == 0, 1.0, gs.scales)).detach()  # type: ignore[operator]
                o_group = zero * s_stored
            else:
                o_group = None
        else:
            s_stored, o_group = gs.scales, gs.offsets
        s = layout.per_element(s_stored).to(dtype)
        o = None if o_group is None else layout.per_element(o_group).to(dtype)
        safe = torch.where(s.detach() == 0, torch.ones_like(s), s.detach())
        z = (x.detach() - (0.0 if o is None else o.detach())) / safe  # the weight in grid units
        if self.config.learn_exponent:
            level = self._live_levels(codes, book.size, dtype)
        if self.config.clip_gradient:
            inside = (z >= book.lo) & (z <= book.hi)
        else:
            inside = torch.ones_like(z, dtype=torch.bool)
        clipped = level * s + (0.0 if o is None else o)
        surrogate = torch.where(inside, x + (level - z) * s, clipped)
        mask = layout.outlier_mask()
        if mask is not None:  # stored exactly: identity to the weight, nothing to the scales
            surrogate = torch.where(mask, x, surrogate)
        return _finish(values, surrogate).reshape(w2d.shape)

    def _live_levels(self, codes: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
        """Levels ±(|k|/K)^(1/a) of the codes, differentiable in the exponent parameter (forward: the rounded a)."""
        k_max = (size - 1) // 2
        u = (codes.to(dtype) - k_max) / k_max
        a = _straight(self.exponent, torch.tensor(self.current_exponent())).to(dtype)
        magnitude = torch.where(u == 0, torch.zeros_like(u), u.abs().clamp(min=1e-30) ** (1.0 / a))
        return torch.sign(u) * magnitude

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fake_weight()
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w.to(x.dtype), bias)

    # --------------------------------------------------------------------------------------- converting

    def to_quantized(self) -> QuantizedTensor:
        """The stored tensor of the trained weight: the codes and scales the last forward decoded."""
        if _is_budget(self.config.spec):  # a budget is met again on the trained weights (its step may move)
            w = self._weight_2d().detach()
            return quantize(w, self.config.spec, name=self.name)
        layout, gs, codes = self.quantized_fields()
        return layout.assemble(codes, gs)  # shape (out, in): wquant's storage layout, Conv1D included

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        """What QAT trains here: the weight, the bias and any learned scale, offset or exponent."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def extra_repr(self) -> str:
        extras = [n for n in ("scale", "offset", "exponent") if isinstance(getattr(self, n, None), nn.Parameter)]
        learn = f", learned {'+'.join(extras)}" if extras else ""
        return f"{self.current_spec().to_string()}, in={self.in_features}, out={self.out_features}{learn}"


class PEQALinear(nn.Module):
    """PEQA: integer codes frozen from a first quantization; the scales (and minmax offsets) are the parameters.

    ŵ = s·level[code] + o per group. With `round_scales` the forward rounds s and o through the spec's scale
    format (STE), so training sees what is stored; without, it trains float scales and `to_quantized` rounds.
    """

    def __init__(
        self, quantized: QuantizedTensor, bias: nn.Parameter | None, config: FakeQuantConfig, *,
        layout: str = "linear", name: str = "weight",
    ) -> None:  # fmt: skip
        super().__init__()
        self.config = replace(config, format=quantized.spec)  # validates: e.g. no two-level scales
        self.layout = layout
        self.name = name
        self.bias = bias
        self.initial = quantized  # packed; the codes are asserted unchanged when converting
        self.spec = quantized.spec
        self.shape = quantized.shape
        self.stored_dtype = quantized.dtype
        self.out_features = quantized.shape[0]
        self.in_features = quantized.numel // quantized.shape[0]
        rows, cols = self.out_features, self.in_features
        self.register_buffer("codes", quantized.codes.reshape(rows, cols).to(torch.int32))
        scales = quantized.scales()
        self.scale = nn.Parameter(scales.clone())
        self._factor = quantized.tensor_scale
        offsets = quantized.offsets(scales)
        rule = self.spec.scaling.rule
        if rule == "minmax":
            assert offsets is not None
            if config.learn_offsets:
                self.offset = nn.Parameter(offsets.clone())
            else:
                self.register_buffer("offset", offsets.clone())
        elif rule == "zeropoint":  # the integer zero point's level, fixed: offset = −level·s
            codes = quantized.offset_codes
            assert codes is not None
            zero = quantized.codebook().decode(torch.as_tensor(codes), torch.float32).reshape(scales.shape)
            self.register_buffer("zero_level", zero)
        index = torch.as_tensor(quantized.outlier_index, dtype=torch.int64)
        self.register_buffer("outlier_index", index)
        if index.numel():
            assert self.spec.outliers is not None
            values = self.spec.outliers.value_format.decode(quantized.outlier_codes, None)
            self.register_buffer("outlier_values", values.to(torch.float32))
        self._layout = TensorLayout(
            self.spec, (rows, cols), quantized.dtype, quantized.codebook(), nominal_codebook(self.spec),
            quantized.table, self._factor, index, quantized.outlier_codes,
        )  # fmt: skip

    def _scales_and_offsets(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """(scale used, offset used, scale codes, offset codes): rounded through the format when asked."""
        stored, codes = _round_through(self.scale, self._layout, self._factor)
        s = _straight(self.scale, stored) if self.config.round_scales else self.scale
        rule = self.spec.scaling.rule
        if rule == "minmax":
            o_stored, o_codes = _round_through(self.offset, self._layout, None)
            o = _straight(self.offset, o_stored) if self.config.round_scales else self.offset
            return s, o, codes, o_codes
        if rule == "zeropoint":
            assert self.initial.offset_codes is not None
            return s, -self.zero_level * s, codes, torch.as_tensor(self.initial.offset_codes)
        return s, None, codes, None

    def fake_weight(self) -> torch.Tensor:
        s, o, _, _ = self._scales_and_offsets()
        book = self._layout.book
        scaling = self.spec.scaling
        dtype = compute_dtype(self.stored_dtype)
        values = decode_values(self.codes, book, s.detach(), None if o is None else o.detach(), scaling, dtype)
        level = book.decode(self.codes, dtype)
        surrogate = level * self._layout.per_element(s).to(dtype)
        if o is not None:
            surrogate = surrogate + self._layout.per_element(o).to(dtype)
        if self.outlier_index.numel():
            flat_values = values.reshape(-1).clone()
            flat_values[self.outlier_index] = self.outlier_values.to(dtype)
            values = flat_values.view(values.shape)
            surrogate = surrogate.reshape(-1).index_fill(0, self.outlier_index, 0.0).view(values.shape)
        return _finish(values, surrogate)

    @property
    def weight(self) -> torch.Tensor:
        """Read-only fake-quantized weight in the replaced module's layout."""
        w = self.fake_weight().detach().reshape(self.shape)
        return w.t() if self.layout == "transposed" else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fake_weight()
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w.to(x.dtype), bias)

    def to_quantized(self) -> QuantizedTensor:
        """The stored tensor: the frozen codes on the trained scales rounded through the scale format."""
        with torch.no_grad():
            _, _, scale_codes, offset_codes = self._scales_and_offsets()
        q = QuantizedTensor.pack(
            self.spec, self.shape, self.stored_dtype, self.codes.reshape(-1).to(self._layout.book.code_dtype()),
            scale_codes.reshape(-1).numpy(), None if offset_codes is None else offset_codes.reshape(-1).numpy(),
            self._factor, self.initial.table, self.initial.outlier_index, self.initial.outlier_codes,
        )  # fmt: skip
        if not torch.equal(q.codes, self.initial.codes):  # the whole point of PEQA: never move a code
            raise AssertionError(f"{self.name}: PEQA changed integer codes; this is a wquant bug, please report it")
        return q

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        """What PEQA trains: the scales and (minmax) offsets only; the bias stays as it is."""
        return [(n, p) for n, p in self.named_parameters() if n in ("scale", "offset")]

    def extra_repr(self) -> str:
        return f"{self.spec.to_string()}, in={self.in_features}, out={self.out_features}, codes frozen"


QATModule = FakeQuantLinear | PEQALinear


def qat_modules(model: nn.Module) -> list[tuple[str, QATModule]]:
    """Every (path, fake-quantized module) of a prepared model, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QATModule)]


def prepare_qat(
    model: nn.Module,
    config: FakeQuantConfig | FormatSpec | str,
    *,
    include: tuple[str, ...] = ("*",),
    exclude: tuple[str, ...] = (),
    log: Callable[[str], None] | None = None,
) -> list[str]:
    """Swap every selected Linear (and Conv1D) of `model` for a fake-quantized module, in place; their paths.

    With `freeze_codes` (PEQA) each weight is first rounded to nearest, unless the model is already quantized
    (`wquant.quantize_` with any algorithm, e.g. GPTQ): its packed weights then give the frozen codes. STE
    modules start an already quantized layer from its decoded weight and, as learned scales (`learn_scales`),
    its stored scales, so training starts exactly at its codes.
    Weights tied to an embedding are left as they are (as `quantize_` does without embedding targets).
    """
    if not isinstance(model, nn.Module):
        raise ParameterError(f"prepare_qat needs a torch.nn.Module, got {type(model).__name__}")
    config = config if isinstance(config, FakeQuantConfig) else FakeQuantConfig(config)
    say = log or (lambda _msg: None)

    def selected(path: str) -> bool:
        return any(matches(path, g) for g in include) and not any(matches(path, g) for g in exclude)

    done: list[str] = []
    for site in weight_sites(model, ("linear", "embedding")):
        if not selected(site.path) or site.kind == "embedding":
            continue
        if "embedding" in {k for _, k in site.users} or len(site.users) > 1:
            say(f"{site.name} is tied to {[p for p, _ in site.users[1:]]}; left as it is")
            continue
        if site.foreign:
            raise TensorError(f"{site.name} is tied to {list(site.foreign)}, which wquant cannot replace; exclude it")
        module = site.module
        bias = module.bias if isinstance(getattr(module, "bias", None), nn.Parameter) else None
        if config.freeze_codes:
            q = quantize(site.weight().contiguous(), config.spec, name=site.name)
            new: nn.Module = PEQALinear(q, bias, config, layout=site.kind, name=site.name)
        else:
            new = FakeQuantLinear(module.weight, bias, config, layout=site.kind, name=site.name)
        set_submodule(model, site.path, new)
        done.append(site.path)
    for path, module in quantized_modules(model):
        if isinstance(module, QuantizedLinear) and selected(path) and path not in done:
            q = module.qweight.quantized
            if config.freeze_codes:
                new = PEQALinear(q, module.bias, config, layout=module.layout, name=f"{path}.weight")
            else:
                weight = nn.Parameter(module.weight.detach().to(q.dtype).clone())
                new = FakeQuantLinear(weight, module.bias, replace(config, format=q.spec), layout=module.layout,
                                      name=f"{path}.weight", initial=q)  # fmt: skip
            set_submodule(model, path, new)
            done.append(path)
    if not done:
        raise ParameterError("no Linear layer of the model matches include/exclude; nothing to train")
    return done


def convert_qat(model: nn.Module) -> list[LayerReport]:
    """Swap every fake-quantized module for a packed `QuantizedLinear` holding its stored tensor, in place."""
    reports = []
    for path, module in qat_modules(model):
        start = time.perf_counter()
        q = module.to_quantized()
        note = f"a={module.current_exponent():g}" if getattr(module.config, "learn_exponent", False) else ""
        if isinstance(module, PEQALinear):
            note = "codes frozen (PEQA)"
        set_submodule(model, path, QuantizedLinear(PackedWeight(q), module.bias, layout=module.layout))
        reports.append(LayerReport(path, q.shape, q.spec.to_string(), q.bits_per_param(), None, 0,
                                   time.perf_counter() - start, note))  # fmt: skip
    if not reports:
        raise ParameterError("the model holds no fake-quantized layer; call prepare_qat first")
    return reports


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters QAT trains: everything of the fake-quantized modules that requires a gradient."""
    return [(f"{path}.{name}", param) for path, module in qat_modules(model) for name, param in module.trainable()]


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for _, p in trainable_parameters(model))
