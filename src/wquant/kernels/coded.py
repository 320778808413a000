"""Entropy-coded weights: decoded once, when the kernel is prepared, into the fixed-rate layout of the same grid.

An ANS stream has no random access, so multiplying from it would decode the whole stream on every forward
(≈ 60 M codes/s). Preparing decodes it once into codes packed at the grid's fixed width (`⌈log2 levels⌉` bits:
the same grid, scales, table and outliers, without `+coded`) and hands that fixed-rate tensor to whichever
kernel accepts it (table, or torch's int4/int8 kernels for bf16 inputs). The coded stream stays the storage
format: `state_dict()`, `.quantized` and checkpoints regenerate it by re-encoding the codes, which `prepare`
has checked gives the very same bytes — only then is the stream dropped while the kernel runs (`drops_codes`),
so resident memory is the fixed-rate layout, not stream + layout. If re-encoding would differ (a stream written
by another encoder version), the stream is kept beside the fixed-rate codes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from wquant.errors import SpecError
from wquant.formats.bitpack import pack_bits, unpack_bits
from wquant.formats.coding import decode_codes, encode_codes
from wquant.formats.quantized import QuantizedTensor
from wquant.kernels.decoding import cpu_refusal
from wquant.kernels.registry import RuntimeState, prepare, register_kernel


@dataclass(frozen=True)
class CodedData:
    inner: RuntimeState  # the kernel running the fixed-rate layout
    code_dtype: np.dtype  # dtype of the stream's symbols (re-encoding must use it)
    group_size: int | None  # the stream's coding group


def fixed_rate(q: QuantizedTensor) -> tuple[QuantizedTensor, np.ndarray]:
    """The same tensor with its codes packed at the grid's fixed width (spec without `+coded`), and the codes."""
    codes = decode_codes(q.packed_codes.cpu().numpy().tobytes()).reshape(-1)
    spec = dataclasses.replace(q.spec, coding=None)
    packed = pack_bits(torch.from_numpy(codes.astype(np.int64)), q.codebook().code_bits)
    return dataclasses.replace(q, spec=spec, packed_codes=packed), codes


@dataclass(frozen=True)
class CodedKernel:
    name: str = "coded"

    def refusal(self, q: QuantizedTensor, dtype: torch.dtype) -> str | None:
        if q.spec.coding is None:
            return "fixed-rate codes"
        if (reason := cpu_refusal(q, dtype)) is not None:
            return reason
        try:
            dataclasses.replace(q.spec, coding=None)
        except SpecError as exc:
            return f"no fixed-rate form of the grid: {exc}"
        return None

    def prepare(self, q: QuantizedTensor, dtype: torch.dtype) -> RuntimeState:
        fixed, codes = fixed_rate(q)
        inner = prepare(fixed, dtype)
        group = q.spec.coding.group_size  # type: ignore[union-attr]
        same = encode_codes(codes, group_size=group) == q.packed_codes.numpy().tobytes()
        held = dict(inner.held)
        if not inner.drops_codes:
            held.setdefault("codes", fixed.packed_codes)
        return RuntimeState(
            self, dtype, inner.q, held=held, drops_codes=same, data=CodedData(inner, codes.dtype, group)
        )

    def linear(self, x: torch.Tensor, state: RuntimeState, bias: torch.Tensor | None) -> torch.Tensor:
        inner = state.data.inner
        return inner.kernel.linear(x, inner, bias)

    def dequantize(self, state: RuntimeState) -> torch.Tensor:
        inner = state.data.inner
        return inner.kernel.dequantize(inner)

    def canonical_codes(self, state: RuntimeState) -> torch.Tensor:
        inner = state.data.inner
        fixed = inner.kernel.canonical_codes(inner) if inner.drops_codes else inner.q.packed_codes
        q, data = inner.q, state.data
        codes = unpack_bits(fixed, q.codebook().code_bits, q.numel).numpy().astype(data.code_dtype)
        stream = encode_codes(codes, group_size=data.group_size)
        return torch.from_numpy(np.frombuffer(stream, dtype=np.uint8).copy())


CODED = register_kernel(CodedKernel())
