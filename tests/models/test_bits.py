"""Model-level bits/param against a hand count from the documented rule."""

from __future__ import annotations

import torch
from torch import nn

from wquant.models import QuantizeConfig, model_bits, quantize_


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 24)
        self.proj = nn.Linear(24, 24)
        self.norm = nn.LayerNorm(24)
        self.extra = nn.Linear(24, 16, bias=False).to(torch.bfloat16)
        self.head = nn.Linear(24, 50, bias=False)
        self.head.weight = self.emb.weight  # tied: stored and counted once


def test_bits_match_hand_count_with_mixed_formats() -> None:
    torch.manual_seed(0)
    model = Tiny()
    config = QuantizeConfig(
        "int4:unsigned/block64:minmax:bf16",
        targets=("linear", "embedding"),
        exclude=("extra",),
        overrides=(("proj", "int8/channel:absmax:fp32"),),
    )
    quantize_(model, config)
    # emb/head (50×24), one ragged block of 24 per row → 50 groups, each a bf16 scale + bf16 zero.
    tied = 50 * 24 * 4 + 50 * (16 + 16)
    proj = 24 * 24 * 8 + 24 * 32  # int8 codes + one fp32 scale per output channel
    unquantized = 24 * 32 + 2 * 24 * 32 + 16 * 24 * 16  # proj.bias fp32, norm fp32, extra bf16
    params = 50 * 24 + 24 * 24 + 24 + 2 * 24 + 16 * 24
    report = model_bits(model)
    assert report.bits == tied + proj + unquantized == 20224
    assert report.params == params == 2232
    assert report.bits_per_param == 20224 / 2232
    assert report.quantized_params == 50 * 24 + 24 * 24


def test_unquantized_model_costs_its_dtype_width() -> None:
    model = Tiny()
    assert model_bits(model).bits_per_param == ((2232 - 384) * 32 + 384 * 16) / 2232
