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
from wquant.models.calibration import Pass, PrepareBlock, group_inputs
from wquant.models.folding import apply_fold, find_fold
from wquant.models.sites import module_kind


def can_smooth(config: Any) -> bool:
    """A config that chooses per-input-channel smoothing scales (AWQ, SmoothQuant)."""
    return callable(getattr(config, "channel_scales", None))


def _storage_weight(module: nn.Module) -> torch.Tensor:
    """(out, in) weight of a Linear or Conv1D."""
    w = module.weight.detach()
    return w.t() if module_kind(module) == "transposed" else w


def smoothing_step(
    config_of: Callable[[str], Any],
    activations_of: Callable[[str], ActivationSpec | None],
    notes: dict[str, str],
    *,
    samples: int = 0,
) -> PrepareBlock:
    """The `prepare_block` callback that smooths each block; notes per layer path go into `notes`."""

    def prepare(block: nn.Module, prefix: str, paths: list[str], passes: list[Pass]) -> None:
        if not any(can_smooth(config_of(prefix + p)) for p in paths):
            return
        for group, stats in group_inputs(block, paths, passes, samples, prefix):
            smoothers = [config_of(prefix + p) for p in group if can_smooth(config_of(prefix + p))]
            if not smoothers:
                continue
            fold = find_fold(block, group, passes[0][0])
            if fold is None:
                for path in group:
                    notes[prefix + path] = "no module before it can absorb a scale exactly: not smoothed"
                continue
            weights = [_storage_weight(block.get_submodule(p)) for p in group]
            found = smoothers[0].channel_scales(weights, stats, activations=activations_of(prefix + group[0]),
                                                name=prefix + group[0])  # fmt: skip
            if found is None:
                continue
            apply_fold(block, fold, found.scales)
            for path in group:
                notes[prefix + path] = f"{found.note}; scale folded into {prefix + fold.producer}".lstrip("; ")

    return prepare
