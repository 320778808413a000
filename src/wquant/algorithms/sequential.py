"""Run an algorithm over a whole model, one Linear layer at a time, on calibration batches.

Layers are visited in the order the forward pass reaches them. For each, the model (with every earlier
layer already quantized, so errors compound as they will at inference) is run until that layer has seen
its inputs, and the pass is cut there. Only that layer's Hessian exists at any time; layers fed the very
same tensor (query/key/value) share it and are done together. Works on any nn.Module whose Linear (or
transformers Conv1D) layers take the activations as their first argument.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wquant.algorithms.gptq import GPTQConfig, gptq
from wquant.algorithms.hqq import HQQConfig, hqq
from wquant.algorithms.nupes import NUPESConfig, nupes, relative_error
from wquant.algorithms.rtn import RTNConfig, rtn
from wquant.errors import ParameterError, TensorError
from wquant.formats import QuantizedTensor
from wquant.models.layers import QuantizedLinear, QuantizedWeight
from wquant.models.quantize import QuantizeConfig, module_kind, set_submodule
from wquant.validation import check_int_range

AlgorithmConfig = RTNConfig | GPTQConfig | NUPESConfig | HQQConfig
Batch = Mapping[str, torch.Tensor] | torch.Tensor
ALGORITHMS = ("rtn", "rtn-search", "gptq", "nupes", "hqq")


@dataclass(frozen=True)
class LayerReport:
    name: str
    shape: tuple[int, ...]
    format: str
    bits_per_param: float
    output_error: float | None  # tr(ΔW·H·ΔWᵀ)/tr(W·H·Wᵀ) on the calibration inputs; None without them
    tokens: int  # calibration tokens that reached the layer
    seconds: float
    note: str = ""


class _Stop(Exception):
    """Raised inside a forward pass once the layer being calibrated has seen its inputs."""


def quantize_layer(
    weight: torch.Tensor, config: AlgorithmConfig, hessian: torch.Tensor | None = None, *, name: str = "weight"
) -> tuple[QuantizedTensor, str]:
    """One (out, in) weight through the configured algorithm; also a short note on what was done."""
    if isinstance(config, RTNConfig):
        if config.needs_calibration and hessian is None:
            return rtn(weight, RTNConfig(config.spec, importance="ones"), name=name), "no inputs: plain-MSE clip"
        return rtn(weight, config, hessian=hessian, name=name), ""
    if isinstance(config, GPTQConfig):
        if hessian is None:
            return rtn(weight, RTNConfig(config.spec, search=False), name=name), "no inputs: RTN fallback"
        result = gptq(weight, hessian, config, name=name)
        note = f"damping {result.damping:g}" if result.damping != config.damp else ""
        return result.quantized, note
    if isinstance(config, NUPESConfig):
        result = nupes(weight, config, hessian=hessian, name=name)
        return result.quantized, f"a={result.exponent:g}"
    if isinstance(config, HQQConfig):
        return hqq(weight, config, name=name), ""
    raise ParameterError(
        f"unknown algorithm config {type(config).__name__}; use RTNConfig, GPTQConfig, NUPESConfig or HQQConfig"
    )


def quantize_model_with(
    model: nn.Module,
    config: AlgorithmConfig | Mapping[str, AlgorithmConfig],
    calibration_batches: Iterable[Batch] | None = None,
    *,
    include: tuple[str, ...] = ("*",),
    exclude: tuple[str, ...] = (),
    log: Callable[[str], None] | None = None,
) -> list[LayerReport]:
    """Quantize `model`'s Linear layers in place with `config`, sequentially on the calibration batches.

    `config` is one config for every layer, or a mapping from layer path to config (a per-layer plan, e.g.
    Fisher allocation's formats run through GPTQ); it must then cover every selected layer. Batches are
    tokenizer outputs (dicts passed as keyword arguments; an `attention_mask` drops padding from the
    statistics) or input-id tensors. Data-free configs accept None. Returns one report per layer.
    """
    if not isinstance(model, nn.Module):
        raise ParameterError(f"quantize_model_with needs a torch.nn.Module, got {type(model).__name__}")
    selector = QuantizeConfig(targets=("linear",), include=include, exclude=exclude)
    sites = _linear_sites(model, selector)
    if not sites:
        raise ParameterError("no Linear layer matches include/exclude; nothing to quantize")
    config_of = _per_layer(config, [path for path, _ in sites], model)
    batches = None if calibration_batches is None else list(calibration_batches)
    if batches is not None and not batches:
        raise ParameterError("calibration_batches is empty; give at least one batch (or None for data-free)")
    if batches is None and (needy := [p for p, c in config_of.items() if c.needs_calibration]):
        raise ParameterError(f"{type(config_of[needy[0]]).__name__} ({needy[0]}) needs calibration batches")
    if batches is None or not any(_uses_data(c) for c in config_of.values()):
        return [_quantize_site(model, path, kind, config_of[path], None, 0) for path, kind in sites]

    reports: list[LayerReport] = []
    order = _execution_order(model, sites, batches[0])
    kinds = dict(sites)
    never = [p for p, _ in sites if p not in order]
    pending = list(order)
    while pending:
        group, hessian, tokens = _calibrate(model, pending, batches)
        for path in group:
            reports.append(_quantize_site(model, path, kinds[path], config_of[path], hessian, tokens))
            if log is not None:
                r = reports[-1]
                log(f"{r.name}: {r.format} rel. output error {r.output_error} {r.note}".rstrip())
        del hessian
        pending = [p for p in pending if p not in group]
    for path in never:
        reports.append(_quantize_site(model, path, kinds[path], config_of[path], None, 0))
    for _, module in model.named_modules():  # the cache only served the calibration passes
        if isinstance(module, QuantizedLinear) and module.stored.cache:
            module.stored.cache = False
            module.stored.clear_cache()
    return reports


def _per_layer(
    config: AlgorithmConfig | Mapping[str, AlgorithmConfig], paths: list[str], model: nn.Module
) -> dict[str, AlgorithmConfig]:
    if not isinstance(config, Mapping):
        _check_config(config, "config")
        return dict.fromkeys(paths, config)
    linear = {name for name, m in model.named_modules() if module_kind(m) in ("linear", "transposed")}
    if unknown := sorted(set(config) - linear):
        raise ParameterError(f"per-layer configs name no Linear layer of the model: {', '.join(unknown[:5])}")
    if missing := [p for p in paths if p not in config]:
        raise ParameterError(
            f"no config for {len(missing)} selected layer(s), e.g. {', '.join(missing[:3])}; add them to the "
            "mapping or leave them out with include/exclude"
        )
    for path in paths:
        _check_config(config[path], path)
    return {path: config[path] for path in paths}


def _check_config(config: object, where: str) -> None:
    if not isinstance(config, AlgorithmConfig):
        raise ParameterError(
            f"{where}: expected RTNConfig, GPTQConfig, NUPESConfig or HQQConfig, got {type(config).__name__}"
        )


def _uses_data(config: AlgorithmConfig) -> bool:
    """Whether calibration inputs change the result (plain RTN, |w|-weighted search and HQQ do not)."""
    return not (isinstance(config, RTNConfig | HQQConfig) and not config.needs_calibration)


def _linear_sites(model: nn.Module, selector: QuantizeConfig) -> list[tuple[str, str]]:
    users: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        users[id(param)] = users.get(id(param), 0) + 1
    out = []
    for path, module in model.named_modules():
        kind = module_kind(module)
        if kind not in ("linear", "transposed") or not selector.selects(path):
            continue
        if users.get(id(module.weight), 0) > 1:
            raise TensorError(f"{path}.weight is tied to another parameter; exclude it (e.g. exclude=('{path}',))")
        out.append((path, kind))
    return out


def _run(model: nn.Module, batch: Batch) -> None:
    try:
        if isinstance(batch, Mapping):
            model(**batch)
        else:
            model(batch)
    except _Stop:
        pass


def _execution_order(model: nn.Module, sites: list[tuple[str, str]], batch: Batch) -> list[str]:
    seen: list[str] = []
    handles = []
    for path, _ in sites:

        def hook(_m: nn.Module, _args: tuple[Any, ...], path: str = path) -> None:
            if path not in seen:
                seen.append(path)

        handles.append(model.get_submodule(path).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            _run(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _identity(x: torch.Tensor) -> tuple[Any, ...]:
    """What makes two layer inputs "the very same tensor": same memory, same view, and no write in between.

    The caller keeps the first tensor alive, so its memory cannot be recycled for another activation of the
    same shape (the allocator does that readily: on a Llama block o_proj's input was freed and reused for
    gate/up's); the version counter catches a buffer overwritten in place between two layers.
    """
    return (x.data_ptr(), tuple(x.shape), x.stride(), x._version)


def _calibrate(model: nn.Module, pending: list[str], batches: list[Batch]) -> tuple[list[str], torch.Tensor, int]:
    """Hessian of the first pending layer (and of layers fed the same tensor), cutting each pass after it."""
    target = pending[0]
    group = [target]
    state: dict[str, Any] = {"sum": None, "tokens": 0, "key": None, "mask": None, "input": None}

    def accumulate(path: str, x: torch.Tensor) -> None:
        mask = state["mask"]
        if mask is not None and x.ndim == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
            rows = x[mask.bool()]
        else:
            rows = x.reshape(-1, x.shape[-1])
        rows = rows.detach().to(torch.float32)
        if not bool(torch.isfinite(rows).all()):
            raise TensorError(f"{path}: calibration activations contain NaN/Inf; check the model and its inputs")
        gram = rows.T @ rows
        state["sum"] = gram if state["sum"] is None else state["sum"].add_(gram)
        state["tokens"] += rows.shape[0]

    def make_hook(path: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            key = _identity(x)
            if path == target:
                state["key"] = key
                state["input"] = x  # held so its memory cannot be reused by a later, different activation
                accumulate(path, x)
            elif state["key"] is not None:
                if key == state["key"]:
                    if path not in group:
                        group.append(path)
                else:
                    raise _Stop

        return hook

    handles = [model.get_submodule(p).register_forward_pre_hook(make_hook(p)) for p in pending]
    try:
        with torch.no_grad():
            for batch in batches:
                state["key"] = state["input"] = None
                state["mask"] = batch.get("attention_mask") if isinstance(batch, Mapping) else None
                _run(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    if state["sum"] is None or state["tokens"] == 0:
        raise ParameterError(f"{target}: no calibration token reached this layer (all padding?)")
    hessian = state["sum"].mul_(2.0 / state["tokens"])
    return group, hessian, int(state["tokens"])


def _quantize_site(
    model: nn.Module, path: str, kind: str, config: AlgorithmConfig, hessian: torch.Tensor | None, tokens: int
) -> LayerReport:
    start = time.perf_counter()
    module = model.get_submodule(path)
    weight = module.weight.detach().cpu()
    weight = (weight.t() if kind == "transposed" else weight).contiguous()
    stored, note = quantize_layer(weight, config, hessian, name=f"{path}.weight")
    bias = module.bias if isinstance(getattr(module, "bias", None), nn.Parameter) else None
    cache = hessian is not None  # later calibration passes reuse the dequantized weight
    set_submodule(model, path, QuantizedLinear(QuantizedWeight(stored, cache=cache), bias, layout=kind))
    error = None if hessian is None else relative_error(weight.float(), stored.dequantize().float(), hessian)
    return LayerReport(
        path, tuple(weight.shape), stored.spec.to_string(), stored.bits_per_param(), error, tokens,
        time.perf_counter() - start, note,
    )  # fmt: skip


def algorithm_config(name: str, format: str | None = None, *, bits: int = 4, **options: Any) -> AlgorithmConfig:
    """The config behind a CLI choice `--algorithm rtn|rtn-search|gptq|nupes|hqq` (format, or bits for nupes).

    Without a format: int<bits> in blocks of 64 with bf16 absmax scales, or min/max scale + zero for hqq.
    """
    key = name.strip().lower()
    if key not in ALGORITHMS:
        raise ParameterError(f"algorithm {name!r} unknown; valid: {', '.join(ALGORITHMS)}")
    if key == "hqq":
        return HQQConfig(format or f"int{bits}:unsigned/block64:minmax:bf16", **options)
    fmt = format or f"int{bits}/block64:absmax:bf16"
    if key == "rtn":
        return RTNConfig(fmt, search=False, **options)
    if key == "rtn-search":
        return RTNConfig(fmt, search=True, **options)
    if key == "gptq":
        return GPTQConfig(fmt, **options)
    return NUPESConfig(bits=bits, **options)


def calibration_windows(
    tokenizer: Any, text: str | os.PathLike[str], *, nsamples: int, seqlen: int, seed: int = 0, batch_size: int = 8
) -> list[torch.Tensor]:
    """`nsamples` random windows of `seqlen` token ids from a text (or a text file), GPTQ-style, in batches.

    Raises ParameterError when nsamples ≤ 0 or the text is shorter than one window.
    """
    check_int_range(nsamples, "nsamples", 1)
    check_int_range(seqlen, "seqlen", 1)
    check_int_range(batch_size, "batch_size", 1)
    if isinstance(text, os.PathLike) or (isinstance(text, str) and "\n" not in text and os.path.isfile(text)):
        from wquant.evaluate.text import read_text

        text = read_text(text)
    ids = tokenizer(str(text), add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if ids.numel() < seqlen:
        raise ParameterError(f"calibration text has {ids.numel()} tokens, shorter than one window of {seqlen}; "
                             "give more text or a smaller --seqlen")  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen + 1, (nsamples,), generator=gen)
    windows = torch.stack([ids[s : s + seqlen] for s in starts.tolist()])
    return list(windows.split(batch_size))


def sentence_batches(
    tokenizer: Any, texts: list[str], *, batch_size: int = 32, max_length: int = 128
) -> list[dict[str, torch.Tensor]]:
    """Tokenizer batches (padded, with attention masks) of short texts, e.g. for encoder calibration."""
    check_int_range(batch_size, "batch_size", 1)
    if not texts:
        raise ParameterError("no calibration texts")
    return [
        dict(
            tokenizer(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
        )  # fmt: skip
        for i in range(0, len(texts), batch_size)
    ]
