"""Smoothing inside the calibration walk: each block's layer groups get their scale, folded in, before any of the
block's layers is quantized.

For every block the walk reaches (`calibrate(..., prepare_block=...)`), the block is run once on its cached
inputs to collect the statistics of every layer group (layers fed the very same tensor: q/k/v, gate/up, o,
down), all on the block as it is — earlier blocks already quantized, this one still in full precision, as in
AutoAWQ. For each group whose config can smooth (`channel_scales`), the module its input comes from is found
and proven (`models.folding.find_fold`), the config chooses the scale from the group's weights and statistics,
and the scale is folded: producer outputs ÷ s, the group's weight columns × s. Scales of one group leave every
other group's inputs unchanged in floating point (that is what an exact fold means), so one statistics pass
serves the whole block. Then the ordinary sequential walk quantizes the block's layers on the smoothed block.
A group whose input no module can absorb exactly (BERT's post-norm q/k/v and FFN input, which also feed the
residual) is left unscaled, and its layers' reports say so. Layers outside the repeated blocks (an lm_head after
the final norm) get the same step with the whole model as the block (its probes run the whole model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from wquant.algorithms.activations import ActivationSpec
from wquant.models.activations import stored_divisor
from wquant.models.calibration import Pass, PrepareBlock, group_inputs
from wquant.models.folding import apply_fold, find_fold, multiply_inputs
from wquant.models.sites import module_kind


def can_smooth(config: Any) -> bool:
    """A config that chooses per-input-channel smoothing scales (AWQ, SmoothQuant)."""
    return callable(getattr(config, "channel_scales", None))


def _storage_weight(module: nn.Module) -> torch.Tensor:
    """(out, in) weight of a Linear or Conv1D."""
    w = module.weight.detach()
    return w.t() if module_kind(module) == "transposed" else w


def _dividing_hook(divisor: torch.Tensor) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
    """A pre-hook dividing a layer's input by the divisor; layers fed one tensor get one result tensor (the hook is
    shared and remembers its last input), so the walk still sees them fed the very same tensor."""
    memo: list[Any] = []

    def hook(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if memo and memo[0] is x and memo[1] == x._version:
            return (memo[2], *args[1:])
        out = x / divisor.to(x.dtype)
        memo[:] = [x, x._version, out]
        return (out, *args[1:])

    return hook


def smoothing_step(
    config_of: Callable[[str], Any],
    activations_of: Callable[[str], ActivationSpec | None],
    notes: dict[str, str],
    *,
    samples: int = 0,
    divisors: dict[str, nn.Parameter] | None = None,
) -> PrepareBlock:
    """The `prepare_block` callback that smooths each block; notes per layer path go into `notes`.

    A config with `fold="store"` still smooths a group no module can absorb the scale of: its weight columns are
    multiplied by s and s is kept as an fp16 divisor of the input (`divisors[path]`, one parameter per group, which
    the quantized layers apply; a pre-hook divides meanwhile, so the walk stays exact).
    """

    def prepare(block: nn.Module, prefix: str, paths: list[str], passes: list[Pass]) -> None:
        if not any(can_smooth(config_of(prefix + p)) for p in paths):
            return
        for group, stats in group_inputs(block, paths, passes, samples, prefix):
            smoothers = [config_of(prefix + p) for p in group if can_smooth(config_of(prefix + p))]
            if not smoothers:
                continue
            fold = find_fold(block, group, passes[0][0])
            store = getattr(smoothers[0], "fold", "exact") == "store" and divisors is not None
            if fold is None and not store:
                for path in group:
                    notes[prefix + path] = "no module before it can absorb a scale exactly: not smoothed"
                continue
            weights = [_storage_weight(block.get_submodule(p)) for p in group]
            found = smoothers[0].channel_scales(weights, stats, activations=activations_of(prefix + group[0]),
                                                name=prefix + group[0])  # fmt: skip
            if found is None:
                continue
            if fold is not None:
                apply_fold(block, fold, found.scales)
                where = f"scale folded into {prefix + fold.producer}"
            else:
                assert divisors is not None
                divisor = stored_divisor(found.scales)
                hook = _dividing_hook(divisor.detach().float())
                for path in group:
                    layer = block.get_submodule(path)
                    multiply_inputs(layer, divisor.detach().float())
                    layer.register_forward_pre_hook(hook)
                    divisors[prefix + path] = divisor
                where = "scale stored as an fp16 divisor of the input (no module before it can absorb it)"
            for path in group:
                notes[prefix + path] = f"{found.note}; {where}".lstrip("; ")

    return prepare
