"""Kernels and their registry: the first registered kernel that accepts a stored layout and an input dtype runs it.

A kernel is a frozen dataclass with four methods (`refusal`, `prepare`, `linear`, `dequantize`, plus
`canonical_codes` for kernels that keep the codes in a layout of their own). `register_kernel` appends one to
`KERNELS` (its module's import runs the line); `select_kernel` walks them in order, so a specialised kernel
registered before a general one wins wherever it applies, and the reference accepts everything last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from wquant.formats.quantized import QuantizedTensor


@dataclass(frozen=True, eq=False)
class RuntimeState:
    """What a prepared kernel keeps between forwards for one weight (all of it counted as resident memory).

    q: the stored tensor the kernel reads. Its scales, offsets, tables and outliers are the canonical fields
    (no copies); its codes are the canonical field unless the kernel holds them in its own layout.
    held: tensors the runtime holds beside the canonical fields (the host registers them as non-persistent
    buffers, so `resident_bytes()` and `.buffers()` see them).
    drops_codes: while this state lives the canonical codes field is not held; `kernel.canonical_codes(state)`
    regenerates it byte for byte (for `state_dict()`, `.quantized`, checkpoints).
    """

    kernel: Kernel
    dtype: torch.dtype
    q: QuantizedTensor
    held: dict[str, torch.Tensor] = field(default_factory=dict)
    drops_codes: bool = False
    data: Any = None

    def held_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.held.values())


class Kernel(Protocol):
    """y = x·Ŵᵀ + b for the layouts a kernel accepts; Ŵ is what `QuantizedTensor.dequantize()` returns."""

    name: str

    def refusal(self, q: QuantizedTensor, dtype: torch.dtype) -> str | None:
        """None when the kernel runs this layout for inputs of `dtype`, else why not (one line)."""
        ...

    def prepare(self, q: QuantizedTensor, dtype: torch.dtype) -> RuntimeState:
        """The runtime form of the fields, made once (the first forward, or `prepare_inference`)."""
        ...

    def linear(self, x: torch.Tensor, state: RuntimeState, bias: torch.Tensor | None) -> torch.Tensor: ...

    def dequantize(self, state: RuntimeState) -> torch.Tensor:
        """Ŵ in the stored dtype, bit-identical to the reference `QuantizedTensor.dequantize()`."""
        ...

    def canonical_codes(self, state: RuntimeState) -> torch.Tensor:
        """The canonical packed codes field (only called when `state.drops_codes`)."""
        ...


KERNELS: list[Kernel] = []


def register_kernel(kernel: Kernel) -> Kernel:
    """Append `kernel` to the registry (kernels registered earlier are preferred); returns it."""
    if any(k.name == kernel.name for k in KERNELS):
        raise ValueError(f"a kernel named {kernel.name!r} is already registered")
    KERNELS.append(kernel)
    return kernel


def select_kernel(q: QuantizedTensor, dtype: torch.dtype) -> Kernel:
    """The first registered kernel that accepts `q` for inputs of `dtype` (the reference accepts everything)."""
    for kernel in KERNELS:
        if kernel.refusal(q, dtype) is None:
            return kernel
    raise LookupError(f"no kernel accepts {q.spec.to_string()} for {dtype} inputs (is the reference registered?)")


def explain(q: QuantizedTensor, dtype: torch.dtype) -> list[tuple[str, str | None]]:
    """(kernel name, refusal or None) for every registered kernel, in preference order."""
    return [(k.name, k.refusal(q, dtype)) for k in KERNELS]


def prepare(q: QuantizedTensor, dtype: torch.dtype) -> RuntimeState:
    """The runtime state of the kernel `select_kernel` picks."""
    return select_kernel(q, dtype).prepare(q, dtype)
