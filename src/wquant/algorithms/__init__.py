"""Post-training quantization algorithms on the format primitives: each returns a genuine QuantizedTensor.

Solvers are plain functions on one weight; models are quantized through `wquant.quantize_`, which finds each
algorithm by its config type in the registry.

>>> from wquant.algorithms import GPTQConfig, gptq, hessian_from_inputs
>>> q = gptq(layer.weight, hessian_from_inputs(x), GPTQConfig("nf4/block64:absmax:fp32")).quantized
>>> q = hqq(layer.weight, HQQConfig("int4:unsigned/block64:minmax:bf16"))  # data-free zero optimisation
"""

from wquant.algorithms.gptq import DampingWarning, GPTQConfig, GPTQResult, gptq
from wquant.algorithms.hqq import HQQConfig, hqq, shrink_lp
from wquant.algorithms.nupes import NUPESConfig, NUPESResult, learn_codes, nupes, power_spec, search_exponent
from wquant.algorithms.registry import (
    ALGORITHMS,
    Algorithm,
    Quantized,
    TensorConfig,
    algorithm_names,
    as_tensor_config,
    config_for,
    quantize_weight,
    register,
)
from wquant.algorithms.rtn import IMPORTANCE_KINDS, RTNConfig, importance_weights, rtn, search_scales
from wquant.algorithms.statistics import HessianAccumulator, hessian_from_inputs, relative_error

__all__ = [
    "ALGORITHMS",
    "IMPORTANCE_KINDS",
    "Algorithm",
    "DampingWarning",
    "GPTQConfig",
    "GPTQResult",
    "HQQConfig",
    "HessianAccumulator",
    "NUPESConfig",
    "NUPESResult",
    "Quantized",
    "RTNConfig",
    "TensorConfig",
    "algorithm_names",
    "as_tensor_config",
    "config_for",
    "gptq",
    "hessian_from_inputs",
    "hqq",
    "importance_weights",
    "learn_codes",
    "nupes",
    "power_spec",
    "quantize_weight",
    "register",
    "relative_error",
    "rtn",
    "search_exponent",
    "search_scales",
    "shrink_lp",
]
