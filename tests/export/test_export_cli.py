"""`wquant export` end to end on a folder saved by wquant: the file is written, refusals are clean errors."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from wquant.cli.main import app
from wquant.evaluate.testbed import char_tokenizer
from wquant.models import QuantizeConfig, quantize_, save_quantized

gguf = pytest.importorskip("gguf")
runner = CliRunner()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):  # noqa: ANN001, ANN201
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer("abc def\n")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    quantize_(model, QuantizeConfig("q4_0", overrides={"*down_proj": "q8_0"}))
    folder = tmp_path_factory.mktemp("saved") / "q"
    save_quantized(model, folder, tokenizer=tok)
    return folder


def test_export_gguf_from_a_saved_folder(saved, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "m.gguf"
    result = runner.invoke(app, ["export", str(saved), "--to", "gguf", "--out", str(out), "--float-type", "f16"])
    assert result.exit_code == 0, result.output
    assert "Q4_0" in result.output and "Q8_0" in result.output
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.ffn_down.weight"] == "Q8_0" and types["token_embd.weight"] == "F16"
    again = runner.invoke(app, ["export", str(saved), "--to", "gguf", "--out", str(out)])
    assert again.exit_code != 0 and "--force" in again.output


def test_export_refusals_are_clean(saved, tmp_path) -> None:  # noqa: ANN001
    result = runner.invoke(app, ["export", str(saved), "--to", "onnx", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "gguf" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["export", str(saved), "--to", "gptq", "--out", str(tmp_path / "g")])
    assert result.exit_code != 0 and "exportable specs" in result.output
