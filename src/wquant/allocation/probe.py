"""Measure what a weight perturbation does to a model's output, on fixed inputs, against the unquantized model.

A probe runs the reference model once and keeps its outputs; calling it on a perturbed model returns the
mean distortion (1 − cosine of sentence embeddings for encoders, KL per predicted position for causal LMs),
summed in float64 so that the small distortions of one tensor at 6-8 bits are not lost to rounding.

Why replay: measuring sensitivities perturbs one tensor at a time, and a tensor of block l cannot change
what blocks 0..l-1 compute. The reference pass records every repeated block's output per batch (and, from
the order modules run in, how many blocks finish before each weight is first used); `probe(model,
perturbed=name)` then hands those blocks' cached outputs back instead of recomputing them, which halves the
cost of a sensitivity sweep over a transformer and gives the same numbers as a full forward.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from wquant.allocation.plan import Plan
from wquant.data import token_windows
from wquant.errors import ParameterError
from wquant.formats import parse_spec, quantize
from wquant.models import mean_pooled, weight_sites


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The longest nn.ModuleList of ≥ 2 modules of one class (a transformer's layers); [] when there is none."""
    best: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2 and len(module) > len(best):
            kinds = {type(m) for m in module}
            if len(kinds) == 1:
                best = list(module)
    return best


class OutputProbe:
    """Distortion of a model's output on fixed batches against its own reference output (see module docstring).

    Subclasses give `_output(model, batch)` (a float64 tensor per batch) and `_distortion(out, ref)` (the
    per-sample distortions of one batch).
    """

    def __init__(self, model: nn.Module, batches: Sequence[Any]) -> None:
        if not batches:
            raise ParameterError("the probe has no input batches; give more text")
        self.batches = list(batches)
        self.blocks = repeated_blocks(model)
        self.block_outputs: list[list[Any]] = [[] for _ in self.blocks]
        self.reference: list[torch.Tensor] = []
        self.skips: dict[str, int] = {}
        self._record(model)

    # -- subclass hooks
    def _output(self, model: nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def _distortion(self, out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- reference pass
    @torch.inference_mode()
    def _record(self, model: nn.Module) -> None:
        done = [0]  # blocks finished in the current batch
        calls = [0] * len(self.blocks)
        first_use: dict[int, int] = {}  # id(module) → blocks finished before its first call
        handles = []

        def block_hook(i: int):  # noqa: ANN202
            def hook(_m: nn.Module, _args: Any, output: Any) -> None:
                calls[i] += 1
                done[0] += 1
                self.block_outputs[i].append(output)

            return hook

        def site_hook(module: nn.Module, _args: Any) -> None:
            first_use.setdefault(id(module), done[0])

        sites = weight_sites(model)
        for i, block in enumerate(self.blocks):
            handles.append(block.register_forward_hook(block_hook(i)))
        for site in sites:
            for path, _ in site.users:
                handles.append(model.get_submodule(path).register_forward_pre_hook(site_hook))
        try:
            for batch in self.batches:
                done[0] = 0
                self.reference.append(self._output(model, batch))
        finally:
            for h in handles:
                h.remove()
        if any(c != len(self.batches) for c in calls):  # a block called twice per forward: replay is not safe
            self.blocks, self.block_outputs = [], []
        for site in sites:
            modules = [id(model.get_submodule(p)) for p, _ in site.users]
            uses = [first_use[m] for m in modules if m in first_use]
            self.skips[site.name] = min(uses) if uses and self.blocks else 0

    @contextmanager
    def _replayed(self, count: int, index: list[int]) -> Iterator[None]:
        """Blocks [0, count) return their recorded output for batch index[0] instead of computing it."""
        saved = []
        for i in range(count):
            block = self.blocks[i]
            saved.append((block, block.__dict__.get("forward")))
            block.forward = lambda *_a, _i=i, **_k: self.block_outputs[_i][index[0]]  # type: ignore[method-assign]
        try:
            yield
        finally:
            for block, old in saved:
                if old is None:
                    del block.forward
                else:
                    block.forward = old

    @torch.inference_mode()
    def __call__(self, model: nn.Module, perturbed: str | None = None) -> float:
        """Mean distortion of `model` against the reference. perturbed: the name of the only weight that differs
        from the reference model (its earlier blocks are replayed); None runs everything."""
        skip = self.skips.get(perturbed, 0) if perturbed is not None else 0
        index = [0]
        total, count = 0.0, 0
        with self._replayed(skip, index):
            for i, (batch, ref) in enumerate(zip(self.batches, self.reference, strict=True)):
                index[0] = i
                d = self._distortion(self._output(model, batch), ref)
                total += float(d.sum())
                count += d.numel()
        return total / count


class EncoderProbe(OutputProbe):
    """1 − cosine of unit-norm mean-pooled sentence embeddings, as ½‖e − e_ref‖² (exact for unit vectors and
    free of the cancellation in 1 − e·e_ref), averaged over texts."""

    def __init__(
        self, model: nn.Module, tokenizer: Any, texts: Sequence[str], *, max_length: int = 128, batch_size: int = 16
    ) -> None:
        if len(texts) < 2:
            raise ParameterError("the encoder probe needs at least 2 texts")
        texts = list(texts)
        batches = [
            dict(tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt"))
            for i in range(0, len(texts), batch_size)
        ]  # fmt: skip
        super().__init__(model, batches)

    def _output(self, model: nn.Module, batch: Any) -> torch.Tensor:
        hidden = model(**batch).last_hidden_state
        return mean_pooled(hidden.double(), batch["attention_mask"])

    def _distortion(self, out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return 0.5 * (out - ref).square().sum(-1)


class CausalProbe(OutputProbe):
    """Mean KL(P_ref ‖ P_model) per predicted position on fixed windows of the text (float64 log-softmax)."""

    def __init__(
        self, model: nn.Module, tokenizer: Any, text: str, *, window: int = 128, max_windows: int = 32,
        batch_size: int = 8,
    ) -> None:  # fmt: skip
        windows = [w for w in token_windows(tokenizer, text, window) if w.numel() == window][:max_windows]
        if not windows:
            raise ParameterError(f"the probe text is shorter than one window of {window} tokens; give more text")
        ids = torch.stack(windows)
        super().__init__(model, list(ids.split(batch_size)))

    def _output(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return torch.log_softmax(model(input_ids=batch, use_cache=False).logits[:, :-1].double(), dim=-1)

    def _distortion(self, out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return (ref.exp() * (ref - out)).sum(-1).clamp(min=0).reshape(-1)


# ------------------------------------------------------------------------------------- weights in place


@contextmanager
def substituted(model: nn.Module, weights: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Temporarily write dequantized weights (storage layout) into the model; restored on exit."""
    sites = {s.name: s for s in weight_sites(model)}
    saved = []
    with torch.no_grad():
        try:
            for name, value in weights.items():
                site = sites[name]
                param = site.module.weight
                saved.append((param, param.detach().clone()))
                param.copy_(value.t() if site.kind == "transposed" else value)
            yield model
        finally:
            for param, old in saved:
                param.copy_(old)


def stored_values(weight: torch.Tensor, spec: str, name: str = "tensor") -> torch.Tensor:
    """The values a format stores a weight as. Entropy coding is lossless, so a coded spec's values are those of
    the same spec uncoded (bitwise; tested): skipping the coder saves an encode and a decode per call."""
    parsed = parse_spec(spec)
    if parsed.coding is not None:
        parsed = dataclasses.replace(parsed, coding=None)
    return quantize(weight, parsed, name=name).dequantize()


def dequantized(model: nn.Module, plan: Plan, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """The planned tensors as the formats will store them (storage layout), without touching the model."""
    sites = {s.name: s for s in weight_sites(model, plan.targets)}
    keep = set(names) if names is not None else None
    return {
        t.name: stored_values(sites[t.name].weight().contiguous(), t.spec, t.name)
        for t in plan.tensors
        if keep is None or t.name in keep
    }


def measure_plan(model: nn.Module, plan: Plan, probe: Any) -> float:
    """Distortion of the model with the whole plan applied (weights substituted, model restored after)."""
    with substituted(model, dequantized(model, plan)):
        return probe(model)


def measure_plans(model: nn.Module, plans: Sequence[Plan], probe: Any) -> list[float]:
    """`measure_plan` of each plan; a (tensor, format) pair that several plans share is quantized once."""
    sites = {s.name: s for s in weight_sites(model)}
    uses = Counter((t.name, t.spec) for p in plans for t in p.tensors)
    cache: dict[tuple[str, str], torch.Tensor] = {}
    out = []
    for plan in plans:
        values = {}
        for t in plan.tensors:
            key = (t.name, t.spec)
            value = cache.get(key)
            if value is None:
                value = stored_values(sites[t.name].weight().contiguous(), t.spec, t.name)
                if uses[key] > 1:
                    cache[key] = value
            values[t.name] = value
        with substituted(model, values):
            out.append(probe(model))
    return out
