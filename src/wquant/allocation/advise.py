"""Advice: measure every candidate format on every tensor, allocate at a budget, and check the prediction.

The solver's bit total *is* the applied model's total (exact stored bits, all-in), so the plan lands on the
budget exactly as far as the candidates' bit sizes allow.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wquant.allocation.allocate import allocate
from wquant.allocation.fisher import FisherConfig, FisherEstimate, Task, estimate_fisher
from wquant.allocation.plan import Candidate, CandidateTable, Plan, TensorCandidates, Weighting
from wquant.data import token_windows
from wquant.errors import ParameterError, SpecError, TensorError
from wquant.evaluate import kl_terms
from wquant.formats import parse_spec, quantize
from wquant.formats.spec import GGUF_LADDER, fallback_spec
from wquant.models import sentence_embeddings, weight_sites
from wquant.validation import check_positive

DEFAULT_FORMATS = ("int{b}/block64:absmax:bf16",)
DEFAULT_BITS = (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)


@dataclass(frozen=True)
class AdviseConfig:
    """Budget (all-in model bits/param) and the candidate formats: templates with `{b}` expanded over `bits`."""

    budget: float
    formats: tuple[str, ...] = DEFAULT_FORMATS
    bits: tuple[float, ...] = DEFAULT_BITS
    weighting: Weighting = "mean"
    fisher: FisherConfig = FisherConfig()

    def __post_init__(self) -> None:
        check_positive(self.budget, "budget")
        object.__setattr__(self, "formats", tuple(self.formats))
        object.__setattr__(self, "bits", tuple(float(b) for b in self.bits))
        if self.weighting not in ("mean", "diag"):
            raise ParameterError(f"weighting {self.weighting!r} unknown; valid: mean, diag")
        expand_formats(self.formats, self.bits)  # fail early on a bad template


def _number(b: float) -> str:
    return str(int(b)) if float(b).is_integer() else f"{b:g}"


def expand_formats(formats: Sequence[str], bits: Sequence[float]) -> tuple[str, ...]:
    """Candidate spec strings: each template with `{b}` once per bit width, `gguf` as the ladder of GGUF types
    (Q2_K … Q8_0), others as they are; validated."""
    if not formats:
        raise ParameterError("give at least one candidate format")
    out: list[str] = []
    templates = [t for f in formats for t in (GGUF_LADDER if f.strip().lower() == "gguf" else (f,))]
    for template in templates:
        specs = [template.replace("{b}", _number(b)) for b in bits] if "{b}" in template else [template]
        for spec in specs:
            try:
                parsed = parse_spec(spec).to_string()
            except SpecError as exc:
                raise SpecError(f"candidate format {spec!r} (from {template!r}): {exc}") from None
            if parsed not in out:
                out.append(parsed)
    return tuple(out)


def _fixed_bits(model: nn.Module, allocated: set[int]) -> tuple[int, int]:
    fixed, params = 0, 0
    for p in model.parameters():  # deduplicated, as model_bits counts
        params += p.numel()
        if id(p) not in allocated:
            fixed += p.numel() * p.element_size() * 8
    return fixed, params


def measure_candidates(
    model: nn.Module,
    fisher: FisherEstimate,
    formats: Sequence[str] = DEFAULT_FORMATS,
    bits: Sequence[float] = DEFAULT_BITS,
    *,
    targets: tuple[str, ...] = ("linear", "embedding"),
) -> CandidateTable:
    """Quantize every target tensor with every candidate; record exact bits and (Fisher-weighted) errors."""
    specs = expand_formats(formats, bits)
    sites = [s for s in weight_sites(model, targets) if s.name in fisher.diagonal]
    if not sites:
        raise ParameterError("no weight of the model has a Fisher estimate; estimate it on this model")
    rows = []
    for site in sites:
        w = site.weight().float().contiguous()
        diag = fisher.diagonal[site.name].float()
        summary = fisher.tensor(site.name)
        cands = []
        for spec in specs:
            try:
                q = quantize(w, spec, name=site.name)
            except TensorError:  # rows without whole super-blocks: llama.cpp's fallback type, if there is one
                fallback = fallback_spec(spec, tuple(w.shape))
                if fallback is None:
                    raise
                q = quantize(w, fallback, name=site.name)
            delta_sq = (q.dequantize().float() - w).square()
            cands.append(
                Candidate(spec, q.spec.to_string(), q.bits(), float(delta_sq.double().sum()),
                          float((delta_sq.double() * diag.double()).sum()))
            )  # fmt: skip
        rows.append(TensorCandidates(site.name, w.numel(), summary.fisher_mean, summary.rms, tuple(cands)))
    fixed, params = _fixed_bits(model, {id(s.module.weight) for s in sites})
    return CandidateTable(tuple(rows), fixed, params, tuple(targets), fisher.mode)


def advise(
    model: nn.Module, tokenizer: Any, task: Task, calibration_text: str, config: AdviseConfig
) -> tuple[Plan, CandidateTable, FisherEstimate]:
    """Fisher on the calibration text → measured candidates → the exact-budget plan."""
    fisher = estimate_fisher(model, tokenizer, calibration_text, task, config.fisher)
    table = measure_candidates(model, fisher, config.formats, config.bits, targets=config.fisher.targets)
    return allocate(table, config.budget, config.weighting), table, fisher


# ---------------------------------------------------------------------------------------------- checking


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


def dequantized(model: nn.Module, plan: Plan, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """The planned tensors as the formats will store them (storage layout), without touching the model."""
    sites = {s.name: s for s in weight_sites(model, plan.targets)}
    keep = set(names) if names is not None else None
    return {
        t.name: quantize(sites[t.name].weight().contiguous(), t.spec, name=t.name).dequantize()
        for t in plan.tensors
        if keep is None or t.name in keep
    }


class CausalProbe:
    """Mean KL(P_ref ‖ P_model) per predicted position on fixed held-out windows; reference cached once."""

    def __init__(self, model: nn.Module, tokenizer: Any, text: str, *, window: int = 128, max_windows: int = 32):
        windows = [w for w in token_windows(tokenizer, text, window) if w.numel() == window][:max_windows]
        if not windows:
            raise ParameterError(f"evaluation text is shorter than one window of {window} tokens")
        self.ids = torch.stack(windows)
        self.reference = self._logits(model)

    @torch.inference_mode()
    def _logits(self, model: nn.Module) -> torch.Tensor:
        return torch.cat([model(input_ids=b).logits[:, :-1].float() for b in self.ids.split(8)])

    def __call__(self, model: nn.Module) -> float:
        logits = self._logits(model)
        full, _, _ = kl_terms(self.reference.reshape(-1, logits.shape[-1]), logits.reshape(-1, logits.shape[-1]), 1)
        return float(full.mean())


class EncoderProbe:
    """1 − mean cosine between reference and model sentence embeddings (= mean ½‖Δe‖² for unit vectors)."""

    def __init__(self, model: nn.Module, tokenizer: Any, texts: Sequence[str], *, max_length: int = 128):
        if len(texts) < 2:
            raise ParameterError("the encoder probe needs at least 2 evaluation texts")
        self.tokenizer, self.texts, self.max_length = tokenizer, list(texts), max_length
        self.reference = self._embed(model)

    def _embed(self, model: nn.Module) -> torch.Tensor:
        return sentence_embeddings(model, self.tokenizer, self.texts, batch_size=32, max_length=self.max_length)

    def __call__(self, model: nn.Module) -> float:
        return float(1 - (self._embed(model) * self.reference).sum(-1).double().mean())


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Rank correlation (Pearson on ranks; ties are rare for continuous errors)."""
    x = torch.as_tensor(a, dtype=torch.float64).argsort().argsort().double()
    y = torch.as_tensor(b, dtype=torch.float64).argsort().argsort().double()
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()))


@dataclass(frozen=True)
class PredictionCheck:
    names: tuple[str, ...]
    predicted: tuple[float, ...]  # ½ F̄ ‖δ‖² per tensor
    measured: tuple[float, ...]  # distortion with only this tensor quantized
    predicted_total: float
    measured_total: float  # distortion with the whole plan applied
    rank_correlation: float


def check_prediction(model: nn.Module, plan: Plan, probe: Any) -> PredictionCheck:
    """Perturb one tensor at a time with its planned format and measure; then the whole plan."""
    values = dequantized(model, plan)
    measured = []
    for t in plan.tensors:
        with substituted(model, {t.name: values[t.name]}):
            measured.append(probe(model))
    with substituted(model, values):
        total = probe(model)
    predicted = [t.predicted_kl for t in plan.tensors]
    return PredictionCheck(
        tuple(t.name for t in plan.tensors), tuple(predicted), tuple(measured), sum(predicted), total,
        spearman(predicted, measured),
    )  # fmt: skip


def measure_plan(model: nn.Module, plan: Plan, probe: Any) -> float:
    """Distortion of the model with the whole plan applied (weights substituted, model restored after)."""
    with substituted(model, dequantized(model, plan)):
        return probe(model)


def bits_at_distortion(points: Sequence[tuple[float, float]], distortion: float) -> float:
    """Bits/param where a uniform-format curve reaches `distortion`: log-distortion linear in bits between
    points (the high-rate law), extrapolated from the end segment outside the measured range."""
    pts = sorted(points)
    if len(pts) < 2:
        raise ParameterError("interpolation needs at least 2 uniform points")
    logs = [(b, math.log(d)) for b, d in pts]
    target = math.log(distortion)
    for (b0, l0), (b1, l1) in zip(logs, logs[1:], strict=False):
        if min(l0, l1) <= target <= max(l0, l1) and l0 != l1:
            return b0 + (target - l0) * (b1 - b0) / (l1 - l0)
    (b0, l0), (b1, l1) = (logs[0], logs[1]) if target > logs[0][1] else (logs[-2], logs[-1])
    return b0 + (target - l0) * (b1 - b0) / (l1 - l0)


def distortion_at_bits(points: Sequence[tuple[float, float]], bits: float) -> float:
    """Uniform-format distortion at `bits` by log-linear interpolation between the measured points."""
    pts = sorted(points)
    for (b0, d0), (b1, d1) in zip(pts, pts[1:], strict=False):
        if b0 <= bits <= b1:
            return math.exp(math.log(d0) + (bits - b0) * (math.log(d1) - math.log(d0)) / (b1 - b0))
    (b0, d0), (b1, d1) = (pts[0], pts[1]) if bits < pts[0][0] else (pts[-2], pts[-1])
    return math.exp(math.log(d0) + (bits - b0) * (math.log(d1) - math.log(d0)) / (b1 - b0))
