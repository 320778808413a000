"""The kernel half of `PackedWeight`: choose a kernel, keep its runtime state, give the canonical fields back.

A mixin so that `models/layers.py` keeps only the hooks. The state is made for one input dtype the first time
`kernel_linear` sees it (or by `prepare_kernel`); its held tensors become non-persistent `kernel_<name>`
buffers, so `.buffers()` and `resident_bytes()` count them and `state_dict()` does not carry them. A kernel
that holds the codes in its own layout drops the canonical `codes` buffer while it runs (`drops_codes`); then
`canonical_fields()` and `state_dict()` regenerate it byte for byte. The host releases the state — restoring
the canonical buffer first in its old place — before anything moves, casts or loads its buffers.
"""

from __future__ import annotations

from typing import Any

import torch

from wquant.formats.quantized import QuantizedTensor
from wquant.kernels.registry import Kernel, RuntimeState, select_kernel

PREFIX = "kernel_"


class KernelHost:
    """Mixin for an `nn.Module` whose buffers are one `QuantizedTensor`'s fields (see the module docstring)."""

    _runtime: RuntimeState | None = None
    _buffers: dict[str, torch.Tensor | None]
    _non_persistent_buffers_set: set[str]

    # the host provides these (PackedWeight)
    spec: Any
    shape: tuple[int, ...]
    stored_dtype: torch.dtype

    @property
    def kernel(self) -> str | None:
        """Name of the prepared kernel, or None before the first forward."""
        return None if self._runtime is None else self._runtime.kernel.name

    def canonical_fields(self) -> dict[str, torch.Tensor]:
        """The stored fields as `QuantizedTensor.state()` lays them out, whatever the kernel holds instead."""
        fields = {n: b for n, b in self._buffers.items() if b is not None and not n.startswith(PREFIX)}
        state = self._runtime
        if state is not None and state.drops_codes:
            fields = {"codes": state.kernel.canonical_codes(state), **fields}
        return fields

    def _stored(self) -> QuantizedTensor:
        return QuantizedTensor.from_state(
            self.canonical_fields(), self.spec, self.shape, self.stored_dtype, check=False
        )

    def prepare_kernel(self, dtype: torch.dtype, kernel: Kernel | None = None) -> RuntimeState:
        """Make (or remake) the runtime state for inputs of `dtype`: the selected kernel's, or `kernel`'s."""
        self.release_kernel()
        stored = self._stored()
        state = (kernel or select_kernel(stored, dtype)).prepare(stored, dtype)
        for name, tensor in state.held.items():
            self.register_buffer(PREFIX + name, tensor, persistent=False)  # type: ignore[attr-defined]
        if state.drops_codes:
            del self._buffers["codes"]
        self._runtime = state
        return state

    def release_kernel(self) -> None:
        """Drop the runtime state; the canonical codes buffer is back in its place first."""
        state = self._runtime
        if state is None:
            return
        codes = state.kernel.canonical_codes(state) if state.drops_codes else None
        self._runtime = None
        for name in state.held:
            self._buffers.pop(PREFIX + name, None)
            self._non_persistent_buffers_set.discard(PREFIX + name)
        if codes is not None:
            rest = dict(self._buffers)
            self._buffers.clear()
            self._buffers.update({"codes": codes, **rest})

    def kernel_linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x·Ŵᵀ + b through the kernel prepared for x's dtype (prepared now if there is none)."""
        state = self._runtime
        if state is None or state.dtype != x.dtype:
            state = self.prepare_kernel(x.dtype)
        return state.kernel.linear(x, state, bias)

    def kernel_dequantize(self) -> torch.Tensor:
        """Ŵ through the prepared kernel (bit-identical to the reference); call only with a runtime state."""
        state = self._runtime
        assert state is not None
        return state.kernel.dequantize(state)

    def kernel_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows of the (out, in) view through the prepared kernel: from fixed-rate codes when it holds them."""
        state = self._runtime
        assert state is not None
        source = _row_source(state)
        if source is not None:
            return source.dequantize_rows(rows)
        weight = state.kernel.dequantize(state)
        return weight.reshape(weight.shape[0], -1).index_select(0, rows.reshape(-1).to(torch.int64))

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        state = self._runtime
        if state is None or not state.drops_codes:
            super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
            return
        for name, tensor in self.canonical_fields().items():
            destination[prefix + name] = tensor if keep_vars else tensor.detach()
        destination[prefix + "_extra_state"] = self.get_extra_state()  # type: ignore[attr-defined]


def _row_source(state: RuntimeState) -> QuantizedTensor | None:
    """A tensor in the canonical fixed-rate layout the state holds (its rows decode alone), if any."""
    inner = getattr(state.data, "inner", None)
    if isinstance(inner, RuntimeState):
        return _row_source(inner)
    return None if state.drops_codes else state.q
