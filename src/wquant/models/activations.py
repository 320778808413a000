"""Activation quantization in a model: a `QuantizedLinear` whose input is rounded onto an activation grid on the fly.

`InputQuantizer` holds an `ActivationSpec` (extra state; the checkpoint manifest records it too) and, for
static specs, the calibrated scale as a frozen fp32 parameter — stored with the model, so `model_bits` counts
its 32 bits per value. Dynamic specs compute their scales from each input and store nothing. The forward is
fake quantization (round, then multiply back by the scale) in float; the integer GEMM it stands for is in
`wquant.algorithms.activations`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wquant.algorithms.activations import ActivationSpec, fake_quantize, parse_activations, static_scale
from wquant.algorithms.statistics import LayerStatistics
from wquant.errors import CorruptDataError, ParameterError, SpecError


class InputQuantizer(nn.Module):
    """Rounds a layer's input onto `spec`'s grid: y = dequantize(quantize(x))."""

    def __init__(self, spec: ActivationSpec | str, in_features: int, scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.spec = parse_activations(spec)
        self.in_features = int(in_features)
        self.scale: nn.Parameter | None = None
        if self.spec.static:
            size = 1 if self.spec.granularity == "tensor" else self.in_features
            value = torch.zeros(size) if scale is None else scale.detach().float().reshape(-1)
            if value.numel() != size:
                raise ParameterError(f"{self.spec.to_string()} needs {size} scale value(s), got {value.numel()}")
            self.scale = nn.Parameter(value.clone(), requires_grad=False)

    @staticmethod
    def calibrated(spec: ActivationSpec | str, in_features: int, stats: LayerStatistics | None) -> InputQuantizer:
        """A quantizer for a layer with `in_features` inputs; a static spec takes its scale from `stats`."""
        spec = parse_activations(spec)
        if not spec.static:
            return InputQuantizer(spec, in_features)
        if stats is None:
            raise ParameterError(f"static activations {spec.to_string()} need calibration data for their scale; give "
                                 "calibration batches or use a dynamic spec (e.g. int8/token)")  # fmt: skip
        return InputQuantizer(spec, in_features, static_scale(spec, stats.abs_max()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize(x, self.spec, None if self.scale is None else self.scale.to(torch.float32))

    def bits_per_element(self) -> float:
        return self.spec.bits_per_element(self.in_features)

    def get_extra_state(self) -> dict[str, Any]:
        return {"spec": self.spec.to_string(), "in_features": self.in_features}

    def set_extra_state(self, state: Any) -> None:
        try:
            self.spec, self.in_features = parse_activations(state["spec"]), int(state["in_features"])
        except (KeyError, TypeError, ValueError, SpecError) as exc:
            raise CorruptDataError(f"activation quantizer state {state!r} is malformed ({exc})") from None

    def extra_repr(self) -> str:
        return self.spec.to_string()


def input_quantizers(model: nn.Module) -> list[tuple[str, InputQuantizer]]:
    """Every (path of the quantized layer, its input quantizer)."""
    return [
        (name.removesuffix(".input_quant"), m)
        for name, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, InputQuantizer)
    ]
