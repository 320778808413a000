"""Measured sensitivities and the ship-the-better-plan decision, against planted sensitivities with a derivable
answer: y = Σ_k g_k W_k x_k with x ~ N(0, I), so tensor k alone costs g_k² ‖δ_k‖² (in expectation) and the
high-rate optimum gives branch k log2 g_k − mean_j log2 g_j extra bits."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from alloc_helpers import TEXT, make_llama
from torch import nn

from wquant.allocation import (
    CausalProbe,
    EncoderProbe,
    FisherEstimate,
    OutputProbe,
    TensorFisher,
    allocate,
    decide,
    expand_families,
    interpolate_curve,
    ladder_step,
    measure_candidates,
    measure_plan,
    measure_sensitivity,
    stored_values,
    substituted,
    uniform_plans,
    with_budget_candidates,
)

GAINS = (8.0, 1.0, 1.0, 1.0)  # branch 0 is the planted sensitive layer
WIDTH = 64
FORMATS = ("uniform@{b}/tensor:rms:bf16+coded", "int{b}/block32:absmax:bf16")
BITS = (2, 3, 4, 5, 6, 7, 8)


class Branches(nn.Module):
    """y = Σ_k g_k W_k x_k on disjoint input slices; its branches are the 'blocks' the probe replays."""

    def __init__(self, gains: tuple[float, ...]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(WIDTH, WIDTH, bias=False) for _ in gains)
        self.gains = gains

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.split(WIDTH, dim=-1)
        return sum(g * layer(p) for g, layer, p in zip(self.gains, self.layers, parts, strict=True))


class SquaredError(OutputProbe):
    """Mean ‖y − y_ref‖² per sample, so tensor k alone measures g_k² δ_kᵀ(XᵀX/N)δ_k ≈ g_k² ‖δ_k‖²."""

    def __init__(self, model: nn.Module, samples: int = 4096) -> None:
        x = torch.randn(samples, WIDTH * len(GAINS), generator=torch.Generator().manual_seed(1))
        super().__init__(model, list(x.split(1024)))

    def _output(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return model(batch).double()

    def _distortion(self, out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return (out - ref).square().sum(-1)


def flat_fisher(model: nn.Module) -> FisherEstimate:
    """A Fisher that sees no difference between the branches: the proxy misranks the planted layer."""
    diag = {f"layers.{k}.weight": torch.ones(WIDTH, WIDTH) for k in range(len(GAINS))}
    rows = tuple(
        TensorFisher(
            name, (WIDTH, WIDTH), WIDTH * WIDTH, 1.0, float(model.get_parameter(name).detach().square().mean().sqrt())
        )
        for name in diag
    )
    return FisherEstimate(rows, diag, "planted", 0, 1)


@pytest.fixture(scope="module")
def planted():  # noqa: ANN201
    model = Branches(GAINS).eval()
    probe = SquaredError(model)
    fisher = flat_fisher(model)
    table = measure_candidates(model, fisher, FORMATS, BITS)
    return model, probe, fisher, table


def test_measured_distortions_match_the_planted_oracle(planted) -> None:  # noqa: ANN001
    model, probe, fisher, table = planted
    measured = measure_sensitivity(model, table, probe, levels=(3.0, 5.0))
    for k, t in enumerate(measured.tensors):
        assert len(t.anchors) == 2
        for c in t.candidates:  # anchors measured, the rest interpolated: all within a few % of g² ‖δ‖²
            assert c.distortion == pytest.approx(GAINS[k] ** 2 * c.sq_error, rel=0.06)


def test_allocation_on_measured_costs_beats_every_uniform_plan_on_the_planted_layer(planted) -> None:  # noqa: ANN001
    model, probe, fisher, table = planted
    budget = 4.0
    table = with_budget_candidates(model, table, fisher, [budget])
    measured = measure_sensitivity(model, table, probe, levels=(3.0, 5.0))
    decision = decide(model, measured, probe, budget)
    assert decision.shipped is decision.allocation
    assert decision.allocation.plan.bits_per_param <= budget
    best = decision.best_uniform
    assert best is not None and best.plan.bits_per_param <= budget
    assert {c.plan.tensors[0].family for c in decision.uniform} == set(FORMATS)  # one uniform plan per family
    assert best.plan.bits_per_param > budget - 0.02  # the coded uniform plan lands on the budget
    # high rate: equal bits cost Σ g² vs the optimum's 4·GM(g²) at the same mean bits; the saving is
    # ½ log2(AM/GM) = 1.28 bit here, i.e. a distortion ratio of about 2^(2·1.28) = 5.9 before ladder rounding
    am = sum(g * g for g in GAINS) / len(GAINS)
    gm = math.prod(g * g for g in GAINS) ** (1 / len(GAINS))
    assert best.distortion / decision.allocation.distortion > 0.6 * (am / gm)
    bits = [t.bits_per_param for t in decision.allocation.plan.tensors]
    extra = bits[0] - sum(bits[1:]) / 3
    assert extra == pytest.approx(math.log2(GAINS[0]), abs=0.75)  # the derivable 3-bit difference
    # the proxy alone (flat Fisher) cannot see the planted layer and spends bits evenly
    proxy = allocate(measured, budget, "mean")
    assert measure_plan(model, proxy, probe) > 2 * decision.allocation.distortion


def test_a_losing_allocation_is_not_shipped(planted) -> None:  # noqa: ANN001
    model, probe, fisher, table = planted
    table = with_budget_candidates(model, table, fisher, [4.0])
    measured = measure_sensitivity(model, table, probe, levels=(3.0, 5.0))
    # swap the sensitivities: the allocation now starves the planted layer and must measure worse
    rows = list(measured.tensors)
    swapped = [
        replace(
            t, candidates=tuple(replace(c, distortion=c.distortion * (1 / 64 if k == 0 else 64)) for c in t.candidates)
        )
        for k, t in enumerate(rows)
    ]
    decision = decide(model, replace(measured, tensors=tuple(swapped)), probe, 4.0)
    best = decision.best_uniform
    assert best is not None and decision.allocation.distortion > best.distortion
    assert decision.shipped is best and "uniform plan is shipped" in decision.reason


def test_uniform_plans_pick_the_largest_fitting_plan_per_family(planted) -> None:  # noqa: ANN001
    _, _, _, table = planted
    plans = dict((p.tensors[0].family, p) for _, p in uniform_plans(table, 4.3))
    assert plans["int{b}/block32:absmax:bf16"].tensors[0].spec == "int3/block32:absmax:bf16"  # int4 costs 4.5
    coded = plans["uniform@{b}/tensor:rms:bf16+coded"]
    assert coded.bits_per_param <= 4.3 and all(t.family.startswith("uniform@") for t in coded.tensors)


def test_curve_is_log_linear_with_second_order_and_clamped_ends() -> None:
    curve = interpolate_curve([(1.0, 2.0), (4.0, 32.0)])  # slope 2 between the anchors
    assert curve(2.0) == pytest.approx(8.0)
    assert curve(0.5) == pytest.approx(1.0)  # below the smallest error: D ∝ u (second order)
    assert curve(8.0) == pytest.approx(128.0)  # beyond the largest: the last slope, clamped to ≤ 2
    steep = interpolate_curve([(1.0, 1.0), (2.0, 64.0)])
    assert steep(4.0) == pytest.approx(64.0 * 4.0)
    flat = interpolate_curve([(1.0, 1.0), (2.0, 1.5)])
    assert flat(4.0) == pytest.approx(3.0)  # slope at least 1 beyond the anchors
    noisy = interpolate_curve([(1.0, 3.0), (2.0, 2.0)])  # more error never costs less
    assert noisy(2.0) >= noisy(1.0)
    assert interpolate_curve([(1.0, 0.0), (2.0, 0.0)])(5.0) == 0.0  # an unused tensor costs nothing


def test_coded_templates_expand_to_a_ladder_of_fixed_steps() -> None:
    fams = expand_families(("uniform@{b}/tensor:rms:bf16+coded", "int{b}/channel:absmax:fp32"), (2, 3, 4))
    coded = [s for f, s in fams if f.startswith("uniform@")]
    assert coded == [f"uniform{ladder_step(b):g}/tensor:rms:bf16+coded" for b in (2, 2.5, 3, 3.5, 4)]
    assert [s for f, s in fams if f.startswith("int")] == [f"int{b}/channel:absmax:fp32" for b in (2, 3, 4)]
    assert ladder_step(4.0) == pytest.approx(math.sqrt(2 * math.pi * math.e) / 16, rel=1e-5)


@pytest.mark.parametrize("spec", ["uniform0.25/tensor:rms:bf16+coded", "uniform0.7/channel:rms:bf16+coded:g64"])
def test_stored_values_skip_the_lossless_coder_bit_for_bit(spec: str) -> None:
    from wquant.formats import quantize

    w = torch.randn(300, 96, generator=torch.Generator().manual_seed(5)).pow(3)
    assert torch.equal(stored_values(w, spec), quantize(w, spec).dequantize())


def _noise(model: nn.Module, name: str) -> torch.Tensor:
    w = model.get_parameter(name).detach()
    return w + 0.05 * w.std() * torch.randn(w.shape, generator=torch.Generator().manual_seed(2))


def test_replaying_earlier_blocks_gives_the_full_forward_numbers(char_tok, tiny_bert) -> None:  # noqa: ANN001
    llama = make_llama(char_tok)
    causal = CausalProbe(llama, char_tok, TEXT, window=32, max_windows=4, batch_size=2)
    texts = [line for line in TEXT.split(",") if len(line) > 10]
    encoder = EncoderProbe(tiny_bert, char_tok, texts, max_length=48, batch_size=3)
    for model, probe, last in ((llama, causal, "lm_head.weight"), (tiny_bert, encoder, None)):
        assert len(probe.blocks) == 2
        names = [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 2]
        for name in names:
            if name not in probe.skips:
                continue
            with substituted(model, {name: _noise(model, name)}):
                replayed, full = probe(model, perturbed=name), probe(model)
            assert replayed == pytest.approx(full, rel=1e-9, abs=1e-15), name
            assert full > 0 or "token_type" in name
        if last is not None:
            assert probe.skips[last] == 2  # the head runs after every block: all of them replayed
        layer1 = [n for n in probe.skips if ".1." in n]
        assert layer1 and all(probe.skips[n] == 1 for n in layer1)  # block 0 replayed for block 1's weights
        assert all(probe.skips[n] == 0 for n in probe.skips if "emb" in n)
        assert probe(model) == pytest.approx(0.0, abs=1e-12)  # weights restored after every substitution
