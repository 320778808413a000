"""Fisher-based bit allocation: estimate each tensor's sensitivity, then give it the format that minimises the
predicted KL under an all-in bits/param budget, landing on the budget exactly as far as the formats allow.

Sensitivities are measured (each tensor perturbed alone on calibration text, the Fisher proxy corrected per
tensor by measured points) and the allocated plan ships only where it beats the best uniform plan at no more
bits (`sensitivity.py`).

>>> from wquant.allocation import AdviseConfig, advise
>>> advice = advise(model, tokenizer, "causal-lm", calibration_text, AdviseConfig(budget=4.0))
>>> advice.decision.reason
>>> wquant.quantize_(model, advice.plan.quantize_config()); advice.plan.check_applied(model)  # <= 4.0
"""

from wquant.allocation.advise import (
    DEFAULT_BITS,
    DEFAULT_FORMATS,
    Advice,
    AdviseConfig,
    PredictionCheck,
    advise,
    anchor_levels,
    bits_at_distortion,
    budget_spec,
    calibration_probe,
    check_prediction,
    distortion_at_bits,
    expand_families,
    expand_formats,
    ladder_step,
    measure_candidates,
    spearman,
    with_budget_candidates,
)
from wquant.allocation.allocate import (
    ContinuousAllocation,
    Option,
    allocate,
    am_gm_saving,
    closed_form_bits,
    lower_hull,
    model_kl,
    solve_budget,
    uniform_plan,
)
from wquant.allocation.fisher import (
    FisherConfig,
    FisherEstimate,
    TensorFisher,
    accumulate_fisher,
    calibration_texts,
    estimate_fisher,
    sampled_labels,
)
from wquant.allocation.plan import Candidate, CandidateTable, Plan, TensorCandidates, TensorPlan
from wquant.allocation.probe import (
    CausalProbe,
    EncoderProbe,
    OutputProbe,
    dequantized,
    measure_plan,
    measure_plans,
    repeated_blocks,
    stored_values,
    substituted,
)
from wquant.allocation.sensitivity import (
    Contender,
    Decision,
    decide,
    interpolate_curve,
    measure_sensitivity,
    uniform_plans,
)

__all__ = [
    "DEFAULT_BITS",
    "DEFAULT_FORMATS",
    "Advice",
    "AdviseConfig",
    "Candidate",
    "CandidateTable",
    "CausalProbe",
    "Contender",
    "ContinuousAllocation",
    "Decision",
    "EncoderProbe",
    "FisherConfig",
    "FisherEstimate",
    "Option",
    "OutputProbe",
    "Plan",
    "PredictionCheck",
    "TensorCandidates",
    "TensorFisher",
    "TensorPlan",
    "accumulate_fisher",
    "advise",
    "allocate",
    "am_gm_saving",
    "anchor_levels",
    "bits_at_distortion",
    "budget_spec",
    "calibration_probe",
    "calibration_texts",
    "check_prediction",
    "closed_form_bits",
    "decide",
    "dequantized",
    "distortion_at_bits",
    "estimate_fisher",
    "expand_families",
    "expand_formats",
    "interpolate_curve",
    "ladder_step",
    "lower_hull",
    "measure_candidates",
    "measure_plan",
    "measure_plans",
    "measure_sensitivity",
    "model_kl",
    "repeated_blocks",
    "sampled_labels",
    "solve_budget",
    "spearman",
    "stored_values",
    "substituted",
    "uniform_plan",
    "uniform_plans",
    "with_budget_candidates",
]
