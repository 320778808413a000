"""quantize_model(): choose a model's weight tensors, quantize each once, swap in dequantizing modules.

Selection is by module type and by name glob, so the same config works on any architecture. Names are module
paths (`encoder.layer.0.attention.self.query`); a glob matches the module path or the weight's name
(`...query.weight`), and `*` crosses dots (fnmatch). Tied weights share one Parameter; they are quantized
once and every module that used the Parameter gets the same stored tensor, so the tie survives.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from wquant.errors import ParameterError, SpecError, TensorError, WquantError, valid_choices
from wquant.formats import FormatSpec, parse_spec, quantize
from wquant.models.layers import QuantizedEmbedding, QuantizedLinear, QuantizedWeight
from wquant.validation import NanPolicy

#: Module kinds a config can target. "linear" covers nn.Linear and transformers' Conv1D (GPT-2).
TARGET_KINDS = ("linear", "embedding")
#: An override spec that keeps the matched tensors unquantized.
KEEP = "none"
DEFAULT_FORMAT = "int4:unsigned/block64:minmax:bf16"


@dataclass(frozen=True)
class QuantizeConfig:
    """What to quantize and to which format.

    format: the spec for every selected tensor (string or FormatSpec).
    targets: module kinds to consider ("linear", "embedding").
    include / exclude: name globs; a module is selected when it matches some include and no exclude.
    overrides: (glob, spec) pairs, first match wins; spec "none" keeps the tensor unquantized.
    cache_dequantized: keep each dequantized weight after its first forward (faster, gives the memory back).
    """

    format: str | FormatSpec = DEFAULT_FORMAT
    targets: tuple[str, ...] = TARGET_KINDS
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    overrides: tuple[tuple[str, str], ...] = ()
    cache_dequantized: bool = False
    nan_policy: NanPolicy = "raise"

    def __post_init__(self) -> None:
        # Normalise list/dict inputs to tuples so the config stays hashable and comparable.
        for name in ("targets", "include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        overrides = self.overrides
        if isinstance(overrides, Mapping):
            overrides = tuple(overrides.items())
        try:
            overrides = tuple((str(glob), str(spec)) for glob, spec in overrides)
        except (TypeError, ValueError):
            raise ParameterError(
                f"overrides must be (glob, spec) pairs or a {{glob: spec}} mapping, got {self.overrides!r}"
            ) from None
        object.__setattr__(self, "overrides", overrides)
        unknown = set(self.targets) - set(TARGET_KINDS)
        if unknown or not self.targets:
            raise ParameterError(
                f"targets {sorted(unknown) or list(self.targets)} invalid; choose from {valid_choices(TARGET_KINDS)}"
            )
        object.__setattr__(self, "format", parse_spec(self.format))  # fail early, and store the parsed form
        parsed = []
        for glob, spec in overrides:
            if spec.strip().lower() == KEEP:
                parsed.append((glob, KEEP))
                continue
            try:
                parsed.append((glob, parse_spec(spec).to_string()))
            except SpecError as exc:
                raise SpecError(f"override {glob}={spec}: {exc}") from None
        object.__setattr__(self, "overrides", tuple(parsed))

    @property
    def spec(self) -> FormatSpec:
        return parse_spec(self.format)

    def selects(self, module_name: str) -> bool:
        names = _names(module_name)
        return any(_match(names, g) for g in self.include) and not any(_match(names, g) for g in self.exclude)

    def spec_for(self, module_name: str) -> FormatSpec | None:
        """The format for a selected module: the first matching override, else `format`; None keeps it."""
        names = _names(module_name)
        for glob, spec in self.overrides:
            if _match(names, glob):
                return None if spec == KEEP else parse_spec(spec)
        return self.spec


def _joined(path: str, leaf: str) -> str:
    return f"{path}.{leaf}" if path else leaf


def _names(module_name: str) -> tuple[str, str]:
    return module_name, _joined(module_name, "weight")


def _match(names: tuple[str, str], glob: str) -> bool:
    return any(fnmatch.fnmatchcase(n, glob) for n in names)


def module_kind(module: nn.Module) -> str | None:
    """'linear', 'transposed' (transformers' Conv1D), 'embedding', or None when wquant cannot replace it."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and isinstance(module.weight, torch.Tensor):
        return "transposed"
    return None


def _target_of(kind: str) -> str:
    return "embedding" if kind == "embedding" else "linear"


@dataclass(frozen=True)
class _Site:
    path: str
    module: nn.Module
    kind: str


def quantize_model(model: nn.Module, config: QuantizeConfig | None = None) -> nn.Module:
    """Quantize `model` in place (and return it): selected weights become stored formats.

    Raises a wquant error naming the tensor when a format cannot apply to it, or when a tied weight is shared
    with a module wquant cannot replace.
    """
    if not isinstance(model, nn.Module):
        raise ParameterError(f"quantize_model needs a torch.nn.Module, got {type(model).__name__}")
    config = config or QuantizeConfig()
    sites_by_weight: dict[int, list[_Site]] = {}
    users_by_weight: dict[int, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        for pname, param in module.named_parameters(recurse=False):
            users_by_weight.setdefault(id(param), []).append(_joined(path, pname))
        kind = module_kind(module)
        if kind is not None:
            sites_by_weight.setdefault(id(module.weight), []).append(_Site(path, module, kind))

    replacements: dict[int, nn.Module] = {}
    plans: list[tuple[str, list[_Site], FormatSpec]] = []
    for weight_id, sites in sites_by_weight.items():
        chosen = [
            (s, config.spec_for(s.path))
            for s in sites
            if _target_of(s.kind) in config.targets and config.selects(s.path)
        ]
        chosen = [(s, spec) for s, spec in chosen if spec is not None]
        if not chosen:
            continue
        name = _joined(chosen[0][0].path, "weight")
        weight_users = set(users_by_weight.get(weight_id, []))
        replaceable = {_joined(s.path, "weight") for s in sites}
        if weight_users - replaceable:
            raise TensorError(
                f"{name} is tied to {sorted(weight_users - replaceable)}, which wquant cannot replace; "
                "exclude this module or untie the weights"
            )
        if len({s.kind == "transposed" for s in sites}) > 1:
            raise TensorError(f"{name} is tied between Conv1D and Linear/Embedding layouts; exclude it")
        plans.append((name, sites, chosen[0][1]))

    if any(site.module is model for _, sites, _ in plans for site in sites):
        raise ParameterError("quantize_model replaces submodules; wrap a bare layer in nn.Sequential first")
    for name, sites, spec in plans:
        first = sites[0]
        weight = first.module.weight.detach()
        if first.kind == "transposed":
            weight = weight.t()
        if first.kind == "embedding" and first.module.max_norm is not None:
            raise TensorError(f"{name}: nn.Embedding with max_norm rewrites its weights on lookup; exclude it")
        try:
            stored = quantize(weight.cpu().contiguous(), spec, nan_policy=config.nan_policy, name=name)
        except WquantError as exc:
            message = str(exc) if name in str(exc) else f"{name}: {exc}"
            raise type(exc)(f"{message} (format {spec.to_string()}, shape {tuple(weight.shape)})") from None
        holder = QuantizedWeight(stored, cache=config.cache_dequantized)
        for site in sites:
            if id(site.module) not in replacements:
                replacements[id(site.module)] = _replacement(site, holder)

    for path, module in list(model.named_modules(remove_duplicate=False)):
        if id(module) in replacements:
            set_submodule(model, path, replacements[id(module)])
    return model


def _replacement(site: _Site, holder: QuantizedWeight) -> nn.Module:
    module = site.module
    if site.kind == "embedding":
        return QuantizedEmbedding(holder, padding_idx=module.padding_idx)
    bias = module.bias if isinstance(getattr(module, "bias", None), nn.Parameter) else None
    return QuantizedLinear(holder, bias, layout=site.kind)


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at a dotted path (works for ModuleList indices too)."""
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)
