"""`wquant quantize` and `wquant eval` refuse bad input with one line and write nothing (tiny models on disk)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hostile.harness import Hostile, run_refused
from wquant.evaluate import char_tokenizer

TEXT = "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 30


def _lm(folder: Path, *, hidden: int = 32, nan: bool = False) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = char_tokenizer(TEXT)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                         architectures=["LlamaForCausalLM"])  # fmt: skip
    model = LlamaForCausalLM(config)
    if nan:
        with torch.no_grad():
            model.model.norm.weight.fill_(float("nan"))  # not quantized: NaN reaches the logits
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def lm(tmp: Path) -> None:
    _lm(tmp / "lm")
    (tmp / "text.txt").write_text(TEXT)


def lm_and_other_checkpoint(tmp: Path) -> None:
    from wquant.models import load_pretrained, quantize_, save_quantized

    lm(tmp)
    _lm(tmp / "wide", hidden=48)
    wide = load_pretrained(tmp / "wide")
    quantize_(wide.model, "int4/block16:absmax:bf16")
    save_quantized(wide.model, tmp / "wide-q")


def nan_lm(tmp: Path) -> None:
    _lm(tmp / "lm", nan=True)
    (tmp / "text.txt").write_text(TEXT)


def existing_out(tmp: Path) -> None:
    lm(tmp)
    (tmp / "q").mkdir()
    (tmp / "q" / "notes.txt").write_text("an earlier result")


def _quantize(*options: str) -> tuple[str, ...]:
    return ("quantize", "{tmp}/lm", "--out", "{tmp}/q", *options)


ROWS = [
    Hostile("quantize-exclude-everything", _quantize("-x", "*"), r"nothing to quantize", 2, "lm"),
    Hostile("quantize-existing-out", _quantize(), r"q exists and is not empty; pass --force", 2, "existing_out"),
    Hostile("quantize-out-is-a-file", ("quantize", "{tmp}/lm", "--out", "{tmp}/text.txt"),
            r"--out .*text\.txt is a file, not a folder", 2, "lm"),
    Hostile("quantize-gptq-without-calib", _quantize("--algorithm", "gptq"), r"needs --calib FILE", 2, "lm"),
    Hostile("quantize-unknown-algorithm", _quantize("--algorithm", "quip"), r"algorithm 'quip' unknown; valid: rtn",
            2, "lm"),
    Hostile("quantize-awq-without-calib", _quantize("--algorithm", "awq"), r"needs --calib FILE", 2, "lm"),
    Hostile("quantize-bad-activations", _quantize("--activations", "int8/token:static"),
            r"token activation scales follow each input, so they are dynamic", 2, "lm"),
    Hostile("quantize-static-activations-without-calib", _quantize("--activations", "int8/tensor:static"),
            r"static activation scales .* are calibrated: give calibration batches", 2, "lm"),
    Hostile("quantize-nupes-on-a-coded-grid", _quantize("--algorithm", "nupes", "-f", "uniform@3/tensor:rms+coded"),
            r"NUPES quantizes onto a power grid", 2, "lm"),
    Hostile("quantize-hqq-without-zero", _quantize("--algorithm", "hqq", "-f", "int4/block32:absmax:bf16"),
            r"HQQ moves each group's zero", 2, "lm"),
    Hostile("quantize-fp16-scales-of-tiny-weights", _quantize("-f", "int4/block16:absmax:fp16"),
            r"out of the range of fp16 scales", 2, "tiny_weights"),
    Hostile("quantize-bad-override", _quantize("-o", "lm_head"), r"--override 'lm_head' must be GLOB=SPEC", 2, "lm"),
    Hostile("quantize-bad-override-spec", _quantize("-o", "lm_head=int4/bogus"), r"override lm_head=int4/bogus", 2,
            "lm"),
    Hostile("quantize-bad-target", _quantize("-t", "conv"), r"targets \['conv'\] invalid", 2, "lm"),
    Hostile("eval-checkpoint-of-another-model", ("eval", "{tmp}/lm", "--quantized", "{tmp}/wide-q", "--text",
            "{tmp}/text.txt"), r"wide-q was not made from this model: .* weights differ", 2,
            "lm_and_other_checkpoint"),  # fmt: skip
    Hostile("eval-nan-perplexity", ("eval", "{tmp}/lm", "--text", "{tmp}/text.txt", "--window", "32", "--json"),
            r"logits contain NaN or Inf", 2, "nan_lm"),
    Hostile("eval-both-sources", ("eval", "{tmp}/lm", "--text", "{tmp}/text.txt", "-q", "{tmp}/lm", "-f", "nf4"),
            r"either --quantized DIR or --format SPEC", 2, "lm"),
]  # fmt: skip


def tiny_weights(tmp: Path) -> None:
    from transformers import LlamaForCausalLM

    lm(tmp)
    model = LlamaForCausalLM.from_pretrained(tmp / "lm")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(1e-9)
    model.save_pretrained(tmp / "lm")


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_refuses(row: Hostile, tmp_path: Path) -> None:
    if row.setup:
        globals()[row.setup](tmp_path)
    run_refused(row, tmp_path)
