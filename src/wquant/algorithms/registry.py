"""Algorithms by registration: a config type, the function that quantizes one weight with it, a CLI name.

An algorithm is one module that defines a frozen config dataclass and a handler and calls `register(...)`;
`wquant.quantize_` and the `wquant quantize --algorithm NAME` command find it here, so adding one edits no
dispatcher. A config is any frozen dataclass with:

    uses_calibration: bool   -- calibration inputs change the result (the walk collects statistics for it)
    needs_calibration: bool  -- it cannot run without them (refused when no calibration is given)
    with_format(spec) -> config  -- the same algorithm on another format (per-module overrides)

A bare format spec (string or FormatSpec) stands for plain round-to-nearest on it.

A handler gets the layer's input statistics (`LayerStatistics`: the Hessian, per-channel mean/max |x|, a row
sample when the config asks for one through an `input_samples` attribute), or None when no calibration reached
the layer. Optional config attributes the model walk honours: `activations` (an activation spec the config
works with, e.g. SmoothQuant's), `channel_scales(weights, stats, *, activations, name)` (a per-input-channel
smoothing scale folded into the module before the layer; see `wquant.models.smoothing`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from wquant.algorithms.statistics import LayerStatistics
from wquant.errors import ParameterError
from wquant.formats import FormatSpec, QuantizedTensor


class TensorConfig(Protocol):
    """What the model walk asks of an algorithm config."""

    @property
    def uses_calibration(self) -> bool: ...

    @property
    def needs_calibration(self) -> bool: ...

    def with_format(self, spec: FormatSpec | str) -> TensorConfig: ...


@dataclass(frozen=True)
class Quantized:
    """One weight's result: the stored tensor and a short note on what was done (empty if nothing to say)."""

    tensor: QuantizedTensor
    note: str = ""


#: handler(weight (out, in), config, input statistics or None when no calibration reached it, name)
Handler = Callable[[torch.Tensor, Any, LayerStatistics | None, str], Quantized]


@dataclass(frozen=True)
class Algorithm:
    """A registered algorithm: its CLI name, config type, handler and the config `--format SPEC` gives it."""

    name: str
    config_type: type
    handler: Handler
    from_format: Callable[[FormatSpec], Any]
    summary: str


ALGORITHMS: dict[str, Algorithm] = {}
_BY_TYPE: dict[type, Algorithm] = {}


def register(
    name: str, config_type: type, handler: Handler, *, from_format: Callable[[FormatSpec], Any], summary: str
) -> None:
    """Make `config_type` usable by `quantize_` and `name` by `wquant quantize --algorithm` (one line per algorithm).

    Several names may share a config type (rtn, rtn-search); the first registration's handler serves the type.
    """
    key = name.strip().lower()
    if key in ALGORITHMS:
        raise ValueError(f"algorithm name {key!r} is registered twice")
    entry = Algorithm(key, config_type, handler, from_format, summary)
    ALGORITHMS[key] = entry
    _BY_TYPE.setdefault(config_type, entry)


def algorithm_names() -> tuple[str, ...]:
    return tuple(ALGORITHMS)


def config_for(name: str, spec: FormatSpec) -> Any:
    """The config of CLI algorithm `name` on format `spec`."""
    key = name.strip().lower()
    if key not in ALGORITHMS:
        raise ParameterError(f"algorithm {name!r} unknown; valid: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[key].from_format(spec)


def as_tensor_config(config: object, where: str = "config") -> Any:
    """A registered config as it is; a format spec (string or FormatSpec) as plain round-to-nearest on it."""
    if isinstance(config, str | FormatSpec):
        from wquant.algorithms.rtn import RTNConfig

        return RTNConfig(config, search=False)
    if type(config) in _BY_TYPE:
        return config
    known = ", ".join(sorted({a.config_type.__name__ for a in ALGORITHMS.values()}))
    raise ParameterError(f"{where}: {type(config).__name__} is not a format spec or an algorithm config ({known})")


def quantize_weight(
    weight: torch.Tensor, config: object, stats: LayerStatistics | torch.Tensor | None = None, *, name: str = "weight"
) -> Quantized:
    """One (out, in) weight through its config's registered handler; `stats` may also be a bare (in, in) Hessian."""
    config = as_tensor_config(config, name)
    if isinstance(stats, torch.Tensor):
        stats = LayerStatistics.from_hessian(stats, name=name)
    return _BY_TYPE[type(config)].handler(weight, config, stats, name)


def hessian_of(stats: LayerStatistics | None) -> torch.Tensor | None:
    """The Hessian of `stats`, or None without statistics (what Hessian-only handlers need)."""
    return None if stats is None else stats.hessian()
