"""Fast paths for y = x·Ŵᵀ on packed quantized weights, one per layout, and the reference they must match.

A kernel is chosen from the stored layout (the spec, the shape, the dtype of the input) the first time a
quantized layer runs; it prepares a runtime form of the packed fields once (torch's int4 tile layout, a
byte → values table, the fixed-rate codes of an entropy-coded stream) and computes the product from it.
The reference — decode the whole weight with `QuantizedTensor.dequantize()`, then `F.linear` — stays, is what
every kernel is tested against, and serves any layout no kernel accepts.

>>> from wquant.kernels import select_kernel
>>> kernel = select_kernel(q, torch.float32); state = kernel.prepare(q); y = kernel.linear(x, state, bias)
"""

from wquant.kernels import int4_cpu, int8_cpu, table  # noqa: F401  (registration, in preference order)
from wquant.kernels.reference import REFERENCE
from wquant.kernels.registry import KERNELS, Kernel, RuntimeState, register_kernel, select_kernel

__all__ = ["KERNELS", "REFERENCE", "Kernel", "RuntimeState", "register_kernel", "select_kernel"]
