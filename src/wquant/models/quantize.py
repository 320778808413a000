"""`quantize_(model, config)`: the one way to quantize a model, whatever decides the codes.

`config` is
  * a format spec (`"nf4"`, a FormatSpec): round to nearest on it;
  * an algorithm config (`GPTQConfig(...)`, `HQQConfig(...)`, any registered type): that algorithm;
  * a mapping {module glob: spec or config or None}: each module takes its first matching entry, None keeps
    it; modules no glob matches are left alone (a per-tensor plan, e.g. Fisher allocation's);
  * a `QuantizeConfig`: a default method plus targets, includes, excludes and overrides.

Every selected weight goes through its config's registered handler. Data-free ones are quantized first; then,
when calibration batches are given, the calibration walk (`models.calibration`) visits the data-driven ones in
forward order with every earlier layer already quantized. Tied weights are quantized once and the tie
survives; a weight tied to an embedding is only selected when embeddings are targeted too.

Activation quantization (`QuantizeConfig.activations`, or a config's own `activations`) gives each quantized
Linear an input quantizer (`models.activations`); static activation scales are calibrated by the walk.
Smoothing configs (AWQ, SmoothQuant: a `channel_scales` method) get their scales folded into each block before
its layers are quantized (`models.smoothing`).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from wquant.algorithms import LayerStatistics, as_tensor_config, quantize_weight, relative_error
from wquant.algorithms.activations import ActivationSpec, parse_activations
from wquant.errors import ConfigWarning, ParameterError, SpecError, TensorError, WquantError, valid_choices
from wquant.formats import DEFAULT_FORMAT, FormatSpec
from wquant.models.activations import InputQuantizer
from wquant.models.calibration import Batch, calibrate
from wquant.models.layers import PackedWeight, QuantizedEmbedding, QuantizedLinear, packed_weights
from wquant.models.sites import TARGET_KINDS, WeightSite, matches, set_submodule, target_of, weight_sites
from wquant.models.smoothing import can_smooth, smoothing_step

#: An override value that keeps the matched modules unquantized.
KEEP = "none"


@dataclass(frozen=True)
class QuantizeConfig:
    """What to quantize with what.

    method: the default for every selected weight: a format spec (round to nearest) or an algorithm config.
    targets: module kinds considered ("linear" covers nn.Linear and Conv1D; "embedding").
    include / exclude: module globs; a module is selected when it matches some include and no exclude.
    overrides: (glob, value) pairs or a {glob: value} mapping, first match wins. A spec string gives the
      default method on that format (GPTQ stays GPTQ at another format); a config is used as it is; None or
      "none" keeps the module unquantized.
    activations: an activation spec (`int8/token`, `int8/tensor:static`, `mxfp8`, ...) for the inputs of every
      quantized Linear, or None. A config with its own `activations` field (SmoothQuant, ZeroQuant) takes this
      one as the method; an explicit override config keeps its own. Or per module: (glob, spec) pairs or a
      {glob: spec} mapping, first match wins, None/"none" and unmatched modules keep float inputs (e.g.
      {"*.down_proj": "mxint8", "*": "int8/token"}); every config then works with its module's spec.
    """

    method: Any = DEFAULT_FORMAT
    targets: tuple[str, ...] = ("linear",)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    overrides: Any = ()
    activations: Any = None

    def __post_init__(self) -> None:
        for name in ("targets", "include", "exclude"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        unknown = set(self.targets) - set(TARGET_KINDS)
        if unknown or not self.targets:
            raise ParameterError(
                f"targets {sorted(unknown) or list(self.targets)} invalid; choose from {valid_choices(TARGET_KINDS)}"
            )
        method = as_tensor_config(self.method, "method")
        acts = self.activations
        if isinstance(acts, str) and acts.strip().lower() == KEEP:
            acts = None
        if isinstance(acts, str | ActivationSpec):
            acts = parse_activations(acts)
            if hasattr(method, "activations"):
                method = dataclasses.replace(method, activations=acts)
        elif acts is not None:
            pairs = acts.items() if isinstance(acts, Mapping) else acts
            try:
                acts = tuple((str(glob), _activation(value)) for glob, value in pairs)
            except (TypeError, ValueError):
                raise ParameterError(f"activations must be a spec, (glob, spec) pairs or a {{glob: spec}} mapping, got "
                                     f"{self.activations!r}") from None  # fmt: skip
        object.__setattr__(self, "activations", acts)
        object.__setattr__(self, "method", method)
        pairs = self.overrides.items() if isinstance(self.overrides, Mapping) else self.overrides
        try:
            pairs = [(str(glob), value) for glob, value in pairs]
        except (TypeError, ValueError):
            raise ParameterError(
                f"overrides must be (glob, value) pairs or a {{glob: value}} mapping, got {self.overrides!r}"
            ) from None
        object.__setattr__(self, "overrides", tuple((glob, _override(method, glob, v)) for glob, v in pairs))

    def selects(self, path: str) -> bool:
        return any(matches(path, g) for g in self.include) and not any(matches(path, g) for g in self.exclude)

    def config_for(self, path: str) -> Any | None:
        """The tensor config of a selected module: the first matching override, else `method`; None keeps it."""
        for glob, value in self.overrides:
            if matches(path, glob):
                return value
        return self.method

    def activations_for(self, config: Any, path: str | None = None) -> ActivationSpec | None:
        """The activation spec of the module at `path` quantized with `config`: the first matching per-module
        entry; else the config's own if it has the field; else the one spec given."""
        if isinstance(self.activations, tuple):
            if path is None:
                raise ParameterError("per-module activations need the module path")
            return next((spec for glob, spec in self.activations if matches(path, glob)), None)
        if hasattr(config, "activations"):
            return config.activations
        return self.activations

    @staticmethod
    def per_module(mapping: Mapping[str, Any], *, targets: tuple[str, ...] = TARGET_KINDS) -> QuantizeConfig:
        """Only the modules the globs match, each with its first matching value (None keeps it)."""
        if not mapping:
            raise ParameterError("the per-module mapping is empty; name at least one module glob")
        return QuantizeConfig(DEFAULT_FORMAT, targets=targets, include=tuple(mapping),
                              overrides=tuple((glob, _plain(v)) for glob, v in mapping.items()))  # fmt: skip


def _activation(value: Any) -> ActivationSpec | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == KEEP):
        return None
    return parse_activations(value)


def _plain(value: Any) -> Any:
    """In a bare mapping a spec string means round to nearest (there is no default method to inherit)."""
    return as_tensor_config(value) if isinstance(value, str) and value.strip().lower() != KEEP else value


def _override(method: Any, glob: str, value: Any) -> Any | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == KEEP):
        return None
    try:
        if isinstance(value, str | FormatSpec):
            return method.with_format(value)
        return as_tensor_config(value, f"override {glob}")
    except SpecError as exc:
        raise SpecError(f"override {glob}={value}: {exc}") from None


@dataclass(frozen=True)
class LayerReport:
    """What happened to one weight."""

    name: str  # module path (the first one, for a tied weight)
    shape: tuple[int, ...]
    format: str  # the stored spec
    bits_per_param: float
    output_error: float | None  # tr(ΔW·H·ΔWᵀ)/tr(W·H·Wᵀ) on the calibration inputs; None without them
    tokens: int  # calibration tokens that reached the layer
    seconds: float
    note: str = ""
    activations: str | None = None  # the input's activation spec, None when the input stays in float
    activation_bits: float | None = None  # bits per input element: code bits + its share of dynamic scales


def quantize_(
    model: nn.Module,
    config: Any,
    *,
    calibration: Iterable[Batch] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[LayerReport]:
    """Quantize `model` in place; one report per quantized weight, in module order.

    calibration: tokenizer batches (dicts passed as keyword arguments; an `attention_mask` keeps padding out
    of the statistics) or input-id tensors. Configs that need it are refused without it; configs that can use
    it (GPTQ, NUPES, Hessian-weighted search) use it when given.
    """
    if not isinstance(model, nn.Module):
        raise ParameterError(f"quantize_ needs a torch.nn.Module, got {type(model).__name__}")
    config = _as_quantize_config(config)
    say = log or (lambda _msg: None)
    plan = _plan(model, config, say)
    if not plan:
        raise ParameterError(
            "no weight of the model matches the config (targets, include, exclude, overrides); nothing to quantize"
        )
    batches = None if calibration is None else list(calibration)
    if batches is not None and not batches:
        raise ParameterError("calibration is empty; give at least one batch (or calibration=None for data-free)")
    if batches is None and (needy := [(s.path, c) for s, c in plan if c.needs_calibration]):
        raise ParameterError(f"{type(needy[0][1]).__name__} on {needy[0][0]} needs calibration batches")
    if any(s.module is model for s, _ in plan):
        raise ParameterError("quantize_ replaces submodules; wrap a bare layer in nn.Sequential first")
    acts = {s.path: _site_activations(s, config.activations_for(c, s.path)) for s, c in plan}
    if isinstance(config.activations, tuple):  # configs that work with a spec (SmoothQuant, ZeroQuant) get theirs
        plan = [(s, dataclasses.replace(c, activations=acts[s.path]) if hasattr(c, "activations") else c)
                for s, c in plan]  # fmt: skip
    static = [s.path for s, _ in plan if (a := acts[s.path]) is not None and a.static]
    if static and (batches is None or any(_data_free_site(s) for s, _ in plan if s.path in static)):
        raise ParameterError(f"static activation scales ({acts[static[0]]}) on {static[0]} are calibrated: give "
                             "calibration batches (tied weights cannot take them), or use a dynamic spec such as "
                             "int8/token")  # fmt: skip

    reports: dict[str, LayerReport] = {}
    by_path = {s.path: (s, c) for s, c in plan}
    data = [s.path for s, c in plan if batches is not None and _walked(s, c, acts[s.path])]
    for site, cfg in plan:
        if site.path not in data:
            reports[site.path] = _quantize_site(model, site, cfg, None, acts[site.path], cache=bool(data))
            say(_describe(reports[site.path]))
    if data:
        assert batches is not None
        notes: dict[str, str] = {}
        divisors: dict[str, nn.Parameter] = {}

        def on_layer(path: str, stats: LayerStatistics | None) -> None:
            site, cfg = by_path[path]
            note = notes.get(path, "")
            reports[path] = _quantize_site(model, site, cfg, stats, acts[path], cache=True, note=note,
                                           divisor=divisors.get(path))  # fmt: skip
            say(_describe(reports[path]))

        samples = max((getattr(by_path[p][1], "input_samples", 0) for p in data), default=0)
        prepare = None
        if any(can_smooth(by_path[p][1]) for p in data):
            prepare = smoothing_step(lambda p: by_path[p][1] if p in by_path else None, lambda p: acts.get(p), notes,
                                     samples=samples, divisors=divisors)  # fmt: skip
        try:
            calibrate(model, data, batches, on_layer, samples=samples, prepare_block=prepare)
        finally:
            for _, packed in packed_weights(model):
                packed.clear_cache()
    return [reports[s.path] for s, _ in plan]


def _site_activations(site: WeightSite, spec: ActivationSpec | None) -> ActivationSpec | None:
    """Embeddings take ids, not activations: only Linear inputs are quantized."""
    return None if site.kind == "embedding" else spec


def _walked(site: WeightSite, config: Any, activations: ActivationSpec | None) -> bool:
    """Whether the calibration walk visits the site: its config uses data, or its input scale is calibrated."""
    if _data_free_site(site):
        return False
    return bool(config.uses_calibration or can_smooth(config) or (activations is not None and activations.static))


def _as_quantize_config(config: Any) -> QuantizeConfig:
    if isinstance(config, QuantizeConfig):
        return config
    if isinstance(config, Mapping):
        return QuantizeConfig.per_module(config)
    return QuantizeConfig(config)


def _plan(model: nn.Module, config: QuantizeConfig, say: Callable[[str], None]) -> list[tuple[WeightSite, Any]]:
    """(site, tensor config) of every selected weight, checked for ties wquant cannot keep."""
    plan = []
    sites = weight_sites(model, TARGET_KINDS)
    _warn_unmatched(config, [p for s in sites for p, kind in s.users if target_of(kind) in config.targets])
    for site in sites:
        chosen = [p for p, kind in site.users if target_of(kind) in config.targets and config.selects(p)]
        if not chosen:
            continue
        cfg = config.config_for(chosen[0])
        if cfg is None:
            continue
        if not site.targets <= set(config.targets):
            say(f"{site.name} is tied to an embedding; left as it is (target embeddings too to quantize both)")
            continue
        if site.foreign:
            raise TensorError(f"{site.name} is tied to {list(site.foreign)}, which wquant cannot replace; exclude "
                              "this module or untie the weights")  # fmt: skip
        if len({kind == "transposed" for _, kind in site.users}) > 1:
            raise TensorError(f"{site.name} is tied between Conv1D and Linear/Embedding layouts; exclude it")
        if site.kind == "embedding" and getattr(site.module, "max_norm", None) is not None:
            raise TensorError(f"{site.name}: nn.Embedding with max_norm rewrites its weights on lookup; exclude it")
        plan.append((site, cfg))
    return plan


def _warn_unmatched(config: QuantizeConfig, paths: list[str]) -> None:
    """A glob that names none of the targeted modules is almost always a typo: say so."""
    globs = [("include", g) for g in config.include if g != "*"] + [("exclude", g) for g in config.exclude]
    globs += [("override", g) for g, _ in config.overrides]
    if isinstance(config.activations, tuple):
        globs += [("activations", g) for g, _ in config.activations if g != "*"]
    for kind, glob in globs:
        if not any(matches(p, glob) for p in paths):
            warnings.warn(f"{kind} glob {glob!r} matches none of the model's {'/'.join(config.targets)} modules",
                          ConfigWarning, stacklevel=4)  # fmt: skip


def _data_free_site(site: WeightSite) -> bool:
    """Embeddings take ids, not activations, and a tied weight has no one input: their data-free form is used."""
    return site.kind == "embedding" or len(site.users) > 1


def _quantize_site(
    model: nn.Module, site: WeightSite, config: Any, stats: LayerStatistics | None,
    activations: ActivationSpec | None, *, cache: bool, note: str = "", divisor: nn.Parameter | None = None,
) -> LayerReport:  # fmt: skip
    """Quantize one weight and swap in quantized modules for all its users; `cache` keeps the decoded weight
    for the calibration passes still to come (cleared when the walk ends). `activations` gives each user an
    input quantizer (static scales from `stats`); `divisor` is a stored smoothing divisor of the input."""
    start = time.perf_counter()
    device = site.module.weight.device
    weight = site.weight().cpu().contiguous()
    try:
        result = quantize_weight(weight, config, stats, name=site.name)
    except WquantError as exc:
        message = str(exc) if site.name in str(exc) else f"{site.name}: {exc}"
        raise type(exc)(f"{message} (shape {tuple(weight.shape)})") from None
    stored = result.tensor
    packed = PackedWeight(stored).to(device)  # the packed fields live where the weight lived
    packed.cache = cache
    for path, kind in site.users:
        old = model.get_submodule(path)
        if kind == "embedding":
            new: nn.Module = QuantizedEmbedding(packed, padding_idx=old.padding_idx)
        else:
            bias = old.bias if isinstance(getattr(old, "bias", None), nn.Parameter) else None
            new = QuantizedLinear(packed, bias, layout=kind)
            if activations is not None or divisor is not None:
                new.input_quant = InputQuantizer.calibrated(activations, new.in_features, stats, divisor)
        set_submodule(model, path, new)
    hessian = None if stats is None else stats.hessian()
    error = None if hessian is None else relative_error(weight.float(), stored.dequantize().float(), hessian)
    act_bits = None if activations is None else activations.bits_per_element(int(weight.shape[-1]))
    notes = "; ".join(n for n in (note, result.note) if n)
    return LayerReport(site.path, tuple(weight.shape), stored.spec.to_string(), stored.bits_per_param(), error,
                       0 if stats is None else stats.tokens, time.perf_counter() - start, notes,
                       None if activations is None else activations.to_string(), act_bits)  # fmt: skip


def _describe(report: LayerReport) -> str:
    error = "" if report.output_error is None else f" rel. output error {report.output_error:.4g}"
    acts = "" if report.activations is None else f" + inputs {report.activations} ({report.activation_bits:.4g} b/a)"
    return f"{report.name}: {report.format} {report.bits_per_param:.4f} b/w{acts}{error} {report.note}".rstrip()
