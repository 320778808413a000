"""Fold a per-input-channel scale into the module before a group of layers, exactly in floating point.

Smoothing (SmoothQuant, AWQ) rewrites y = W·x as y = (W·diag(s))·(x / s): the layers' weight columns grow by
s and their input shrinks by s. The division costs nothing when the module producing x can absorb it: a
LayerNorm/RMSNorm (divide its weight and bias), or a Linear whose output reaches the layers through operations
that commute with a per-channel scale (Llama's v_proj → attention → o_proj; up_proj → SiLU(gate)·up → down_proj;
ReLU MLPs for positive s). In a Llama block that is q/k/v after the attention norm, gate/up after the MLP norm,
o after v and down after up; in a post-norm BERT block only o after v: its norms also feed the residual sum.

Producers are found by module structure, not by name: a norm or Linear whose output is the very tensor the
group receives (the same memory, view and version), else a Linear ran earlier whose width matches. A candidate
is accepted only when a probe proves it: a random scale in [1/4, 4] is folded in, the block (or model) is run
on a calibration batch, and its output must stay within `PROBE_TOLERANCE` (relative) before everything is put
back. So a norm whose output also feeds a residual, a nonlinearity in between, or a norm computing (1 + w)·x̂
are refused rather than folded wrongly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wquant.errors import ParameterError, TensorError
from wquant.models.sites import module_kind

#: Largest relative change of the probed output that still counts as an exact fold (float32 rounding is ~1e-7).
PROBE_TOLERANCE = 1e-4
#: Probe scales are drawn log-uniformly in [1/PROBE_RANGE, PROBE_RANGE].
PROBE_RANGE = 4.0

Run = Callable[[], Any]


@dataclass(frozen=True)
class Fold:
    """Where a group's input scale goes: `producer` (a module path under the probed root) and its kind."""

    producer: str
    kind: str  # "norm", "linear" (nn.Linear) or "transposed" (transformers' Conv1D)
    consumers: tuple[str, ...]


def is_norm(module: nn.Module) -> bool:
    """A LayerNorm/RMSNorm-like module: a 1-D weight (and optional bias) scaling its output per channel."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.ndim != 1 or module_kind(module) is not None:
        return False
    return isinstance(module, nn.LayerNorm | nn.GroupNorm) or "norm" in type(module).__name__.lower()


def producer_kind(module: nn.Module) -> str | None:
    """'norm', 'linear' or 'transposed' for a module a scale can be folded into, else None."""
    if is_norm(module):
        return "norm"
    kind = module_kind(module)
    return kind if kind in ("linear", "transposed") else None


def _in_features(module: nn.Module) -> int:
    kind = module_kind(module)
    if kind == "linear":
        return int(module.in_features)
    if kind == "transposed":
        return int(module.weight.shape[0])
    raise ParameterError(f"{type(module).__name__} is not a Linear layer; only Linear/Conv1D inputs can be scaled")


def _out_features(module: nn.Module, kind: str) -> int:
    if kind == "norm":
        return int(module.weight.shape[0])
    return int(module.weight.shape[0] if kind == "linear" else module.weight.shape[1])


def _tensors(out: Any) -> list[torch.Tensor]:
    """Every floating tensor in a module's output (tensors, tuples, lists, dicts, ModelOutputs), in order."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, tuple | list):
        return [t for v in out for t in _tensors(v)]
    return []


def _change(new: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """Largest relative (Frobenius) change over corresponding tensors; inf if the structure changed."""
    if len(new) != len(ref) or any(a.shape != b.shape for a, b in zip(new, ref, strict=True)):
        return math.inf
    worst = 0.0
    for a, b in zip(new, ref, strict=True):
        diff = float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))
        worst = max(worst, diff if math.isfinite(diff) else math.inf)
    return worst


def _identity(x: torch.Tensor) -> tuple[Any, ...]:
    return (x.data_ptr(), tuple(x.shape), x.stride(), x._version)


def apply_fold(root: nn.Module, fold: Fold, scale: torch.Tensor) -> None:
    """Divide the producer's output channels by `scale` and multiply the consumers' input columns by it."""
    s = scale.detach().reshape(-1)
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise TensorError(f"a smoothing scale must be finite and positive; got min {float(s.min()):.3g}")
    producer = root.get_submodule(fold.producer)
    with torch.no_grad():
        _divide_outputs(producer, fold.kind, s)
        for path in fold.consumers:
            multiply_inputs(root.get_submodule(path), s)


def _divide_outputs(module: nn.Module, kind: str, s: torch.Tensor) -> None:
    weight = module.weight
    if _out_features(module, kind) != s.numel():
        raise TensorError(f"{type(module).__name__} has {_out_features(module, kind)} outputs, the scale {s.numel()}")
    if kind == "norm" or kind == "linear":
        shape = (-1,) if kind == "norm" else (-1, 1)
        weight.div_(s.to(weight.dtype).reshape(shape))
    else:
        weight.div_(s.to(weight.dtype).reshape(1, -1))
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.div_(s.to(bias.dtype))


def multiply_inputs(module: nn.Module, s: torch.Tensor) -> None:
    """Multiply a Linear/Conv1D layer's input columns by s (in place)."""
    kind = module_kind(module)
    if kind not in ("linear", "transposed"):
        raise ParameterError(f"{type(module).__name__} cannot take a smoothing scale (already quantized?)")
    if _in_features(module) != s.numel():
        raise TensorError(f"{type(module).__name__} has {_in_features(module)} inputs, the scale {s.numel()}")
    weight = module.weight
    with torch.no_grad():
        weight.mul_(s.to(weight.dtype).reshape((1, -1) if kind == "linear" else (-1, 1)))


def _saved(root: nn.Module, fold: Fold) -> list[tuple[torch.Tensor, torch.Tensor]]:
    modules = [root.get_submodule(fold.producer), *(root.get_submodule(p) for p in fold.consumers)]
    tensors = []
    for module in modules:
        for name in ("weight", "bias"):
            t = getattr(module, name, None)
            if isinstance(t, torch.Tensor):
                tensors.append((t, t.detach().clone()))
    return tensors


def _probe(root: nn.Module, fold: Fold, run: Run, reference: list[torch.Tensor], consumer_input: torch.Tensor,
           seed: int) -> bool:  # fmt: skip
    """Two checks with a random scale s, every tensor put back afterwards: with s folded into the producer alone,
    the consumers' input must become exactly x/s (the scale reaches them, per channel, and nothing else does);
    with the whole fold, every output of `root` must stay unchanged (the producer feeds nothing else)."""
    consumer = root.get_submodule(fold.consumers[0])
    width = _in_features(consumer)
    gen = torch.Generator().manual_seed(seed)
    log_range = math.log(PROBE_RANGE)
    scale = torch.exp((torch.rand(width, generator=gen, dtype=torch.float64) * 2 - 1) * log_range).float()
    eps = torch.finfo(consumer_input.dtype).eps if consumer_input.is_floating_point() else 1e-7
    tolerance = max(PROBE_TOLERANCE, 1000 * eps)
    saved = _saved(root, fold)
    seen: list[torch.Tensor] = []
    handle = consumer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()) or None)
    try:
        with torch.no_grad():
            _divide_outputs(root.get_submodule(fold.producer), fold.kind, scale)
        run()
        handle.remove()
        if not seen or _change([seen[0]], [consumer_input / scale.to(consumer_input.dtype)]) > tolerance:
            return False
        with torch.no_grad():
            for path in fold.consumers:
                multiply_inputs(root.get_submodule(path), scale)
        out = _tensors(run())
    finally:
        handle.remove()
        with torch.no_grad():
            for tensor, original in saved:
                tensor.copy_(original)
    return _change(out, reference) <= tolerance


def find_fold(root: nn.Module, consumers: Sequence[str], run: Run, *, seed: int = 0) -> Fold | None:
    """The module of `root` that a scale on the input of `consumers` (paths under root, fed the same tensor) can
    be folded into, proven by a probe on `run` (a call running root on one calibration batch); None if none."""
    consumers = tuple(consumers)
    if not consumers:
        raise ParameterError("find_fold needs at least one consumer layer")
    width = _in_features(root.get_submodule(consumers[0]))
    outputs: dict[tuple[Any, ...], str] = {}
    order: list[str] = []
    held: list[torch.Tensor] = []
    seen_input: list[tuple[Any, ...]] = []
    first_input: list[torch.Tensor] = []
    handles = []
    for path, module in root.named_modules():
        kind = producer_kind(module)
        if kind is None or path in consumers or _out_features(module, kind) != width:
            continue

        def after(_m: nn.Module, _args: Any, out: Any, path: str = path) -> None:
            if isinstance(out, torch.Tensor):
                held.append(out)
                outputs.setdefault(_identity(out), path)
                if not seen_input and path not in order:
                    order.append(path)

        handles.append(module.register_forward_hook(after))

    def before(_m: nn.Module, args: tuple[Any, ...]) -> None:
        if not seen_input:
            held.append(args[0])
            seen_input.append(_identity(args[0]))
            first_input.append(args[0].detach().clone())

    handles.append(root.get_submodule(consumers[0]).register_forward_pre_hook(before))
    try:
        with torch.no_grad():
            reference = [t.detach().clone() for t in _tensors(run())]
    finally:
        for handle in handles:
            handle.remove()
    if not seen_input:
        return None
    candidates = []
    direct = outputs.get(seen_input[0])
    if direct is not None:
        candidates.append(direct)
    candidates += [p for p in reversed(order) if p != direct and producer_kind(root.get_submodule(p)) != "norm"]
    with torch.no_grad():
        for path in candidates:
            fold = Fold(path, producer_kind(root.get_submodule(path)) or "", consumers)
            if _probe(root, fold, run, reference, first_input[0], seed):
                return fold
    return None


def model_folds(model: nn.Module, batch: Any, paths: Sequence[str] | None = None) -> list[Fold]:
    """Every exact fold of a model: for each group of Linear layers fed one tensor (among `paths`, default every
    Linear/Conv1D), the module that can absorb a scale on their input, proven on `batch` (a tokenizer batch or
    ids). Groups without one are left out. Paths in the folds are full module paths."""
    from wquant.models.calibration import _run, group_inputs

    if paths is None:
        paths = [p for p, m in model.named_modules() if module_kind(m) in ("linear", "transposed")]

    def run() -> Any:
        return _run(model, batch)

    with torch.no_grad():
        groups = group_inputs(model, list(paths), [(run, None)])
        found = []
        for group, _stats in groups:
            fold = find_fold(model, group, run)
            if fold is not None:
                found.append(fold)
    return found
