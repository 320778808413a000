"""Post-training quantization algorithms on the format primitives: each returns a genuine QuantizedTensor.

Solvers are plain functions on one weight; models are quantized through `wquant.quantize_`, which finds each
algorithm by its config type in the registry.

>>> from wquant.algorithms import GPTQConfig, gptq, hessian_from_inputs
>>> q = gptq(layer.weight, hessian_from_inputs(x), GPTQConfig("nf4/block64:absmax:fp32")).quantized
>>> q = hqq(layer.weight, HQQConfig("int4:unsigned/block64:minmax:bf16"))  # data-free zero optimisation
>>> r = awq([layer.weight], statistics_from_inputs(x), AWQConfig("int4/block64:absmax:fp16"))  # scales + clip
"""

from wquant.algorithms.activations import (
    ACTIVATION_PRESETS,
    ActivationSpec,
    fake_quantize,
    parse_activations,
    static_scale,
)
from wquant.algorithms.awq import AWQConfig, AWQResult, awq, awq_round, awq_scales
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
from wquant.algorithms.smoothing import ChannelScales
from wquant.algorithms.smoothquant import SmoothQuantConfig, migration_scales, smoothquant_scales
from wquant.algorithms.statistics import (
    HessianAccumulator,
    LayerStatistics,
    hessian_from_inputs,
    relative_error,
    statistics_from_inputs,
)
from wquant.algorithms.zeroquant import LKDResult, ZeroQuantConfig, lkd

__all__ = [
    "ACTIVATION_PRESETS",
    "ALGORITHMS",
    "AWQConfig",
    "AWQResult",
    "ActivationSpec",
    "ChannelScales",
    "LKDResult",
    "LayerStatistics",
    "SmoothQuantConfig",
    "ZeroQuantConfig",
    "awq",
    "awq_round",
    "awq_scales",
    "fake_quantize",
    "lkd",
    "migration_scales",
    "parse_activations",
    "smoothquant_scales",
    "static_scale",
    "statistics_from_inputs",
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
