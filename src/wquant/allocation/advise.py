"""Advice: measure every candidate format on every tensor, measure what each tensor does to the output, allocate
at a budget, and ship the allocation only where it beats the best uniform plan.

The solver's bit total *is* the applied model's total (exact stored bits, all-in), so the plan lands on the
budget exactly as far as the candidates' bit sizes allow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from wquant.allocation.allocate import allocate
from wquant.allocation.fisher import FisherConfig, FisherEstimate, Task, calibration_texts, estimate_fisher
from wquant.allocation.plan import WEIGHTINGS, Candidate, CandidateTable, Plan, TensorCandidates, Weighting
from wquant.allocation.probe import CausalProbe, EncoderProbe, OutputProbe, dequantized, substituted
from wquant.allocation.sensitivity import Decision, decide, measure_sensitivity
from wquant.errors import BudgetError, ParameterError, SpecError, TensorError
from wquant.formats import parse_spec, quantize
from wquant.formats.grids import UniformGrid
from wquant.formats.spec import GGUF_LADDER, fallback_spec
from wquant.models import weight_sites
from wquant.validation import check_int_range, check_positive

#: Candidate families: an entropy-coded uniform grid (continuous bits) and a fixed-rate int grid.
DEFAULT_FORMATS = ("uniform@{b}/tensor:rms:bf16+coded", "int{b}/block64:absmax:bf16")
DEFAULT_BITS = (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
#: Bits/param around the budget's per-tensor bits at which every tensor's sensitivity is measured.
ANCHOR_OFFSETS = (-1.0, 1.0)


@dataclass(frozen=True)
class AdviseConfig:
    """Budget (all-in model bits/param) and the candidate formats: templates with `{b}` expanded over `bits`.

    weighting: "measured" (sensitivities measured on `probe` calibration texts/windows, then the plan checked
    against the best uniform plan) or the Fisher proxy alone, "mean" / "diag".
    """

    budget: float
    formats: tuple[str, ...] = DEFAULT_FORMATS
    bits: tuple[float, ...] = DEFAULT_BITS
    weighting: Weighting = "measured"
    fisher: FisherConfig = FisherConfig()
    probe: int = 16  # calibration texts (encoders) or windows (causal LMs) the distortions are measured on

    def __post_init__(self) -> None:
        check_positive(self.budget, "budget")
        check_int_range(self.probe, "probe", 2)
        object.__setattr__(self, "formats", tuple(self.formats))
        object.__setattr__(self, "bits", tuple(float(b) for b in self.bits))
        if self.weighting not in WEIGHTINGS:
            raise ParameterError(f"weighting {self.weighting!r} unknown; valid: {', '.join(WEIGHTINGS)}")
        expand_formats(self.formats, self.bits)  # fail early on a bad template


def _number(b: float) -> str:
    return str(int(b)) if float(b).is_integer() else f"{b:g}"


def _coded_budget(spec: str) -> bool:
    parsed = parse_spec(spec)
    return isinstance(parsed.element, UniformGrid) and parsed.element.target_bits is not None


def ladder_step(bits: float) -> float:
    """The step of an RMS-scaled uniform grid that codes a unit Gaussian at about `bits` (ECSQ high-rate law,
    step = √(2πe)·2^-b): one coding pass instead of a budget search, for ladder candidates."""
    return float(f"{math.sqrt(2 * math.pi * math.e) * 2.0**-bits:.6g}")


def expand_families(formats: Sequence[str], bits: Sequence[float]) -> tuple[tuple[str, str], ...]:
    """(family, spec) of every candidate: each template with `{b}` once per bit width, others as they are.

    `gguf` is the ladder of GGUF types (Q2_K … Q8_0), one family.
    A coded budget template (`uniform@{b}/...+coded`) is a ladder, not a set of budgets: it expands to fixed
    steps at about b bits (`ladder_step`) for every b and every midpoint between consecutive bs, since a coded
    grid's bits are continuous; the exact-budget grid is added by `with_budget_candidates`.
    """
    if not formats:
        raise ParameterError("give at least one candidate format")
    out: list[tuple[str, str]] = []
    ladder = sorted(set(bits) | {(a + b) / 2 for a, b in zip(sorted(bits), sorted(bits)[1:], strict=False)})
    for template in formats:
        if template.strip().lower() == "gguf":  # the ladder of GGUF types, one family
            specs = list(GGUF_LADDER)
        elif "{b}" not in template:
            specs = [template]
        else:
            specs = [template.replace("{b}", _number(b)) for b in bits]
            try:
                coded = _coded_budget(specs[0])
            except SpecError:
                coded = False
            if coded:
                step = template.replace("uniform@{b}", "uniform{s}")
                if "{s}" not in step:
                    raise SpecError(f"candidate format {template!r}: write the coded ladder as uniform@{{b}}/...+coded")
                specs = [step.replace("{s}", f"{ladder_step(b):g}") for b in ladder]
        for spec in specs:
            try:
                parsed = parse_spec(spec).to_string()
            except SpecError as exc:
                raise SpecError(f"candidate format {spec!r} (from {template!r}): {exc}") from None
            if parsed not in [s for _, s in out]:
                out.append((template, parsed))
    return tuple(out)


def expand_formats(formats: Sequence[str], bits: Sequence[float]) -> tuple[str, ...]:
    """Candidate spec strings (`expand_families` without the family), validated."""
    return tuple(spec for _, spec in expand_families(formats, bits))


def _fixed_bits(model: nn.Module, allocated: set[int]) -> tuple[int, int]:
    fixed, params = 0, 0
    for p in model.parameters():  # deduplicated, as model_bits counts
        params += p.numel()
        if id(p) not in allocated:
            fixed += p.numel() * p.element_size() * 8
    return fixed, params


def _candidate(w: torch.Tensor, diag: torch.Tensor, spec: str, family: str, name: str) -> Candidate:
    try:
        q = quantize(w, spec, name=name)
    except TensorError:  # rows without whole super-blocks: llama.cpp's fallback type, if there is one
        fallback = fallback_spec(spec, tuple(w.shape))
        if fallback is None:
            raise
        q = quantize(w, fallback, name=name)
    delta_sq = (q.dequantize().float() - w).square().double()
    return Candidate(spec, q.spec.to_string(), q.bits(), float(delta_sq.sum()), float((delta_sq * diag).sum()),
                     family)  # fmt: skip


def measure_candidates(
    model: nn.Module,
    fisher: FisherEstimate,
    formats: Sequence[str] = DEFAULT_FORMATS,
    bits: Sequence[float] = DEFAULT_BITS,
    *,
    targets: tuple[str, ...] = ("linear", "embedding"),
    names: Collection[str] | None = None,
) -> CandidateTable:
    """Quantize every target tensor with every candidate; record exact bits and (Fisher-weighted) errors.

    names: only these weights are allocated (the others stay unquantized and count in the fixed bits).
    """
    families = expand_families(formats, bits)
    wanted = set(fisher.diagonal) if names is None else set(fisher.diagonal) & set(names)
    sites = [s for s in weight_sites(model, targets) if s.name in wanted]
    if not sites:
        raise ParameterError("no weight of the model has a Fisher estimate; estimate it on this model")
    rows = []
    for site in sites:
        w = site.weight().float().contiguous()
        diag = fisher.diagonal[site.name].double()
        summary = fisher.tensor(site.name)
        cands = tuple(_candidate(w, diag, spec, family, site.name) for family, spec in families)
        rows.append(TensorCandidates(site.name, w.numel(), summary.fisher_mean, summary.rms, cands))
    fixed, params = _fixed_bits(model, {id(s.module.weight) for s in sites})
    return CandidateTable(tuple(rows), fixed, params, tuple(targets), fisher.mode)


def budget_spec(template: str, table: CandidateTable, budget: float) -> str:
    """The coded template at the per-tensor bits of a uniform plan that lands on `budget` (floored to 1e-4)."""
    per_tensor = math.floor(table.per_tensor_bits(budget) * 1e4) / 1e4
    if per_tensor <= 0:
        raise BudgetError(f"a budget of {budget} bits/param leaves nothing for the quantized tensors; raise it")
    return parse_spec(template.replace("{b}", _number(per_tensor))).to_string()


def _step_for(bits: float, ladder: Sequence[tuple[float, float]]) -> float:
    """Step expected to give `bits`, from the tensor's own (step, bits/param) ladder points: log2 step is close
    to linear in bits (bits ≈ h − log2 step), so interpolate there and extrapolate with slope −1."""
    pts = sorted(ladder, key=lambda p: p[1])
    below = [p for p in pts if p[1] <= bits]
    above = [p for p in pts if p[1] > bits]
    if below and above:
        (s0, b0), (s1, b1) = below[-1], above[0]
        return math.exp2(math.log2(s0) + (bits - b0) * (math.log2(s1) - math.log2(s0)) / (b1 - b0))
    s0, b0 = (below or above)[-1 if below else 0]
    return s0 * math.exp2(b0 - bits)


def _budget_candidate(
    w: torch.Tensor, diag: torch.Tensor, template: str, bits: float, ladder: Sequence[tuple[float, float]], name: str
) -> Candidate:
    """The coded grid meeting `bits` bits/param within 0.5 % (as `uniform@bits` does), found from a step guessed
    off the ladder and refined on the measured size (2-3 coding passes instead of a bisection's ~10); after
    four misses the formats' own budget search decides."""
    source = parse_spec(template.replace("{b}", _number(bits))).to_string()
    step = _step_for(bits, ladder)
    for _ in range(4):
        spec = parse_spec(template.replace("uniform@{b}", f"uniform{step:.6g}")).to_string()
        c = _candidate(w, diag, spec, template, name)
        got = c.bits / w.numel()
        if bits * (1 - BUDGET_TOLERANCE) <= got <= bits:
            return replace(c, source=source)
        step *= math.exp2(got - bits * (1 - BUDGET_TOLERANCE / 4))  # one bit more costs half the step
    return replace(_candidate(w, diag, source, template, name), source=source)


#: How far under its target the exact-budget coded grid may land (the formats' budget search uses the same).
BUDGET_TOLERANCE = 0.005


def with_budget_candidates(
    model: nn.Module, table: CandidateTable, fisher: FisherEstimate, budgets: Sequence[float]
) -> CandidateTable:
    """Add, for every coded family and budget, the grid at exactly the uniform plan's per-tensor bits to every
    tensor, so the best uniform plan at the budget is itself a candidate of the allocation. A tensor too small
    to meet that size (its table alone costs more) gets its largest ladder rung that fits instead."""
    families = {c.family for t in table.tensors for c in t.candidates}
    coded = [f for f in families if "{b}" in f and _coded_budget(f.replace("{b}", "4"))]
    sites = {s.name: s for s in weight_sites(model, table.targets)}
    rows = []
    for t in table.tensors:
        w = sites[t.name].weight().float().contiguous()
        diag = fisher.diagonal[t.name].double()
        extra: list[Candidate] = []
        for family in sorted(coded):
            ladder = [(parse_spec(c.spec).element.step, c.bits / t.numel) for c in t.candidates if c.family == family]
            for budget in budgets:
                source = budget_spec(family, table, budget)
                if any(c.source == source for c in (*t.candidates, *extra)):
                    continue
                target = parse_spec(source).element.target_bits
                try:
                    extra.append(_budget_candidate(w, diag, family, target, ladder, t.name))
                except BudgetError:  # too small to meet it (table and container): its largest fitting rung
                    rungs = [c for c in t.candidates if c.family == family]
                    fits = [c for c in rungs if c.bits <= target * t.numel] or [min(rungs, key=lambda c: c.bits)]
                    extra.append(replace(max(fits, key=lambda c: c.bits), source=source))
        rows.append(replace(t, candidates=(*t.candidates, *extra)))
    return replace(table, tensors=tuple(rows))


def calibration_probe(
    model: nn.Module, tokenizer: Any, task: Task, calibration_text: str, config: AdviseConfig
) -> OutputProbe:
    """The probe sensitivities are measured on: the first `config.probe` calibration texts or windows."""
    if task == "causal-lm":
        return CausalProbe(model, tokenizer, calibration_text, window=config.fisher.window, max_windows=config.probe)
    texts = calibration_texts(calibration_text, config.probe)
    if len(texts) < 2:
        raise ParameterError("the calibration text has fewer than 2 paragraphs to measure sensitivities on")
    return EncoderProbe(model, tokenizer, texts, max_length=config.fisher.window)


def anchor_levels(table: CandidateTable, budget: float) -> tuple[float, ...]:
    """Bits/param at which sensitivities are measured: the uniform plan's per-tensor bits + ANCHOR_OFFSETS."""
    base = table.per_tensor_bits(budget)
    return tuple(base + offset for offset in ANCHOR_OFFSETS)


@dataclass(frozen=True, eq=False)
class Advice:
    """What `advise` found: the plan to ship, the measured candidates, the Fisher, and (with measured
    sensitivities) the decision between the allocation and the uniform plans."""

    plan: Plan
    table: CandidateTable
    fisher: FisherEstimate
    decision: Decision | None = None


def advise(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    calibration_text: str,
    config: AdviseConfig,
    *,
    fisher: FisherEstimate | None = None,
    names: Collection[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> Advice:
    """Fisher on the calibration text → measured candidates → measured sensitivities → the exact-budget plan,
    checked against the best uniform plan at no more bits (weighting "measured"; the Fisher proxy alone
    otherwise). fisher: a Fisher already estimated on this model and text (it is not re-estimated)."""
    if fisher is None:
        fisher = estimate_fisher(model, tokenizer, calibration_text, task, config.fisher)
    table = measure_candidates(model, fisher, config.formats, config.bits, targets=config.fisher.targets, names=names)
    if config.weighting != "measured":
        return Advice(allocate(table, config.budget, config.weighting), table, fisher)
    table = with_budget_candidates(model, table, fisher, [config.budget])
    probe = calibration_probe(model, tokenizer, task, calibration_text, config)
    table = measure_sensitivity(model, table, probe, anchor_levels(table, config.budget), log=log)
    decision = decide(model, table, probe, config.budget)
    return Advice(decision.shipped.plan, table, fisher, decision)


# ---------------------------------------------------------------------------------------------- checking


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
