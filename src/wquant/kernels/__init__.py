"""Fast paths for y = x·Ŵᵀ on packed quantized weights, one per layout, and the reference they must match.

A kernel is chosen from the stored layout (spec, shape, stored dtype) and the input dtype the first time a
quantized layer runs; it prepares a runtime form of the packed fields once (torch's int4 tile layout, int8
rows, the fixed-rate codes of an entropy-coded stream, a grid's level table) and computes the product from it.
Preference order: `coded` (decode a stream once, then the best kernel for its fixed-rate layout), `int4-cpu`
and `int8-cpu` (torch's own kernels, bf16 inputs), `table` (every fixed-width layout, one pass over the packed
bytes), `reference` (decode with `QuantizedTensor.dequantize()`, then `F.linear`: every layout, every device).
The reference stays, is what every kernel is tested against, and serves any layout no kernel accepts.
`docs/inference.md` states each kernel's precision and the memory it holds.

>>> from wquant.kernels import prepare
>>> state = prepare(q, torch.float32); y = state.kernel.linear(x, state, bias)
"""

import torch

from wquant.formats.quantized import QuantizedTensor
from wquant.kernels import coded, int4_cpu, int8_cpu, table  # noqa: F401  (registration, in preference order)
from wquant.kernels.decoding import decode
from wquant.kernels.reference import REFERENCE, reference_linear
from wquant.kernels.registry import KERNELS, Kernel, RuntimeState, explain, prepare, register_kernel, select_kernel

register_kernel(REFERENCE)  # last: it accepts everything


def dequantize(q: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Ŵ through the kernel selected for `dtype` inputs (bit-identical to `q.dequantize()`); coded streams are
    decoded first. Prepares the kernel on every call: for repeated use keep `prepare(q, dtype)`'s state."""
    state = prepare(q, dtype)
    return state.kernel.dequantize(state)


__all__ = [
    "KERNELS",
    "REFERENCE",
    "Kernel",
    "RuntimeState",
    "decode",
    "dequantize",
    "explain",
    "prepare",
    "reference_linear",
    "register_kernel",
    "select_kernel",
]
