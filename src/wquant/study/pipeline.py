"""`wquant study`: profile a model's weights, compare formats against R(D), ask the theory, quantize at a
budget, evaluate, and write a self-contained report.

Every stage stores its result as JSON under OUT/stages/ with a fingerprint of its inputs; a rerun with the
same inputs loads finished stages instead of recomputing them, so an interrupted study resumes.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
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
from wquant.io import write_atomic
from wquant.study.profile import profile_tensor
from wquant.study.sentences import CALIBRATION, EVALUATION

STAGES = ("profile", "formats", "theory", "plan", "evaluate")
THEORY_BITS = (2, 3, 4, 5, 6)
MIN_STUDIED_NUMEL = 2**12  # smaller tensors (biases of embeddings, token types) stay unquantized
MIN_BOUND_SAMPLES = 2**14  # below this the empirical R(D) says more about the sample than the law
COMPARE_NUMEL = 2**20  # formats are compared on at most this many values of a tensor (whole rows, seeded)


@dataclass(frozen=True)
class StudyConfig:
    """What to study. model: a local Hugging Face folder or 'minilm'; text / calib: evaluation and calibration
    text files (default: wquant's built-in sentences, one half each)."""

    model: str = "minilm"
    budget: float = 4.0
    text: str | None = None
    max_texts: int = 200
    calib: str | None = None
    seed: int = 0
    bound_samples: int = 2**16

    def __post_init__(self) -> None:
        if not (1.0 <= self.budget <= 16.0):
            raise ParameterError(f"budget must be in [1, 16] bits/param (all-in), got {self.budget}")
        if self.max_texts < 2:
            raise ParameterError(f"max_texts must be at least 2, got {self.max_texts}")

    @property
    def element_bits(self) -> int:
        return max(2, min(8, int(round(self.budget))))


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


def candidate_formats(bits: int, family: str) -> list[tuple[str, str]]:
    """(label, spec) of the formats compared on every tensor; the cube-root grid follows the tensor's fit."""
    crd = "crd-normal" if family == "normal" else "crd-laplace" if family == "laplace" else f"crd-t{family[2:]}"
    if family.startswith("t:") and float(family[2:]) <= 2.5:
        crd = "crd-laplace"
    specs = [
        ("coded uniform (ECSQ)", f"uniform@{bits}/tensor:rms:bf16+coded"),
        ("int scale+zero g64", f"int{bits}:unsigned/block64:minmax:bf16"),
        ("int absmax g64", f"int{bits}/block64:absmax:bf16"),
        ("cube-root of fitted law, g64", f"{crd}:{bits}/block64:absmax:bf16"),
        ("Lloyd-Max per tensor", f"lloydmax:{bits}/tensor:rms:bf16"),
    ]
    return specs + ([("NF4 (bnb layout)", "nf4"), ("MXFP4", "mxfp4")] if bits == 4 else [])


def stage_profile(model: nn.Module, config: StudyConfig, tick: Callable[[], None]) -> list[dict[str, Any]]:
    rows = []
    for name, weight in weight_tensors(model):
        rows.append(dataclasses.asdict(profile_tensor(name, weight.detach(), seed=config.seed)))
        tick()
    return rows


def stage_formats(
    model: nn.Module, profiles: list[dict[str, Any]], config: StudyConfig, tick: Callable[[], None]
) -> list[dict[str, Any]]:
    """Each tensor × each candidate: all-in bits/param, relative MSE, and extra bits over the tensor's own R(D)."""
    families = {p["name"]: p["family"] for p in profiles}
    rows = []
    for name, weight in weight_tensors(model):
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
            gap = _gap_bits(bpp, rel, samples)
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
    if values.numel() > 2**16:
        gen = torch.Generator().manual_seed(seed)
        values = values[torch.randperm(values.numel(), generator=gen)[: 2**16]]
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


def uniform_coded_plan(model: nn.Module, config: StudyConfig) -> dict[str, Any]:
    """Every studied tensor on the entropy-coded uniform grid at one bits/param, chosen so that the quantized
    tensors plus every unquantized parameter (at its dtype width) fit the model-level budget."""
    tensors = weight_tensors(model)
    quantized_ids = {id(w) for _, w in tensors}
    params = {id(p): p for p in model.parameters()}
    unquantized_bits = sum(p.numel() * p.element_size() * 8 for i, p in params.items() if i not in quantized_ids)
    total = sum(p.numel() for p in params.values())
    quantized = sum(w.numel() for _, w in tensors)
    per_tensor = (config.budget * total - unquantized_bits) / quantized
    if per_tensor < 1.0:
        raise ParameterError(
            f"a {config.budget} bits/param budget leaves {per_tensor:.2f} bits for the quantized tensors once the "
            f"{unquantized_bits / total:.2f} bits/param of unquantized parameters are paid; raise the budget"
        )
    target = math.floor(per_tensor * 1e4) / 1e4
    spec = f"uniform@{target}/tensor:rms:bf16+coded"
    return {"rule": "one coded uniform grid for every tensor", "per_tensor_bits": target,
            "tensors": [{"tensor": n, "spec": spec} for n, _ in tensors]}  # fmt: skip


def stage_plan(loaded: Any, config: StudyConfig, tick: Callable[[], None]) -> dict[str, Any]:
    """Two plans at the budget: Fisher allocation over int grids (wquant.allocation) and uniform coded."""
    from wquant.allocation import AdviseConfig, advise

    calibration = "\n".join(_calibration(config))
    fisher_config = AdviseConfig(budget=config.budget).fisher
    fisher_config = dataclasses.replace(
        fisher_config,
        seed=config.seed,
        window=min(fisher_config.window, loaded.max_length),
        min_tokens=min(fisher_config.min_tokens, 256),
    )
    plan, _, _ = advise(loaded.model, loaded.tokenizer, loaded.task, calibration,
                        AdviseConfig(budget=config.budget, fisher=fisher_config))  # fmt: skip
    tick()
    return {"fisher": json.loads(plan.to_json()), "uniform": uniform_coded_plan(loaded.model, config)}


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


def stage_evaluate(loaded: Any, plan: dict[str, Any], config: StudyConfig) -> list[dict[str, Any]]:
    """Quantize copies of the model with the plan and with a conventional baseline; measure both."""
    from wquant.allocation import Plan
    from wquant.evaluate import compare_causal, compare_encoders
    from wquant.models import QuantizeConfig, model_bits, quantize_

    base = loaded.model
    b = config.element_bits
    uniform = plan["uniform"]
    fisher = Plan.from_json(json.dumps(plan["fisher"]))

    def per_module(specs: dict[str, str]) -> Callable[[nn.Module], nn.Module]:
        def apply(model: nn.Module) -> nn.Module:
            quantize_(model, QuantizeConfig.per_module({glob.escape(n): s for n, s in specs.items()}))
            return model

        return apply

    def fisher_plan(model: nn.Module) -> nn.Module:
        quantize_(model, fisher.quantize_config())
        fisher.check_applied(model)
        return model

    variants: dict[str, Callable[[nn.Module], nn.Module]] = {
        "Fisher allocation (int g64, 2-8 bits)": fisher_plan,
        "uniform allocation, coded uniform grid": per_module({t["tensor"]: t["spec"] for t in uniform["tensors"]}),
        f"baseline int{b} g64 (scale+zero)": per_module(
            {t["tensor"]: f"int{b}:unsigned/block64:minmax:bf16" for t in uniform["tensors"]}
        ),
    }
    texts = _texts(config)
    rows = []
    for label, apply in variants.items():
        start = time.perf_counter()
        model = apply(copy.deepcopy(base))
        seconds = time.perf_counter() - start
        bits = model_bits(model).bits_per_param
        ref_bits = model_bits(base).bits_per_param
        if loaded.task == "encoder":
            result = compare_encoders(base, model, loaded.tokenizer, texts, max_length=loaded.max_length)
            metrics = {"mean_cosine": result.mean_cosine, "min_cosine": result.min_cosine,
                       "neighbour_agreement": result.neighbour_agreement}  # fmt: skip
        else:
            result = compare_causal(base, model, loaded.tokenizer, "\n".join(texts))
            metrics = {k: v for k, v in dataclasses.asdict(result).items() if isinstance(v, int | float)}
        rows.append({"variant": label, "bits_per_param": bits, "reference_bits_per_param": ref_bits,
                     "quantize_seconds": seconds, **metrics})  # fmt: skip
    return rows


@dataclass(frozen=True)
class StudyResult:
    out: Path
    report: Path
    table: Path
    stages: tuple[StageRun, ...]


def run_study(
    config: StudyConfig, out: str | os.PathLike[str], *, force: bool = False, progress: bool = True
) -> StudyResult:
    """Run (or resume) every stage and write OUT/report.html and OUT/results.csv."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from wquant.models import load_pretrained, resolve_model_dir
    from wquant.report.study_html import write_results_csv, write_study_report

    out_dir = Path(out)
    report = out_dir / "report.html"
    if report.exists() and not force:
        raise ParameterError(f"{report} exists; pass --force to replace it (cached stages are reused)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".wquant-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ParameterError(f"cannot write to {out_dir}: {exc.strerror or exc}; choose another --out") from None
    torch.manual_seed(config.seed)
    model_dir = resolve_model_dir(config.model)
    text_digest = hashlib.sha256(Path(config.text).read_bytes()).hexdigest() if config.text else "builtin"
    base_key = [str(model_dir), text_digest, dataclasses.asdict(config)]
    cache = StageCache(out_dir / "stages")
    loaded = load_pretrained(model_dir)
    n_tensors = len(weight_tensors(loaded.model))
    results: dict[str, Any] = {}
    runs: list[StageRun] = []
    steps: dict[str, tuple[int, Callable[[Callable[[], None]], Any]]] = {
        "profile": (n_tensors, lambda tick: stage_profile(loaded.model, config, tick)),
        "formats": (n_tensors, lambda tick: stage_formats(loaded.model, results["profile"], config, tick)),
        "theory": (3, lambda tick: stage_theory(loaded.model, config, tick)),
        "plan": (1, lambda tick: stage_plan(loaded, config, tick)),
        "evaluate": (1, lambda tick: stage_evaluate(loaded, results["plan"], config)),
    }
    columns = (TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        for name in STAGES:
            total, fn = steps[name]
            key = fingerprint(name, base_key, results.get("plan") if name == "evaluate" else None)
            task = bar.add_task(name, total=total)
            start = time.perf_counter()
            cached = cache.load(name, key)
            if cached is None:
                cached = fn(lambda task=task: bar.advance(task))
                cache.save(name, key, cached)
                runs.append(StageRun(name, time.perf_counter() - start, False))
            else:
                runs.append(StageRun(name, 0.0, True))
            bar.update(task, completed=total)
            results[name] = cached
    table = write_results_csv(out_dir / "results.csv", results)
    write_study_report(report, config, str(model_dir), results, runs)
    return StudyResult(out_dir, report, table, tuple(runs))
