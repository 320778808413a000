"""Post-training quantization algorithms on top of the format core: each returns a genuine QuantizedTensor.

>>> from wquant.algorithms import GPTQConfig, gptq, hessian_from_inputs, quantize_model_with
>>> q = gptq(layer.weight, hessian_from_inputs(x), GPTQConfig("nf4/block64:absmax:fp32")).quantized
>>> quantize_model_with(model, GPTQConfig("int4/block64:absmax:bf16"), batches)  # whole model, layer by layer
>>> q = hqq(layer.weight, HQQConfig("int4:unsigned/block64:minmax:bf16"))  # data-free zero optimisation
"""

from wquant.algorithms.gptq import DampingWarning, GPTQConfig, GPTQResult, gptq, hessian_from_inputs
from wquant.algorithms.hqq import HQQConfig, hqq, shrink_lp
from wquant.algorithms.nupes import (
    NUPESConfig,
    NUPESResult,
    learn_codes,
    nupes,
    power_spec,
    relative_error,
    search_exponent,
)
from wquant.algorithms.rtn import IMPORTANCE_KINDS, RTNConfig, importance_weights, rtn
from wquant.algorithms.sequential import (
    ALGORITHMS,
    AlgorithmConfig,
    LayerReport,
    algorithm_config,
    calibration_windows,
    quantize_layer,
    quantize_model_with,
    sentence_batches,
)

__all__ = [
    "ALGORITHMS",
    "IMPORTANCE_KINDS",
    "AlgorithmConfig",
    "DampingWarning",
    "GPTQConfig",
    "GPTQResult",
    "HQQConfig",
    "LayerReport",
    "NUPESConfig",
    "NUPESResult",
    "RTNConfig",
    "algorithm_config",
    "calibration_windows",
    "gptq",
    "hessian_from_inputs",
    "hqq",
    "importance_weights",
    "learn_codes",
    "nupes",
    "power_spec",
    "quantize_layer",
    "quantize_model_with",
    "relative_error",
    "rtn",
    "search_exponent",
    "sentence_batches",
    "shrink_lp",
]
