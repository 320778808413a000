"""What a study recommends, in numbers and in one sentence: the shipped plan, the best choices at the budget,
the Pareto front of everything evaluated, and the bits saved against NF4 and against the best uniform plan.

Pure functions of the stage results, shared by the report, results.csv and the CLI's closing summary, so the
three always say the same thing.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

#: The spec wquant stores NF4 in (bitsandbytes' layout: NF4 codes, fp32 absmax per 64): "vs NF4" means this.
NF4 = "nf4/block64:absmax:fp32"
TOP_CHOICES = 5
#: Bits/param a choice may exceed the budget by and still count as "at the budget" (coded plans land ≤ it).
BUDGET_SLACK = 1e-9


@dataclass(frozen=True)
class Saving:
    """Bits/param saved at equal distortion against a reference point, read off a curve (log-linear)."""

    reference: str
    reference_bits: float
    reference_distortion: float
    bits_at_equal: float  # the curve's bits at the reference's distortion
    bound: str  # "": interpolated; ">=": the curve's cheapest point is already better; "extrapolated"

    @property
    def bits(self) -> float:
        return self.reference_bits - self.bits_at_equal


@dataclass(frozen=True)
class Summary:
    model: str
    budget: float
    task: str
    metric: str  # what "distortion" is
    shipped: dict[str, Any]  # the evaluated row of the shipped plan
    choices: tuple[dict[str, Any], ...]  # best choices at the budget, best first
    front: tuple[dict[str, Any], ...]  # Pareto-optimal evaluated variants, by bits
    vs_nf4: Saving | None
    vs_uniform: Saving | None  # against the best uniform family's curve
    best_uniform: dict[str, Any] | None  # the best uniform variant at the budget
    reason: str  # why the shipped plan was chosen (calibration measurements)
    ships_as: str
    shipped_plan_json: str
    applied: dict[str, Any]

    def quality(self, distortion: float) -> str:
        return quality_text(self.task, distortion)

    @property
    def sentence(self) -> str:
        s = self.shipped
        parts = [f"Use {describe(s)}: {s['bits_per_param']:.3f} bits/param, {self.quality(s['distortion'])}"]
        if self.vs_nf4 is not None:
            v = self.vs_nf4
            word = "at least " if v.bound == ">=" else ""
            verb = "saves" if v.bits >= 0 else "costs"
            parts.append(f"{verb} {word}{abs(v.bits):.2f} bits/param vs NF4 at equal quality")
        return "; ".join(parts) + f"; ships as {self.ships_as}."


def quality_text(task: str, distortion: float) -> str:
    if task == "encoder":
        return f"mean cosine {1 - distortion:.4f} to the unquantized embeddings"
    return f"KL {distortion:.4g} nats/token to the unquantized model"


def describe(row: dict[str, Any]) -> str:
    """A choice in words: the allocation's families, or the one uniform format."""
    if row["kind"] == "uniform":
        return f"one format for every tensor, {row['variant'].removeprefix('uniform ')}"
    families = ", ".join(family_name(f) for f in row["families"])
    what = "wquant's per-tensor allocation" if row["kind"] == "allocation" else "the Fisher-proxy allocation"
    return f"{what} ({families})"


def family_name(family: str) -> str:
    """A candidate family in words."""
    if family.startswith("uniform@"):
        return "entropy-coded uniform grids"
    if family.startswith("int{b}"):
        return f"int {family.split('/', 1)[1]}"
    return family


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Variants no other variant beats on both bits and distortion, by bits."""
    front: list[dict[str, Any]] = []
    for r in sorted(rows, key=lambda r: (r["bits_per_param"], r["distortion"])):
        if not front or r["distortion"] < front[-1]["distortion"]:
            front.append(r)
    return front


def saving(curve: list[tuple[float, float]], label: str, bits: float, distortion: float) -> Saving | None:
    """Bits saved at equal distortion by a curve of (bits, distortion) points against one reference point."""
    from wquant.allocation import bits_at_distortion

    pts = sorted(pareto_front([{"bits_per_param": b, "distortion": d} for b, d in curve if d > 0]),
                 key=lambda r: r["bits_per_param"])  # fmt: skip
    if not pts or distortion <= 0:
        return None
    if distortion >= pts[0]["distortion"]:  # the curve's cheapest point already matches or beats the reference
        bound = ">=" if distortion > pts[0]["distortion"] else ""
        return Saving(label, bits, distortion, pts[0]["bits_per_param"], bound)
    if len(pts) < 2:
        return None
    at = bits_at_distortion([(p["bits_per_param"], p["distortion"]) for p in pts], distortion)
    bound = "" if distortion >= pts[-1]["distortion"] else "extrapolated"
    return Saving(label, bits, distortion, at, bound)


def cli_model_name(model: str) -> str:
    """The model as a user names it on the command line (no machine path)."""
    return "minilm" if model == "all-MiniLM-L6-v2" else model


def ships_as(model: str, plan: dict[str, Any]) -> str:
    """How to produce the shipped model (no machine path: the model is named as the user would)."""
    size, name = plan_bits(plan) / 8 / 1e6, cli_model_name(model)
    return f"a wquant checkpoint of {size:.1f} MB (`wquant quantize {name} --plan plan.json --out DIR`)"


def plan_bits(plan: dict[str, Any]) -> int:
    return int(plan["fixed_bits"]) + sum(int(t["bits"]) for t in plan["tensors"])


def summarize(results: dict[str, Any], config: Any, model: str) -> Summary:
    from wquant.study.pipeline import shipped_plan

    plan, evaluation = results["plan"], results["evaluate"]
    rows = evaluation["variants"]
    task = evaluation["task"]
    shipped = next(r for r in rows if r["shipped"])
    at_budget = [r for r in rows if r["bits_per_param"] <= config.budget + BUDGET_SLACK]
    choices = sorted(at_budget, key=lambda r: (r["distortion"], r["bits_per_param"]))[:TOP_CHOICES]
    curve_kind = shipped["kind"]
    if curve_kind == "allocation":
        curve = [(r["bits_per_param"], r["distortion"]) for r in rows if r["kind"] == "allocation"]
    else:
        curve = [(r["bits_per_param"], r["distortion"]) for r in rows if r["families"] == shipped["families"]]
    nf4 = next((r for r in rows if r["variant"] == f"uniform {NF4}"), None)
    vs_nf4 = saving(curve, "NF4", nf4["bits_per_param"], nf4["distortion"]) if nf4 else None
    uniform = [r for r in at_budget if r["kind"] == "uniform"]
    best_uniform = min(uniform, key=lambda r: (r["distortion"], -r["bits_per_param"]), default=None)
    vs_uniform = None
    if best_uniform is not None and shipped["kind"] == "allocation":
        family = [(r["bits_per_param"], r["distortion"]) for r in rows
                  if r["kind"] == "uniform" and r["families"] == best_uniform["families"]]  # fmt: skip
        vs_uniform = uniform_saving(family, best_uniform["variant"], shipped["bits_per_param"], shipped["distortion"])
    plan_json = shipped_plan(plan).to_json()
    return Summary(
        model=model, budget=config.budget, task=task, metric="1 - cosine" if task == "encoder" else "KL nats/token",
        shipped=shipped, choices=tuple(choices), front=tuple(pareto_front(rows)), vs_nf4=vs_nf4,
        vs_uniform=vs_uniform, best_uniform=best_uniform, reason=plan["decision"]["reason"],
        ships_as=ships_as(model, json.loads(plan_json)), shipped_plan_json=plan_json, applied=evaluation["applied"],
    )  # fmt: skip


def uniform_saving(family: list[tuple[float, float]], label: str, bits: float, distortion: float) -> Saving | None:
    """Bits a uniform family needs to reach `distortion` (log-linear on its Pareto front) minus `bits`."""
    from wquant.allocation import bits_at_distortion

    front = [(r["bits_per_param"], r["distortion"])
             for r in pareto_front([{"bits_per_param": b, "distortion": d} for b, d in family if d > 0])]  # fmt: skip
    if len(front) < 2 or distortion <= 0:
        return None
    inside = front[-1][1] <= distortion <= front[0][1]
    return Saving(label, bits_at_distortion(front, distortion), distortion, bits, "" if inside else "extrapolated")


def allocation_mix(plan: dict[str, Any]) -> Counter[str]:
    """How many tensors each family holds in a plan."""
    return Counter(family_name(t.get("family", "")) for t in plan["tensors"])
