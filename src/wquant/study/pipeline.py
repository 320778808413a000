"""`wquant study`: answer "how should I quantize this model at B bits/param?" — profile the weights, allocate
formats to tensors on measured sensitivities, check the plan against the best uniform plan, evaluate every
candidate on held-out text, compare formats against R(D), ask the theory, and write a decision document.

Every stage stores its result as JSON under OUT/stages/ with a fingerprint of its inputs; a rerun with the
same inputs loads finished stages instead of recomputing them, so an interrupted study resumes.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wquant import __version__
from wquant.errors import ConvergenceError, ParameterError
from wquant.formats import quantize
from wquant.formats.compare import bound_samples
from wquant.formats.rd_bounds import gap_to_bound_bits
from wquant.io import check_writable_dir, write_atomic
from wquant.study.profile import profile_tensor
from wquant.study.sentences import CALIBRATION, EVALUATION

STAGES = ("profile", "plan", "evaluate", "formats", "theory")
THEORY_BITS = (2, 3, 4, 5, 6)
MIN_STUDIED_NUMEL = 2**12  # smaller tensors (biases of embeddings, token types) stay unquantized
MIN_BOUND_SAMPLES = 2**14  # below this the empirical R(D) says more about the sample than the law
COMPARE_NUMEL = 2**18  # formats are compared on at most this many values of a tensor (whole rows, seeded)
RD_TENSORS = 12  # tensors (evenly spaced through the model) whose formats are also compared with their own R(D)
WIDTH_SAMPLES = 2**14  # values per layer the MSE-optimal clipping width is measured on (seeded)
#: Candidate families the allocation chooses from: the coded uniform grid (continuous bits, a ladder), the
#: fixed-rate int grid, and the peers' 4-bit formats as wquant stores them bit-exactly.
DEFAULT_FAMILIES = ("uniform@{b}/tensor:rms:bf16+coded", "int{b}/block64:absmax:bf16", "nf4", "mxfp4")
#: Budgets around the requested one at which the allocation is also solved and evaluated (its curve).
CURVE_OFFSETS = (-1.0, -0.5, 0.0, 0.5, 1.0)
#: Uniform plans within this many bits/param of the budget are evaluated for the Pareto plot.
PARETO_RANGE = 1.0


@dataclass(frozen=True)
class StudyConfig:
    """What to study. model: a local Hugging Face folder or 'minilm'; text / calib: evaluation and calibration
    text files (default: wquant's built-in sentences, one half each); formats: the candidate families (`{b}`
    templates or fixed specs) the allocation may choose from."""

    model: str = "minilm"
    budget: float = 4.0
    text: str | None = None
    max_texts: int = 200
    calib: str | None = None
    seed: int = 0
    bound_samples: int = 2**16
    formats: tuple[str, ...] = DEFAULT_FAMILIES
    probe: int = 32  # calibration texts (windows for causal LMs) the sensitivities are measured on

    def __post_init__(self) -> None:
        if not (1.0 <= self.budget <= 16.0):
            raise ParameterError(f"budget must be in [1, 16] bits/param (all-in), got {self.budget}")
        if self.max_texts < 2:
            raise ParameterError(f"max_texts must be at least 2, got {self.max_texts}")
        if self.probe < 2:
            raise ParameterError(f"probe must be at least 2 texts, got {self.probe}")
        object.__setattr__(self, "formats", tuple(self.formats))
        if not self.formats:
            raise ParameterError("give at least one candidate format family")

    @property
    def element_bits(self) -> int:
        return max(2, min(8, int(round(self.budget))))

    @property
    def ladder_bits(self) -> tuple[float, ...]:
        """Bit widths the `{b}` templates expand over: whole bits within 2 of the budget, in [2, 8]."""
        low, high = max(2, math.floor(self.budget) - 2), min(8, math.ceil(self.budget) + 2)
        return tuple(float(b) for b in range(low, max(low, high) + 1))


def check_inputs(config: StudyConfig) -> None:
    """Refuse, before any work, text files that are missing or the same file for calibration and evaluation."""
    from wquant.data import read_text

    for path in (config.text, config.calib):
        if path is not None:
            read_text(path)  # refuses a missing, unreadable or non-UTF-8 file with its own message
    if config.text is not None and config.calib is not None:
        a, b = Path(config.text), Path(config.calib)
        same = a.resolve() == b.resolve() or _digest(a) == _digest(b)
        if same:
            raise ParameterError(
                f"--calib and --text are the same text ({b.name}); calibrate on one text and evaluate on another, "
                "or the evaluation only measures how well the plan fits its own calibration"
            )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class StageRun:
    name: str
    seconds: float
    cached: bool


class StageCache:
    """JSON results per stage, keyed by a fingerprint of everything the stage depends on."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def load(self, name: str, fingerprint: str) -> Any | None:
        path = self.folder / f"{name}.json"
        if not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # a damaged cache entry is recomputed, never trusted
        return stored.get("result") if stored.get("fingerprint") == fingerprint else None

    def save(self, name: str, fingerprint: str, result: Any) -> None:
        write_atomic(self.folder / f"{name}.json", json.dumps({"fingerprint": fingerprint, "result": result}))


def fingerprint(*parts: Any) -> str:
    blob = json.dumps([__version__, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def weight_tensors(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Every Linear and Embedding weight the study quantizes (the Parameters themselves), by module path."""
    from wquant.models import weight_sites

    out = [(s.path, s.module.weight) for s in weight_sites(model) if s.module.weight.numel() >= MIN_STUDIED_NUMEL]
    if not out:
        raise ParameterError("the model has no Linear or Embedding weights to study")
    return out


def display_name(model: str, model_dir: Path) -> str:
    """The model's name for the report: the embedded model's published name, else its folder's name (never a
    path of this machine)."""
    from wquant.models import MINILM

    if str(model).strip().lower() == MINILM:
        return "all-MiniLM-L6-v2"
    return Path(model_dir).resolve().name or "model"


def candidate_formats(bits: int, family: str) -> list[tuple[str, str]]:
    """(label, spec) of the formats compared on every tensor; the cube-root grid follows the tensor's fit."""
    crd = "crd-normal" if family == "normal" else "crd-laplace" if family == "laplace" else f"crd-t{family[2:]}"
    if family.startswith("t:") and float(family[2:]) <= 2.5:
        crd = "crd-laplace"
    specs = [
        ("int scale+zero g64", f"int{bits}:unsigned/block64:minmax:bf16"),
        ("int absmax g64", f"int{bits}/block64:absmax:bf16"),
        ("cube-root of fitted law, g64", f"{crd}:{bits}/block64:absmax:bf16"),
        ("Lloyd-Max per tensor", f"lloydmax:{bits}/tensor:rms:bf16"),
        ("coded uniform (ECSQ), same step", f"uniform{_ecsq_step(bits):g}/tensor:rms:bf16+coded"),
    ]
    return specs + ([("NF4 (bnb layout)", "nf4"), ("MXFP4", "mxfp4")] if bits == 4 else [])


def _ecsq_step(bits: float) -> float:
    from wquant.allocation import ladder_step

    return ladder_step(bits)


def stage_profile(model: nn.Module, config: StudyConfig, tick: Callable[[], None]) -> list[dict[str, Any]]:
    rows = []
    for name, weight in weight_tensors(model):
        rows.append(dataclasses.asdict(profile_tensor(name, weight.detach(), seed=config.seed)))
        tick()
    return rows


def stage_formats(
    model: nn.Module, profiles: list[dict[str, Any]], config: StudyConfig, tick: Callable[[], None]
) -> list[dict[str, Any]]:
    """Each tensor × each candidate: all-in bits/param, relative MSE, and (on RD_TENSORS of them: Blahut–Arimoto
    is the cost) extra bits over the tensor's own R(D)."""
    families = {p["name"]: p["family"] for p in profiles}
    tensors = weight_tensors(model)
    bounded = {round(i * (len(tensors) - 1) / max(1, RD_TENSORS - 1)) for i in range(min(RD_TENSORS, len(tensors)))}
    rows = []
    for index, (name, weight) in enumerate(tensors):
        w = weight.detach().float()
        if w.numel() > COMPARE_NUMEL:  # a seeded subset of whole rows keeps per-row and per-block scales honest
            keep = max(1, COMPARE_NUMEL // (w.numel() // w.shape[0]))
            gen = torch.Generator().manual_seed(config.seed)
            w = w[torch.randperm(w.shape[0], generator=gen)[:keep].sort().values]
        energy = float(w.square().sum())
        samples = bound_samples(w)
        for label, spec in candidate_formats(config.element_bits, families[name]):
            q = quantize(w, spec, name=name)
            rel = float((q.dequantize() - w).square().sum()) / energy
            bpp = q.bits_per_param()
            gap = _gap_bits(bpp, rel, samples) if index in bounded else float("nan")
            rows.append({"tensor": name, "family": label, "spec": q.spec.to_string(), "numel": w.numel(),
                         "bits_per_param": bpp, "rel_mse": rel, "gap_bits": gap})  # fmt: skip
        tick()
    return rows


def _gap_bits(bits: float, rel_mse: float, samples: np.ndarray) -> float:
    """Bits above the tensor's empirical R(D); NaN when it is not meaningful (tiny tensor) or BA does not settle."""
    if rel_mse <= 0 or samples.size < MIN_BOUND_SAMPLES:
        return float("nan")
    try:
        return gap_to_bound_bits(bits, rel_mse, samples)
    except ConvergenceError:
        return float("nan")


def measured_optimal_width(weight: torch.Tensor, bits: int, widths: np.ndarray, seed: int) -> float:
    """ω (in RMS units) minimising the MSE of a 2^b-level uniform grid on [-ω, ω] over the tensor's values."""
    values = weight.detach().reshape(-1).double()
    if values.numel() > WIDTH_SAMPLES:
        gen = torch.Generator().manual_seed(seed)
        values = values[torch.randperm(values.numel(), generator=gen)[:WIDTH_SAMPLES]]
    z = values / values.square().mean().sqrt()
    omega = torch.as_tensor(widths, dtype=torch.float64)[:, None]
    step = 2 * omega / (2**bits - 1)
    q = torch.round((z[None, :] + omega) / step).clamp(0, 2**bits - 1) * step - omega
    mse = (q - z[None, :]).square().mean(dim=1)
    return float(widths[int(torch.argmin(mse))])


def stage_theory(model: nn.Module, config: StudyConfig, tick: Callable[[], None]) -> dict[str, Any]:
    """Replica theory of the regression analogue (Fig. 4 setting) beside the clipping real layers prefer."""
    from wquant.theory.setting import RegressionSetting
    from wquant.theory.sweeps import optimal_width, phase_diagram

    setting = RegressionSetting(alpha=1.4, sigma=0.01, lam=0.01, beta=20.0)
    widths = np.linspace(0.25, 7.0, 28)
    diagram = phase_diagram(setting, range(1, 7), widths)
    tick()
    predicted = {b: optimal_width(setting, b) for b in THEORY_BITS}
    tick()
    grid = np.linspace(0.5, 8.0, 76)
    linear = [(n, w) for n, w in weight_tensors(model) if w.dim() == 2 and "embed" not in n]
    measured = {b: [measured_optimal_width(w, b, grid, config.seed) for _, w in linear] for b in THEORY_BITS}
    tick()
    return {
        "setting": dataclasses.asdict(setting),
        "phase": {
            "bits": diagram.bits.tolist(),
            "widths": diagram.widths.tolist(),
            "at_value": np.nan_to_num(diagram.at_value, nan=1e9, posinf=1e9).tolist(),
            "gen_error": np.nan_to_num(diagram.gen_error, nan=-1.0).tolist(),
            "converged": diagram.converged.tolist(),
            "boundary": np.nan_to_num(diagram.boundary(), nan=-1.0).tolist(),
        },
        "optimal_width": [
            {
                "bits": b,
                "predicted": predicted[b],
                "measured_median": float(np.median(measured[b])),
                "measured_q25": float(np.quantile(measured[b], 0.25)),
                "measured_q75": float(np.quantile(measured[b], 0.75)),
            }
            for b in THEORY_BITS
        ],  # fmt: skip
    }


def _calibration(config: StudyConfig) -> list[str]:
    if config.calib is None:
        return list(CALIBRATION)
    from wquant.data import read_paragraphs

    return read_paragraphs(config.calib, limit=config.max_texts)


def _texts(config: StudyConfig) -> list[str]:
    if config.text is None:
        return list(EVALUATION)[: config.max_texts]
    from wquant.data import read_paragraphs

    return read_paragraphs(config.text, limit=config.max_texts)


def curve_budgets(config: StudyConfig, lowest: float) -> list[float]:
    """The budgets the allocation is solved at for its curve: the requested one and its neighbours that fit."""
    return sorted({round(config.budget + o, 4) for o in CURVE_OFFSETS if config.budget + o >= lowest})


def stage_plan(loaded: Any, config: StudyConfig, tick: Callable[[], None]) -> dict[str, Any]:
    """Fisher and candidates on calibration text, measured sensitivities, the allocation and the decision
    between it and the best uniform plan (`wquant.allocation.advise`), plus the allocation's curve."""
    from wquant.allocation import AdviseConfig, FisherConfig, advise, allocate

    calibration = "\n".join(_calibration(config))
    window = min(128, loaded.max_length)
    fisher_config = FisherConfig(seed=config.seed, window=window, min_tokens=min(256, window))
    advise_config = AdviseConfig(budget=config.budget, formats=config.formats, bits=config.ladder_bits,
                                 fisher=fisher_config, probe=config.probe)  # fmt: skip
    names = {f"{path}.weight" if path else "weight" for path, _ in weight_tensors(loaded.model)}
    advice = advise(loaded.model, loaded.tokenizer, loaded.task, calibration, advise_config, names=names)
    tick()
    table, decision = advice.table, advice.decision
    assert decision is not None
    curve = [
        {"budget": b, "plan": json.loads(allocate(table, b, "measured").to_json())}
        for b in curve_budgets(config, table.min_bits_per_param())
    ]
    proxy = allocate(table, config.budget, "mean")

    def contender(c: Any) -> dict[str, Any]:
        return {"label": c.label, "distortion": c.distortion, "plan": json.loads(c.plan.to_json())}

    return {
        "table": dataclasses.asdict(table),
        "decision": {
            "shipped": decision.shipped.label,
            "reason": decision.reason,
            "allocation": contender(decision.allocation),
            "uniform": [contender(c) for c in decision.uniform],
        },
        "curve": curve,
        "proxy": json.loads(proxy.to_json()),
        "fisher_mode": advice.fisher.mode,
        "probe_texts": config.probe,
    }


def _plan(data: dict[str, Any]) -> Any:
    from wquant.allocation import Plan

    return Plan.from_json(json.dumps(data))


def _table(data: dict[str, Any]) -> Any:
    from wquant.allocation import Candidate, CandidateTable, TensorCandidates

    rows = tuple(
        TensorCandidates(
            t["name"], t["numel"], t["fisher_mean"], t["rms"], tuple(Candidate(**c) for c in t["candidates"]),
            tuple(tuple(a) for a in t["anchors"]),
        )
        for t in data["tensors"]
    )  # fmt: skip
    return CandidateTable(rows, data["fixed_bits"], data["params"], tuple(data["targets"]), data["mode"])


def eval_probe(loaded: Any, config: StudyConfig) -> Any:
    """The probe every variant is scored with: held-out evaluation text, never the calibration text."""
    from wquant.allocation import CausalProbe, EncoderProbe

    texts = _texts(config)
    if loaded.task == "encoder":
        return EncoderProbe(loaded.model, loaded.tokenizer, texts, max_length=min(256, loaded.max_length))
    return CausalProbe(loaded.model, loaded.tokenizer, "\n".join(texts), window=min(128, loaded.max_length),
                       max_windows=64)  # fmt: skip


def shipped_plan(plan: dict[str, Any]) -> Any:
    """The Plan the decision shipped (the allocation or one uniform plan)."""
    decision = plan["decision"]
    if decision["shipped"] == decision["allocation"]["label"]:
        return _plan(decision["allocation"]["plan"])
    return _plan(next(c["plan"] for c in decision["uniform"] if c["label"] == decision["shipped"]))


def pareto_variants(plan: dict[str, Any], config: StudyConfig) -> list[tuple[str, str, Any]]:
    """(label, kind, Plan) of every variant the evaluation scores, the shipped plan first: the allocation along
    its curve, the Fisher proxy's plan, and every uniform plan within PARETO_RANGE of the budget."""
    from wquant.allocation import uniform_plan

    table = _table(plan["table"])
    decision = plan["decision"]
    variants: list[tuple[str, str, Any]] = []
    seen: set[tuple[int, tuple[str, ...]]] = set()

    def add(label: str, kind: str, p: Any) -> None:
        key = (p.total_bits, tuple(t.spec for t in p.tensors))
        if key not in seen:
            seen.add(key)
            variants.append((label, kind, p))

    shipped = shipped_plan(plan)
    kind = "allocation" if decision["shipped"] == decision["allocation"]["label"] else "uniform"
    add(f"wquant allocation at {config.budget:g}" if kind == "allocation" else decision["shipped"], kind, shipped)
    for point in plan["curve"]:
        add(f"wquant allocation at {point['budget']:g}", "allocation", _plan(point["plan"]))
    add("Fisher-proxy allocation (paper's rule)", "proxy", _plan(plan["proxy"]))
    for c in decision["uniform"]:
        add(c["label"], "uniform", _plan(c["plan"]))
    shared = set.intersection(*({c.source for c in t.candidates} for t in table.tensors))
    for source in sorted(shared):
        p = uniform_plan(table, source)
        if abs(p.bits_per_param - config.budget) <= PARETO_RANGE:
            add(f"uniform {source}", "uniform", p)
    return variants


def stage_evaluate(loaded: Any, plan: dict[str, Any], config: StudyConfig, tick: Callable[[], None]) -> dict[str, Any]:
    """Score every variant on the evaluation text (weights substituted in place, exact planned bits), then
    quantize a copy with the shipped plan for real and measure it end to end."""
    from wquant.allocation import measure_plans
    from wquant.evaluate import compare_causal, compare_encoders
    from wquant.models import model_bits, quantize_

    probe = eval_probe(loaded, config)
    variants = pareto_variants(plan, config)
    distortions = measure_plans(loaded.model, [p for _, _, p in variants], probe)
    rows = [
        {"variant": label, "kind": kind, "bits_per_param": p.bits_per_param, "distortion": d, "shipped": i == 0,
         "families": sorted({t.family for t in p.tensors})}
        for i, ((label, kind, p), d) in enumerate(zip(variants, distortions, strict=True))
    ]  # fmt: skip
    tick()
    shipped = shipped_plan(plan)
    start = time.perf_counter()
    model = copy.deepcopy(loaded.model)
    quantize_(model, shipped.quantize_config())
    shipped.check_applied(model)
    seconds = time.perf_counter() - start
    texts = _texts(config)
    if loaded.task == "encoder":
        result = compare_encoders(loaded.model, model, loaded.tokenizer, texts, max_length=min(256, loaded.max_length))
        metrics = {"mean_cosine": result.mean_cosine, "min_cosine": result.min_cosine,
                   "neighbour_agreement": result.neighbour_agreement}  # fmt: skip
    else:
        result = compare_causal(loaded.model, model, loaded.tokenizer, "\n".join(texts),
                                window=min(256, loaded.max_length))  # fmt: skip
        metrics = {
            "kl": result.kl,
            "perplexity": result.quantized.perplexity,
            "reference_perplexity": result.reference.perplexity,
            "top1_agreement": result.top1_agreement,
        }
    tick()
    return {
        "variants": rows,
        "applied": {"variant": rows[0]["variant"], "bits_per_param": model_bits(model).bits_per_param,
                    "reference_bits_per_param": model_bits(loaded.model).bits_per_param,
                    "quantize_seconds": seconds, **metrics},
        "task": loaded.task,
        "texts": len(texts),
    }  # fmt: skip


@dataclass(frozen=True)
class StudyResult:
    out: Path
    report: Path
    table: Path
    plan: Path
    stages: tuple[StageRun, ...]
    summary: Any  # wquant.study.summary.Summary


def run_study(
    config: StudyConfig, out: str | os.PathLike[str], *, force: bool = False, progress: bool = True
) -> StudyResult:
    """Run (or resume) every stage and write OUT/report.html, OUT/results.csv and OUT/plan.json."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from wquant.models import load_pretrained, resolve_model_dir
    from wquant.report.study_html import write_results_csv, write_study_report
    from wquant.study.summary import summarize

    out_dir = check_writable_dir(out)
    report = out_dir / "report.html"
    if report.exists() and not force:
        raise ParameterError(f"{report} exists; pass --force to replace it (cached stages are reused)")
    check_inputs(config)
    model_dir = resolve_model_dir(config.model)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".wquant-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ParameterError(f"cannot write to {out_dir}: {exc.strerror or exc}; choose another --out") from None
    torch.manual_seed(config.seed)
    digests = [_digest(Path(p)) if p else "builtin" for p in (config.text, config.calib)]
    base_key = [str(model_dir), digests, dataclasses.asdict(config)]
    cache = StageCache(out_dir / "stages")
    loaded = load_pretrained(model_dir)
    n_tensors = len(weight_tensors(loaded.model))
    results: dict[str, Any] = {}
    runs: list[StageRun] = []
    steps: dict[str, tuple[int, Callable[[Callable[[], None]], Any]]] = {
        "profile": (n_tensors, lambda tick: stage_profile(loaded.model, config, tick)),
        "plan": (1, lambda tick: stage_plan(loaded, config, tick)),
        "evaluate": (1, lambda tick: stage_evaluate(loaded, results["plan"], config, tick)),
        "formats": (n_tensors, lambda tick: stage_formats(loaded.model, results["profile"], config, tick)),
        "theory": (3, lambda tick: stage_theory(loaded.model, config, tick)),
    }
    columns = (TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        for name in STAGES:
            total, fn = steps[name]
            key = fingerprint(name, base_key, results.get("plan") if name == "evaluate" else None)
            task = bar.add_task(name, total=None if name == "evaluate" else total)
            start = time.perf_counter()
            cached = cache.load(name, key)
            if cached is None:
                cached = fn(lambda task=task: bar.advance(task))
                cache.save(name, key, cached)
                runs.append(StageRun(name, time.perf_counter() - start, False))
            else:
                runs.append(StageRun(name, 0.0, True))
            bar.update(task, total=total if name != "evaluate" else 1, completed=total if name != "evaluate" else 1)
            results[name] = cached
    summary = summarize(results, config, display_name(config.model, model_dir))
    plan_path = write_atomic(out_dir / "plan.json", summary.shipped_plan_json)
    table = write_results_csv(out_dir / "results.csv", results, summary, runs)
    write_study_report(report, config, summary, results, runs)
    return StudyResult(out_dir, report, table, plan_path, tuple(runs), summary)
