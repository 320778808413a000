"""Fisher-based bit allocation: estimate each tensor's sensitivity, then give it the format that minimises the
predicted KL under an all-in bits/param budget, landing on the budget exactly as far as the formats allow.

>>> from wquant.allocation import AdviseConfig, advise
>>> plan, table, fisher = advise(model, tokenizer, "causal-lm", calibration_text, AdviseConfig(budget=4.0))
>>> wquant.quantize_(model, plan.quantize_config()); plan.check_applied(model)  # bits/param <= 4.0
"""

from wquant.allocation.advise import (
    DEFAULT_BITS,
    DEFAULT_FORMATS,
    AdviseConfig,
    CausalProbe,
    EncoderProbe,
    PredictionCheck,
    advise,
    bits_at_distortion,
    check_prediction,
    dequantized,
    distortion_at_bits,
    expand_formats,
    measure_candidates,
    measure_plan,
    spearman,
    substituted,
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

__all__ = [
    "DEFAULT_BITS",
    "DEFAULT_FORMATS",
    "AdviseConfig",
    "Candidate",
    "CandidateTable",
    "CausalProbe",
    "ContinuousAllocation",
    "EncoderProbe",
    "FisherConfig",
    "FisherEstimate",
    "Option",
    "Plan",
    "PredictionCheck",
    "TensorCandidates",
    "TensorFisher",
    "TensorPlan",
    "accumulate_fisher",
    "advise",
    "allocate",
    "am_gm_saving",
    "bits_at_distortion",
    "calibration_texts",
    "check_prediction",
    "closed_form_bits",
    "dequantized",
    "distortion_at_bits",
    "estimate_fisher",
    "expand_formats",
    "lower_hull",
    "measure_candidates",
    "measure_plan",
    "model_kl",
    "sampled_labels",
    "solve_budget",
    "spearman",
    "substituted",
    "uniform_plan",
]
