"""The one calibration walk: every data-driven algorithm (and anything else that needs a layer's inputs) sees
each target layer's input statistics with every earlier layer already quantized, in forward order.

Block-wise caching keeps it linear in depth. The repeated blocks of a model (the ModuleList holding most
target layers: Llama's `model.layers`, BERT's `encoder.layer`, GPT-2's `transformer.h`) are found, the
inputs of block 0 are captured once for every batch (positional and keyword arguments, so masks and
rotary embeddings come along), and each block is then run on its cached inputs only: to collect the
Hessian of its next group of layers (layers fed the very same tensor, such as q/k/v, share one), and,
once its layers are quantized, to produce the inputs of the next block. Layers outside the blocks (an
output head, a pooler) are calibrated by running the whole model and cutting the pass once the layer has
seen its inputs. Memory holds one block's inputs and one layer's (in, in) statistic at a time.

Each layer group gets a `LayerStatistics` (Hessian, per-channel mean/max |x|, optionally a sample of input rows).
A `prepare_block` callback sees every block with its cached inputs before its layers are calibrated: where
smoothing scales are chosen and folded into the block (`models.smoothing`), on the block as it is then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wquant.algorithms import LayerStatistics
from wquant.errors import ParameterError

Batch = Mapping[str, torch.Tensor] | torch.Tensor
#: called once per layer in forward order: (module path, its input statistics or None when no input reached it)
OnLayer = Callable[[str, LayerStatistics | None], None]
#: one calibration pass over a block (or the model) and the attention mask of its batch
Pass = tuple[Callable[[], Any], torch.Tensor | None]
#: called before a block's layers are calibrated: (block, its path prefix "model.layers.3.", the target paths
#: inside it in forward order, relative to the block, and the passes that run the block on its cached inputs);
#: also for the layers before and after the blocks, with the whole model as the block and prefix ""
PrepareBlock = Callable[[nn.Module, str, list[str], list[Pass]], None]


class _Stop(Exception):
    """Raised inside a forward pass once everything needed from it has been seen."""


@dataclass
class _Inputs:
    """One batch's inputs to a block: positional and keyword arguments, and the batch's attention mask."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    mask: torch.Tensor | None


def calibrate(
    model: nn.Module,
    paths: Sequence[str],
    batches: Sequence[Batch],
    on_layer: OnLayer,
    *,
    block_cache: bool = True,
    samples: int = 0,
    prepare_block: PrepareBlock | None = None,
) -> None:
    """Visit the layers at `paths` in forward order, each with the statistics of its inputs; `on_layer` quantizes it.

    `on_layer` must replace the layer (it is called before later layers are calibrated, so they see its
    quantized outputs). block_cache=False runs the whole model for every layer group (the reference walk).
    samples: input rows each group's statistics keep (seeded; 0 keeps none). prepare_block: see `PrepareBlock`.
    """
    if not batches:
        raise ParameterError("calibration is empty; give at least one batch (or none for data-free configs)")
    with torch.no_grad(), _no_kv_cache(model):
        order = _execution_order(model, paths, batches[0])
        for path in [p for p in paths if p not in order]:  # never reached by a forward pass
            on_layer(path, None)
        blocks = _blocks(model, order) if block_cache else None
        whole = [(lambda b=b: _run(model, b), _mask_of(b)) for b in batches]
        if blocks is None:
            if prepare_block is not None and order:
                prepare_block(model, "", list(order), whole)
            _walk_by_cutting(model, order, batches, on_layer, samples)
            return
        container, indices = blocks
        first = f"{container}.{indices[0]}"
        before = [p for p in order if order.index(p) < _first_inside(order, container)]
        if prepare_block is not None and before:
            prepare_block(model, "", before, whole)
        _walk_by_cutting(model, before, batches, on_layer, samples)
        inputs = _capture_inputs(model, model.get_submodule(first), batches)
        for i in range(indices[0], len(model.get_submodule(container))):
            prefix = f"{container}.{i}."
            block = model.get_submodule(f"{container}.{i}")
            inside = [p for p in order if p.startswith(prefix)]
            if prepare_block is not None and inside:
                prepare_block(block, prefix, [p[len(prefix) :] for p in inside], _block_passes(block, inputs))
            _walk_block(block, prefix, inside, inputs, on_layer, samples)
            inputs = [_next_inputs(block, x) for x in inputs]
        after = [p for p in order if p not in before and not p.startswith(f"{container}.")]
        if prepare_block is not None and after:
            prepare_block(model, "", after, whole)
        _walk_by_cutting(model, after, batches, on_layer, samples)


@contextmanager
def _no_kv_cache(model: nn.Module) -> Any:
    """Calibration passes must not grow a key/value cache (blocks are run many times on the same inputs)."""
    config = getattr(model, "config", None)
    saved = getattr(config, "use_cache", None)
    if saved is not None:
        config.use_cache = False  # type: ignore[union-attr]
    try:
        yield
    finally:
        if saved is not None:
            config.use_cache = saved  # type: ignore[union-attr]


def _run(module: nn.Module, batch: Batch) -> Any:
    try:
        return module(**batch) if isinstance(batch, Mapping) else module(batch)
    except _Stop:
        return None


def _mask_of(batch: Batch) -> torch.Tensor | None:
    return batch.get("attention_mask") if isinstance(batch, Mapping) else None


def _execution_order(model: nn.Module, paths: Sequence[str], batch: Batch) -> list[str]:
    """The paths in the order one forward pass first reaches them."""
    seen: list[str] = []
    handles = []
    for path in paths:

        def hook(_m: nn.Module, _args: tuple[Any, ...], path: str = path) -> None:
            if path not in seen:
                seen.append(path)

        handles.append(model.get_submodule(path).register_forward_pre_hook(hook))
    try:
        _run(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _blocks(model: nn.Module, order: list[str]) -> tuple[str, list[int]] | None:
    """(path of the ModuleList holding most target layers, indices of its blocks that hold any), or None."""
    best: tuple[int, str] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            count = sum(p.startswith(f"{name}.") for p in order)
            if count and (best is None or count > best[0]):
                best = (count, name)
    if best is None:
        return None
    container = best[1]
    indices = sorted({int(p[len(container) + 1 :].split(".")[0]) for p in order if p.startswith(f"{container}.")})
    return container, indices


def _first_inside(order: list[str], container: str) -> int:
    return next(i for i, p in enumerate(order) if p.startswith(f"{container}."))


def _capture_inputs(model: nn.Module, block: nn.Module, batches: Sequence[Batch]) -> list[_Inputs]:
    """The arguments `block` is called with, for every batch (the pass is cut at the block)."""
    captured: list[_Inputs] = []
    mask: list[torch.Tensor | None] = [None]

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append(_Inputs(args, dict(kwargs), mask[0]))
        raise _Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            mask[0] = _mask_of(batch)
            before = len(captured)
            _run(model, batch)
            if len(captured) == before:
                raise ParameterError("a calibration batch never reached the model's first block")
    finally:
        handle.remove()
    return captured


def _next_inputs(block: nn.Module, inputs: _Inputs) -> _Inputs:
    """The next block's inputs: this block's output hidden states, every other argument unchanged."""
    out = block(*inputs.args, **inputs.kwargs)
    hidden = out[0] if isinstance(out, tuple | list) else out
    if inputs.args:
        return _Inputs((hidden, *inputs.args[1:]), inputs.kwargs, inputs.mask)
    return _Inputs(inputs.args, {**inputs.kwargs, "hidden_states": hidden}, inputs.mask)


def _identity(x: torch.Tensor) -> tuple[Any, ...]:
    """What makes two layer inputs "the very same tensor": same memory, same view, and no write in between.

    The caller keeps the first tensor alive, so its memory cannot be recycled for another activation of the
    same shape (the allocator does that readily: on a Llama block o_proj's input was freed and reused for
    gate/up's); the version counter catches a buffer overwritten in place between two layers.
    """
    return (x.data_ptr(), tuple(x.shape), x.stride(), x._version)


def _group_statistics(
    root: nn.Module, pending: list[str], prefix: str, passes: Sequence[Pass], samples: int = 0
) -> tuple[list[str], LayerStatistics]:
    """Statistics of the first pending layer and the layers fed the very same tensor, cutting each pass after them.

    `pending` paths are relative to `root` after `prefix`; each pass is a callable running `root` (or the
    model) on one batch, with that batch's attention mask.
    """
    target = pending[0]
    group = [target]
    acc = LayerStatistics(name=prefix + target, samples=samples)
    state: dict[str, Any] = {"key": None, "input": None, "mask": None, "known": False, "seen": set()}

    def make_hook(path: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            key = _identity(x)
            if path == target:
                state["key"], state["input"] = key, x  # held: its memory cannot be reused by another activation
                acc.add(x, state["mask"])
            elif state["key"] is not None:
                if key != state["key"]:
                    raise _Stop
                if path not in group:
                    group.append(path)
            state["seen"].add(path)
            if state["known"] and state["seen"] >= set(group):  # the first pass found the whole group: cut now
                raise _Stop

        return hook

    handles = [root.get_submodule(p).register_forward_pre_hook(make_hook(p)) for p in pending]
    try:
        for run, mask in passes:
            state["key"] = state["input"] = None
            state["mask"], state["seen"] = mask, set()
            try:
                run()
            except _Stop:
                pass
            state["known"] = state["key"] is not None
    finally:
        for handle in handles:
            handle.remove()
    acc.hessian()  # refuses a group no calibration token reached
    return group, acc


def _walk_by_cutting(
    model: nn.Module, order: list[str], batches: Sequence[Batch], on_layer: OnLayer, samples: int = 0
) -> None:
    """The reference walk: the whole model is run up to each layer group."""
    passes = [(lambda b=b: _run(model, b), _mask_of(b)) for b in batches]
    pending = list(order)
    while pending:
        group, stats = _group_statistics(model, pending, "", passes, samples)
        for path in group:
            on_layer(path, stats)
        pending = [p for p in pending if p not in group]


def _block_passes(block: nn.Module, inputs: list[_Inputs]) -> list[Pass]:
    return [(lambda x=x: block(*x.args, **x.kwargs), x.mask) for x in inputs]


def _walk_block(
    block: nn.Module, prefix: str, order: list[str], inputs: list[_Inputs], on_layer: OnLayer, samples: int = 0
) -> None:
    """The layers of one block, each group calibrated by running the block alone on its cached inputs."""
    passes = _block_passes(block, inputs)
    pending = [p[len(prefix) :] for p in order]
    while pending:
        group, stats = _group_statistics(block, pending, prefix, passes, samples)
        for path in group:
            on_layer(prefix + path, stats)
        pending = [p for p in pending if p not in group]


def group_inputs(root: nn.Module, paths: list[str], passes: Sequence[Pass], samples: int = 0,
                 name_prefix: str = "") -> list[tuple[list[str], LayerStatistics]]:  # fmt: skip
    """Every layer group (layers fed the very same tensor) among `paths` with its input statistics, in one run of
    the passes (nothing in `root` changes meanwhile): what a smoothing step needs before any layer is quantized.

    Each pass's layer inputs are held until the pass ends, so the identity of two inputs (same memory, view and
    version) means the very same tensor, as in the sequential walk.
    """
    groups: list[list[str]] = []
    stats: list[LayerStatistics] = []
    group_of: dict[str, int] = {}
    state: dict[str, Any] = {"mask": None, "held": [], "keys": {}, "added": set()}

    def make_hook(path: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            key = _identity(x)
            state["held"].append(x)  # held: its memory cannot be recycled for another input of this pass
            if path not in group_of:  # first time this layer runs: its group is the layer fed this very tensor
                index = state["keys"].get(key)
                if index is None:
                    groups.append([])
                    stats.append(LayerStatistics(name=name_prefix + path, samples=samples))
                    index = len(groups) - 1
                groups[index].append(path)
                group_of[path] = index
            index = group_of[path]
            state["keys"].setdefault(key, index)
            if index not in state["added"]:
                state["added"].add(index)
                stats[index].add(x, state["mask"])

        return hook

    handles = [root.get_submodule(p).register_forward_pre_hook(make_hook(p)) for p in paths]
    try:
        for run, mask in passes:
            state["mask"], state["held"], state["keys"], state["added"] = mask, [], {}, set()
            try:
                run()
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return list(zip(groups, stats, strict=True))
