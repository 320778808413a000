"""A bit-allocation plan and the measured candidates it is chosen from.

Bits are measured, not modelled: every tensor is quantized with every candidate format and its exact stored
bits (`QuantizedTensor.bits()`) and error δ_t are recorded. The cost of a candidate is its output distortion:
"measured" (the tensor perturbed alone and the model's output distortion measured, `sensitivity.py`), or the
Fisher proxy ½ F̄_t ‖δ_t‖² ("mean", the paper's tensor-constant Fisher) or ½ Σ F_ii δ_i² ("diag"). The budget
is all-in, as `model_bits` counts it: unquantized parameters (norms, biases) cost their dtype width, tied
weights count once.
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from torch import nn

from wquant.errors import BudgetError, ParameterError
from wquant.models import QuantizeConfig, model_bits

Weighting = Literal["mean", "diag", "measured"]
WEIGHTINGS = ("mean", "diag", "measured")


@dataclass(frozen=True)
class Candidate:
    """One measured way to store a tensor."""

    source: str  # the candidate spec as asked for (a budget spec before its step was found)
    spec: str  # the concrete spec that reproduces these exact bits
    bits: int
    sq_error: float  # ‖δ‖²
    weighted_error: float  # Σ F_ii δ_i²
    family: str = ""  # the template it was expanded from (the spec itself for a plain candidate)
    distortion: float | None = None  # output distortion of this tensor alone in this format (sensitivity.py)


@dataclass(frozen=True)
class TensorCandidates:
    name: str
    numel: int
    fisher_mean: float
    rms: float
    candidates: tuple[Candidate, ...]
    anchors: tuple[tuple[float, float], ...] = ()  # measured (error, distortion) points of its sensitivity curve

    def cost(self, c: Candidate, weighting: Weighting) -> float:
        """Predicted output distortion of storing this tensor as `c`."""
        if weighting == "measured":
            if c.distortion is None:
                raise ParameterError(
                    f"{self.name}: no measured distortion for {c.spec}; run measure_sensitivity on the table first"
                )
            return c.distortion
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

    @property
    def measured(self) -> bool:
        """Whether every candidate carries a measured output distortion (weighting "measured" is possible)."""
        return all(c.distortion is not None for t in self.tensors for c in t.candidates)

    def budget_bits(self, budget: float) -> int:
        """Bits the allocated tensors may spend under an all-in budget (floor, so the plan never exceeds it)."""
        return math.floor(budget * self.params) - self.fixed_bits

    def per_tensor_bits(self, budget: float) -> float:
        """The bits/param every allocated tensor gets when they all get the same: the uniform plan's target."""
        return self.budget_bits(budget) / sum(t.numel for t in self.tensors)


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
    predicted_kl: float  # the cost the plan minimised: measured-curve distortion, or the Fisher proxy's ΔKL
    family: str = ""

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

    def quantize_config(self, method: Any = None) -> QuantizeConfig:
        """Exactly the planned tensors, each with its concrete spec (module paths escaped as literal globs).

        method: an algorithm config run on every tensor's planned format (e.g. GPTQConfig: the plan through
        GPTQ in one calibration walk); None rounds to nearest.
        """
        return QuantizeConfig.per_module(
            {glob.escape(t.module): t.spec if method is None else method.with_format(t.spec) for t in self.tensors},
            targets=self.targets,
        )

    def check_applied(self, model: nn.Module) -> None:
        """Refuse a model whose measured bits are not the planned bits (a plan made for another model)."""
        measured = model_bits(model)
        if measured.bits != self.total_bits or measured.params != self.params:
            raise BudgetError(
                f"applied model stores {measured.bits} bits over {measured.params} params, the plan said "
                f"{self.total_bits} over {self.params}; was the plan made for another model?"
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
