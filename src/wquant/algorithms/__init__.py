"""Post-training quantization algorithms on top of the format core: each returns a genuine QuantizedTensor.

>>> from wquant.algorithms import GPTQConfig, gptq, hessian_from_inputs
>>> q = gptq(layer.weight, hessian_from_inputs(x), GPTQConfig("nf4/block64:absmax:fp32")).quantized
>>> quantize_model_with(model, GPTQConfig("int4/block64:absmax:bf16"), batches)  # whole model, layer by layer
"""

from wquant.algorithms.gptq import DampingWarning, GPTQConfig, GPTQResult, gptq, hessian_from_inputs
from wquant.algorithms.rtn import IMPORTANCE_KINDS, RTNConfig, importance_weights, rtn

__all__ = [
    "IMPORTANCE_KINDS",
    "DampingWarning",
    "GPTQConfig",
    "GPTQResult",
    "RTNConfig",
    "gptq",
    "hessian_from_inputs",
    "importance_weights",
    "rtn",
]
