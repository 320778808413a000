"""The plan: which format each tensor gets at a model-level bits/param budget, and how to check it.

Costs are measured, not modelled: every tensor is quantized with every candidate format, its exact stored
bits (`QuantizedTensor.bits()`) and its error δ_t are recorded, and the predicted ΔKL is ½ F̄_t ‖δ_t‖²
("mean", the paper's tensor-constant Fisher) or ½ Σ F_ii δ_i² ("diag"). The budget is all-in, as
`model_bits` counts it: unquantized parameters (norms, biases) cost their dtype width, tied weights count once.
So the solver's bit total *is* the applied model's total, and the plan lands on the budget exactly as far as
the candidates' bit sizes allow.
"""

from __future__ import annotations

import glob
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from wquant.allocation.allocate import Option, closed_form_bits, solve_budget
from wquant.allocation.fisher import FisherConfig, FisherEstimate, Task, estimate_fisher, weight_sites
from wquant.errors import BudgetError, ParameterError, SpecError
from wquant.evaluate import kl_terms, token_windows
from wquant.formats import parse_spec, quantize
from wquant.models import QuantizeConfig, model_bits, quantize_model, sentence_embeddings
from wquant.validation import check_positive

Weighting = Literal["mean", "diag"]
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
    """Candidate spec strings: each template with `{b}` once per bit width, others as they are; validated."""
    if not formats:
        raise ParameterError("give at least one candidate format")
    out: list[str] = []
    for template in formats:
        specs = [template.replace("{b}", _number(b)) for b in bits] if "{b}" in template else [template]
        for spec in specs:
            try:
                parsed = parse_spec(spec).to_string()
            except SpecError as exc:
                raise SpecError(f"candidate format {spec!r} (from {template!r}): {exc}") from None
            if parsed not in out:
                out.append(parsed)
    return tuple(out)


@dataclass(frozen=True)
class Candidate:
    """One measured way to store a tensor."""

    source: str  # the candidate spec as asked for (a budget spec before its step was found)
    spec: str  # the concrete spec that reproduces these exact bits
    bits: int
    sq_error: float  # ‖δ‖²
    weighted_error: float  # Σ F_ii δ_i²


@dataclass(frozen=True)
class TensorCandidates:
    name: str
    numel: int
    fisher_mean: float
    rms: float
    candidates: tuple[Candidate, ...]

    def cost(self, c: Candidate, weighting: Weighting) -> float:
        """Predicted ΔKL of storing this tensor as `c`."""
        return 0.5 * (self.fisher_mean * c.sq_error if weighting == "mean" else c.weighted_error)


@dataclass(frozen=True)
class CandidateTable:
    """Every tensor's measured candidates, plus the bits the allocation cannot change."""

    tensors: tuple[TensorCandidates, ...]
    fixed_bits: int  # unquantized parameters at their dtype width
    params: int  # every distinct parameter of the model
    targets: tuple[str, ...]
    mode: str  # Fisher mode the costs came from

    def min_bits_per_param(self) -> float:
        return (self.fixed_bits + sum(min(c.bits for c in t.candidates) for t in self.tensors)) / self.params

    def max_bits_per_param(self) -> float:
        return (self.fixed_bits + sum(max(c.bits for c in t.candidates) for t in self.tensors)) / self.params


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
            q = quantize(w, spec, name=site.name)
            delta_sq = (q.dequantize().float() - w).square()
            cands.append(
                Candidate(spec, q.spec.to_string(), q.bits(), float(delta_sq.double().sum()),
                          float((delta_sq.double() * diag.double()).sum()))
            )  # fmt: skip
        rows.append(TensorCandidates(site.name, w.numel(), summary.fisher_mean, summary.rms, tuple(cands)))
    fixed, params = _fixed_bits(model, {id(s.module.weight) for s in sites})
    return CandidateTable(tuple(rows), fixed, params, tuple(targets), fisher.mode)


@dataclass(frozen=True)
class TensorPlan:
    name: str
    numel: int
    fisher_mean: float
    rms: float
    continuous_bits: float  # the closed form's b_t (all-in bits/param of this tensor)
    spec: str
    bits: int
    sq_error: float
    predicted_kl: float

    @property
    def bits_per_param(self) -> float:
        return self.bits / self.numel

    @property
    def module(self) -> str:
        return self.name.removesuffix(".weight")


@dataclass(frozen=True)
class Plan:
    """A format per tensor; bits are exact stored bits, so `bits_per_param` is what `model_bits` will report."""

    budget: float
    tensors: tuple[TensorPlan, ...]
    fixed_bits: int
    params: int
    targets: tuple[str, ...]
    weighting: str
    mode: str

    @property
    def total_bits(self) -> int:
        return self.fixed_bits + sum(t.bits for t in self.tensors)

    @property
    def bits_per_param(self) -> float:
        return self.total_bits / self.params

    @property
    def predicted_kl(self) -> float:
        return sum(t.predicted_kl for t in self.tensors)

    def quantize_config(self) -> QuantizeConfig:
        """Exactly the planned tensors, each with its concrete spec (module paths escaped as literal globs)."""
        paths = tuple(glob.escape(t.module) for t in self.tensors)
        return QuantizeConfig(
            format=self.tensors[0].spec,
            targets=self.targets,
            include=paths,
            overrides=tuple((p, t.spec) for p, t in zip(paths, self.tensors, strict=True)),
        )

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "bits_per_param": self.bits_per_param}, indent=1)

    @staticmethod
    def from_json(text: str) -> Plan:
        try:
            data = json.loads(text)
            data.pop("bits_per_param", None)
            tensors = tuple(TensorPlan(**t) for t in data.pop("tensors"))
            return Plan(tensors=tensors, **{**data, "targets": tuple(data["targets"])})
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise ParameterError(f"plan JSON does not parse ({exc})") from None


def _closed_form(table: CandidateTable, budget: float) -> tuple[float, ...]:
    n = [t.numel for t in table.tensors]
    mean_bits = (budget * table.params - table.fixed_bits) / sum(n)
    return closed_form_bits(n, [t.rms for t in table.tensors], [t.fisher_mean for t in table.tensors], mean_bits).bits


def _plan(table: CandidateTable, budget: float, chosen: Sequence[int], weighting: Weighting) -> Plan:
    continuous = _closed_form(table, budget)
    rows = []
    for t, i, b in zip(table.tensors, chosen, continuous, strict=True):
        c = t.candidates[i]
        rows.append(
            TensorPlan(t.name, t.numel, t.fisher_mean, t.rms, b, c.spec, c.bits, c.sq_error, t.cost(c, weighting))
        )
    return Plan(budget, tuple(rows), table.fixed_bits, table.params, table.targets, weighting, table.mode)


def allocate(table: CandidateTable, budget: float, weighting: Weighting = "mean") -> Plan:
    """The plan with measured all-in bits/param ≤ budget that minimises the predicted KL (allocate.py)."""
    check_positive(budget, "budget")
    limit = math.floor(budget * table.params) - table.fixed_bits
    lowest = table.min_bits_per_param()
    if limit < sum(min(c.bits for c in t.candidates) for t in table.tensors):
        raise BudgetError(
            f"budget {budget} bits/param is below the cheapest candidate formats: the minimum achievable is "
            f"{lowest:.4f} bits/param all-in (unquantized parameters cost {table.fixed_bits / table.params:.4f}); "
            f"raise the budget or add a smaller format"
        )
    options = [[Option(c.bits, t.cost(c, weighting)) for c in t.candidates] for t in table.tensors]
    return _plan(table, budget, solve_budget(options, limit), weighting)


def uniform_plan(table: CandidateTable, spec: str, weighting: Weighting = "mean") -> Plan:
    """Every tensor in one candidate format (the baseline the allocation is compared with)."""
    wanted = parse_spec(spec).to_string()
    chosen = []
    for t in table.tensors:
        match = [i for i, c in enumerate(t.candidates) if c.source == wanted]
        if not match:
            raise ParameterError(f"{spec!r} is not among the measured candidates")
        chosen.append(match[0])
    plan = _plan(table, 0.0, chosen, weighting)
    return replace(plan, budget=plan.bits_per_param)  # its own size is its budget; closed form kept for reference


def advise(
    model: nn.Module, tokenizer: Any, task: Task, calibration_text: str, config: AdviseConfig
) -> tuple[Plan, CandidateTable, FisherEstimate]:
    """Fisher on the calibration text → measured candidates → the exact-budget plan."""
    fisher = estimate_fisher(model, tokenizer, calibration_text, task, config.fisher)
    table = measure_candidates(model, fisher, config.formats, config.bits, targets=config.fisher.targets)
    return allocate(table, config.budget, config.weighting), table, fisher


def apply_plan(model: nn.Module, plan: Plan) -> nn.Module:
    """Quantize `model` in place with the plan and check that its measured bits are the planned bits."""
    quantize_model(model, plan.quantize_config())
    measured = model_bits(model)
    if measured.bits != plan.total_bits or measured.params != plan.params:
        raise BudgetError(
            f"applied model stores {measured.bits} bits over {measured.params} params, the plan said "
            f"{plan.total_bits} over {plan.params}; was the plan made for another model?"
        )
    return model


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
