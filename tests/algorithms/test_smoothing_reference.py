"""Smoothing scales beside llm-compressor's SmoothQuant and AWQ modifiers on the same tiny Llama and the same tokens.

llm-compressor pins its own transformers, so this runs in its venv (skips elsewhere):
    /tmp/llmc-venv/bin/pip install scipy typer rich matplotlib joblib constriction pytest hypothesis
    PYTHONPATH=src /tmp/llmc-venv/bin/python -m pytest tests/algorithms/test_smoothing_reference.py

The scales are read back from the weights llm-compressor rewrote (norm weight before / after; o_proj and
down_proj columns after / before). Differences, explained:
* SmoothQuant: llm-compressor measures an activation channel by max − min and a weight column by 2·max|W|; wquant
  (the paper) by max|X| and max|W|. From wquant's statistics in llm-compressor's definition the scales agree to
  1e-4; in the paper's they differ by ((max − min)/(2·max|X|))^α (equal for channels symmetric about 0).
* AWQ: for o_proj (after v_proj) and down_proj (after up_proj) both minimise the same layer output error with the
  same W4A16_ASYM rounding, so the scales agree to 1e-4. For q/k/v and gate/up llm-compressor measures the
  attention / MLP block output, wquant the sum of the group's layer output errors (tr ΔW·H·ΔWᵀ, no block forward
  per grid point); both pick from the same scale family, often a different α.
"""

from __future__ import annotations

import pytest
import torch

llmcompressor = pytest.importorskip("llmcompressor")

from wquant.algorithms import AWQConfig, awq_scales, migration_scales  # noqa: E402
from wquant.evaluate import char_tokenizer  # noqa: E402
from wquant.models.calibration import _run, group_inputs  # noqa: E402

GROUP = 32


def _model(folder) -> torch.nn.Module:
    """The tiny Llama saved with a tokenizer and loaded back: oneshot reads its processor from the model's folder."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64,
                         tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # salient channels: a few embedding dimensions 10× larger, as in trained LLMs
        model.model.embed_tokens.weight[:, :4] *= 10
    model.save_pretrained(folder)
    char_tokenizer("".join(chr(32 + i) for i in range(90))).save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _ids() -> torch.Tensor:
    return torch.randint(0, 96, (16, 32), generator=torch.Generator().manual_seed(1))


def _oneshot(model: torch.nn.Module, recipe: list[object]) -> None:
    from llmcompressor import oneshot
    from llmcompressor.pipelines.cache import IntermediatesCache
    from torch.utils.data import DataLoader

    IntermediatesCache.pin_memory = lambda self, *a, **k: None  # CPU only: nothing to pin for (see benchmarks)
    ids = _ids()
    rows = [{"input_ids": ids[i : i + 1], "attention_mask": torch.ones_like(ids[i : i + 1])} for i in range(len(ids))]
    oneshot(model=model, dataset=DataLoader(rows, batch_size=None), recipe=recipe, num_calibration_samples=len(rows),
            pipeline="sequential")  # fmt: skip


def _statistics(model: torch.nn.Module) -> dict[tuple[str, ...], object]:
    paths = [p for p, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    ids = _ids()
    passes = [(lambda i=i: _run(model, ids[i : i + 1]), None) for i in range(len(ids))]
    with torch.no_grad():
        return {tuple(g): s for g, s in group_inputs(model, paths, passes)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()).abs() / b.double().abs()).max())


def test_smoothquant_scales_match_llm_compressor_in_its_range_definition(tmp_path) -> None:
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    model = _model(tmp_path)
    stats = _statistics(model)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    _oneshot(model, [SmoothQuantModifier(smoothing_strength=0.5)])
    after = dict(model.named_parameters())
    for group, norm in [(("q_proj", "k_proj", "v_proj"), "input_layernorm"),
                        (("gate_proj", "up_proj"), "post_attention_layernorm")]:  # fmt: skip
        paths = next(g for g in stats if g[0].endswith(group[0]))
        theirs = before[f"model.layers.0.{norm}.weight"] / after[f"model.layers.0.{norm}.weight"].detach()
        low, high = stats[paths].value_range()
        wmax = torch.stack([before[f"{p}.weight"].abs().amax(0) for p in paths]).amax(0)
        assert _rel(migration_scales(high - low, 2 * wmax, 0.5), theirs) < 1e-4


def test_awq_scales_match_llm_compressor_where_the_objectives_coincide(tmp_path) -> None:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    model = _model(tmp_path)
    stats = _statistics(model)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    args = QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group", group_size=GROUP)
    scheme = {"group_0": QuantizationScheme(targets=["Linear"], weights=args)}
    _oneshot(model, [AWQModifier(duo_scaling=True), QuantizationModifier(config_groups=scheme, ignore=["lm_head"])])
    after = dict(model.named_parameters())
    cfg = AWQConfig(f"int4:unsigned/block{GROUP}:zeropoint:fp32")
    for layer in ("self_attn.o_proj", "mlp.down_proj"):
        path = f"model.layers.0.{layer}"
        theirs = (after[f"{path}.weight"].detach() / before[f"{path}.weight"]).median(dim=0).values
        ours = awq_scales([before[f"{path}.weight"]], stats[(path,)], cfg).scales
        assert _rel(ours, theirs) < 1e-4
