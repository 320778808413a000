"""Quantized modules whose weights are real torch state: packed fields as buffers, the layout as extra state.

`PackedWeight` holds one `QuantizedTensor`'s stored fields, bit-packed (4-bit codes take half a byte), as
uint8 buffers, and its spec/shape/dtype as extra state, so `state_dict()` / `load_state_dict()` round-trip
it, `.to(device)` moves it and `.to(dtype)` leaves its exact bits alone. Resident memory is its `bits()/8`
plus at most a byte per field. `QuantizedLinear` (replaces nn.Linear and transformers' Conv1D) and
`QuantizedEmbedding` hold a PackedWeight as a child module; tied weights share one child, so they are stored
and counted once. A QuantizedLinear runs its weight through the kernel `wquant.kernels` selects for the stored
layout and the input dtype (prepared on the first forward, never saved; docs/inference.md); embeddings decode
only the rows looked up; while a cache of the decoded weight is switched on (`PackedWeight.cache`, the
calibration walk) that copy is used instead.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wquant.errors import CorruptDataError, ParameterError
from wquant.formats import QuantizedTensor, parse_spec
from wquant.formats.quantized import FIELDS
from wquant.kernels.host import KernelHost

_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16)}


class PackedWeight(KernelHost, nn.Module):
    """One quantized tensor as torch state (see the module docstring); `linear` runs it through a fast kernel."""

    def __init__(self, quantized: QuantizedTensor) -> None:
        super().__init__()
        self._layout(quantized.spec.to_string(), quantized.shape, quantized.dtype)
        for name, tensor in quantized.state().items():
            self.register_buffer(name, tensor)
        self.cache = False
        self._decoded: torch.Tensor | None = None

    def _layout(self, spec: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.spec = parse_spec(spec)
        self.shape = tuple(int(s) for s in shape)
        self.stored_dtype = dtype

    @property
    def quantized(self) -> QuantizedTensor:
        """The stored tensor on these buffers (no copy)."""
        fields = self.canonical_fields()  # kernels: the codes a kernel holds in its own layout, given back
        return QuantizedTensor.from_state(fields, self.spec, self.shape, self.stored_dtype, check=False)

    def dequantize(self) -> torch.Tensor:
        """The weight as stored (storage layout (out, in)); decoded on every call unless `cache` is on."""
        if self._decoded is not None:
            return self._decoded
        weight = self.kernel_dequantize() if self._runtime is not None else self.quantized.dequantize()
        if self.cache:
            self._decoded = weight
        return weight

    def dequantize_rows(self, rows: torch.Tensor) -> torch.Tensor:
        if self._decoded is not None:
            return self._decoded.index_select(0, rows.to(self._decoded.device))
        if self._runtime is not None:  # kernels: rows from the codes the prepared kernel holds
            return self.kernel_rows(rows)
        return self.quantized.dequantize_rows(rows)

    # ---- kernels (wquant.kernels; state and buffer bookkeeping in kernels/host.py) -------------------------------
    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x·Ŵᵀ + b: the decoded-weight cache while it is on (calibration), else the kernel for x's dtype."""
        if self.cache or self._decoded is not None:
            return F.linear(x, self.dequantize().to(x.dtype), bias)
        return self.kernel_linear(x, bias)

    # ---- end kernels ---------------------------------------------------------------------------------------------

    def clear_cache(self) -> None:
        self.cache = False
        self._decoded = None

    def bits(self) -> int:
        return self.quantized.bits()

    def resident_bytes(self) -> int:
        return sum(buf.numel() * buf.element_size() for buf in self.buffers())

    def get_extra_state(self) -> dict[str, Any]:
        return {"spec": self.spec.to_string(), "shape": list(self.shape),
                "dtype": str(self.stored_dtype).removeprefix("torch.")}  # fmt: skip

    def set_extra_state(self, state: Any) -> None:
        try:
            spec, shape, dtype = state["spec"], tuple(state["shape"]), _DTYPES[state["dtype"]]
        except (KeyError, TypeError) as exc:
            raise CorruptDataError(f"packed weight layout {state!r} is malformed ({exc})") from None
        self._layout(spec, shape, dtype)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any], strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:  # fmt: skip
        """Take the saved layout and fields whatever their sizes (a coded stream's length varies), then check them.

        A field whose size did not change is copied in place, so weights tied through this module stay tied.
        """
        self.release_kernel()  # kernels: the canonical codes buffer back first
        extra = state_dict.get(prefix + "_extra_state")
        if extra is not None:
            self.set_extra_state(extra)
        elif strict:
            missing_keys.append(prefix + "_extra_state")
        fields = {name: state_dict[prefix + name] for name in FIELDS if prefix + name in state_dict}
        device = next(iter(self._buffers.values())).device if self._buffers else torch.device("cpu")
        try:
            QuantizedTensor.from_state(fields, self.spec, self.shape, self.stored_dtype)  # checks sizes and codes
        except CorruptDataError as exc:
            error_msgs.append(f"{prefix.rstrip('.')}: {exc}")
            return
        for name in list(self._buffers):
            if name not in fields:
                del self._buffers[name]
        for name, value in fields.items():
            current = self._buffers.get(name)
            if current is not None and current.shape == value.shape:
                with torch.no_grad():
                    current.copy_(value)
            else:
                self._buffers[name] = value.detach().to(device).clone()
        self._decoded = None
        if strict:
            known = {prefix + name for name in FIELDS} | {prefix + "_extra_state"}
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in known)

    def _apply(self, fn: Any, recurse: bool = True) -> PackedWeight:
        self._decoded = None  # a move or cast invalidates the decoded copy
        self.release_kernel()  # kernels: and the kernel's runtime state (canonical codes back first)
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"{self.spec.to_string()}, shape={self.shape}"


class QuantizedLinear(nn.Module):
    """y = x·Wᵀ + b with W decoded from a PackedWeight (replaces nn.Linear and transformers' Conv1D)."""

    def __init__(self, weight: PackedWeight, bias: nn.Parameter | None, *, layout: str = "linear") -> None:
        super().__init__()
        if layout not in ("linear", "transposed"):
            raise ParameterError(f"QuantizedLinear layout must be 'linear' or 'transposed', got {layout!r}")
        self.qweight = weight
        self.layout = layout
        self.out_features, self.in_features = weight.shape[0], int(torch.Size(weight.shape[1:]).numel())
        self.bias = bias
        self.input_quant: nn.Module | None = None  # quantizes the input on the fly (models.activations)

    @property
    def weight(self) -> torch.Tensor:
        """Read-only decoded weight in the replaced module's own layout, for code that inspects it."""
        w = self.qweight.dequantize()
        return w.t() if self.layout == "transposed" else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self.qweight.linear(x, bias)  # kernels: the reference was F.linear(x, Ŵ.to(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class QuantizedEmbedding(nn.Module):
    """Row look-up that decodes only the rows it needs (replaces nn.Embedding without max_norm)."""

    def __init__(self, weight: PackedWeight, *, padding_idx: int | None = None) -> None:
        super().__init__()
        self.qweight = weight
        self.layout = "embedding"
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = padding_idx

    @property
    def weight(self) -> torch.Tensor:
        return self.qweight.dequantize()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        unique, inverse = torch.unique(ids, return_inverse=True)
        return F.embedding(inverse, self.qweight.dequantize_rows(unique))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}"


QuantizedModule = QuantizedLinear | QuantizedEmbedding


def quantized_modules(model: nn.Module) -> list[tuple[str, QuantizedModule]]:
    """Every (path, module) holding a quantized weight; modules sharing a weight are each listed."""
    return [(name, m) for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, QuantizedModule)]


def packed_weights(model: nn.Module) -> list[tuple[str, PackedWeight]]:
    """Every distinct PackedWeight, named by the first module that uses it (`path.weight`)."""
    return [
        (name.removesuffix(".qweight") + ".weight" if name != "qweight" else "weight", m)
        for name, m in model.named_modules()
        if isinstance(m, PackedWeight)
    ]
