"""Fisher allocation over the ladder of GGUF types (`--formats gguf`): fallbacks where rows hold no whole
super-block, a plan on the budget, and bits that the applied model (and so a GGUF file) really stores."""

from __future__ import annotations

from alloc_helpers import TEXT, make_llama

from wquant.allocation import FisherConfig, allocate, estimate_fisher, measure_candidates
from wquant.allocation.advise import expand_formats
from wquant.formats.spec import FALLBACKS, GGUF_LADDER, PRESETS, parse_spec, preset_name
from wquant.models import model_bits, quantize_


def test_gguf_ladder_expands_to_the_presets() -> None:
    assert expand_formats(("gguf",), (4,)) == tuple(parse_spec(p).to_string() for p in GGUF_LADDER)


def test_allocation_over_gguf_types_lands_on_the_budget(char_tok) -> None:  # noqa: ANN001
    model = make_llama(char_tok)  # hidden 64: no row holds a 256-value super-block, so k-quants fall back
    fisher = estimate_fisher(model, char_tok, TEXT, "causal-lm", FisherConfig(window=32, max_windows=12))
    table = measure_candidates(model, fisher, ("gguf",), (4,))
    gguf_names = set(GGUF_LADDER) | set(FALLBACKS.values())
    for row in table.tensors:
        stored = {preset_name(c.spec) for c in row.candidates}
        assert stored <= gguf_names, stored
        assert "q2_k" not in stored and "iq4_nl" in stored  # Q2_K → IQ4_NL on 64-value rows
    plan = allocate(table, 6.0)
    assert plan.bits_per_param <= 6.0
    quantize_(model, plan.quantize_config())
    plan.check_applied(model)
    assert model_bits(model).bits == plan.total_bits
    assert {preset_name(t.spec) for t in plan.tensors} <= set(PRESETS)
