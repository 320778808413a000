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
    """What a quantized layer does to its input first: divide it by a stored smoothing divisor (when a smoothing
    scale could not be folded into the module before it), then round it onto `spec`'s grid (when activations are
    quantized): y = dequantize(quantize(x / divisor)).

    The divisor is an fp16 parameter (16 bits per input channel, counted by `model_bits`), shared by every layer
    of the group fed that input, so it is stored and counted once.
    """

    def __init__(
        self, spec: ActivationSpec | str | None, in_features: int, scale: torch.Tensor | None = None,
        divisor: nn.Parameter | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.spec = None if spec is None else parse_activations(spec)
        self.in_features = int(in_features)
        self.scale: nn.Parameter | None = None
        self.divisor = divisor
        if divisor is not None and divisor.numel() != self.in_features:
            raise ParameterError(f"a smoothing divisor needs {self.in_features} values, got {divisor.numel()}")
        if self.spec is not None and self.spec.static:
            size = 1 if self.spec.granularity == "tensor" else self.in_features
            value = torch.zeros(size) if scale is None else scale.detach().float().reshape(-1)
            if value.numel() != size:
                raise ParameterError(f"{self.spec.to_string()} needs {size} scale value(s), got {value.numel()}")
            self.scale = nn.Parameter(value.clone(), requires_grad=False)

    @staticmethod
    def calibrated(
        spec: ActivationSpec | str | None, in_features: int, stats: LayerStatistics | None,
        divisor: nn.Parameter | None = None,
    ) -> InputQuantizer:  # fmt: skip
        """A quantizer for a layer with `in_features` inputs; a static spec takes its scale from `stats` (which
        describe the input after the divisor)."""
        spec = None if spec is None else parse_activations(spec)
        if spec is None or not spec.static:
            return InputQuantizer(spec, in_features, divisor=divisor)
        if stats is None:
            raise ParameterError(f"static activations {spec.to_string()} need calibration data for their scale; give "
                                 "calibration batches or use a dynamic spec (e.g. int8/token)")  # fmt: skip
        return InputQuantizer(spec, in_features, static_scale(spec, stats.abs_max()), divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.divisor is not None:
            x = x / self.divisor.to(x.dtype)
        if self.spec is None:
            return x
        return fake_quantize(x, self.spec, None if self.scale is None else self.scale.to(torch.float32))

    def bits_per_element(self) -> float | None:
        return None if self.spec is None else self.spec.bits_per_element(self.in_features)

    def get_extra_state(self) -> dict[str, Any]:
        spec = None if self.spec is None else self.spec.to_string()
        return {"spec": spec, "in_features": self.in_features}

    def set_extra_state(self, state: Any) -> None:
        try:
            spec = state["spec"]
            self.spec = None if spec is None else parse_activations(spec)
            self.in_features = int(state["in_features"])
        except (KeyError, TypeError, ValueError, SpecError) as exc:
            raise CorruptDataError(f"activation quantizer state {state!r} is malformed ({exc})") from None

    def extra_repr(self) -> str:
        parts = ([] if self.spec is None else [self.spec.to_string()]) + (["÷ stored divisor"] if self.divisor is not
                                                                          None else [])  # fmt: skip
        return ", ".join(parts)


def stored_divisor(scale: torch.Tensor) -> nn.Parameter:
    """A smoothing scale as the fp16 divisor it is stored as (weights must be scaled by this very value)."""
    return nn.Parameter(scale.detach().to(torch.float16).reshape(-1).clone(), requires_grad=False)


def input_quantizers(model: nn.Module) -> list[tuple[str, InputQuantizer]]:
    """Every (path of the quantized layer, its input quantizer)."""
    return [
        (name.removesuffix(".input_quant"), m)
        for name, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, InputQuantizer)
    ]
