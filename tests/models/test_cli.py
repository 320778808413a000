"""The models CLI (quantize / eval / train-lm) through typer's CliRunner on the sub-app itself."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from wquant.cli.models import app
from wquant.models import load_quantized, read_manifest

runner = CliRunner()


@pytest.mark.parametrize("command", ["quantize", "eval", "train-lm"])
def test_help_has_examples(command) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Examples" in result.output


def test_quantize_then_eval(lm_dir, text_file, tmp_path) -> None:
    out = tmp_path / "q"
    result = runner.invoke(app, ["quantize", str(lm_dir), "--format", "int4:unsigned/block16:minmax:bf16",
                                 "--override", "lm_head=int8/channel:absmax:bf16", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    body = read_manifest(out)
    assert body["packed"]["lm_head.qweight"]["spec"] == "int8/channel:absmax:bf16"
    assert body["packed"]["model.layers.0.mlp.up_proj.qweight"]["spec"] == "int4:unsigned/block16:minmax:bf16"
    assert not any("embed" in key for key in body["packed"])  # embeddings are not a default target
    assert (out / "tokenizer.json").is_file()
    load_quantized(out)
    again = runner.invoke(app, ["quantize", str(lm_dir), "--out", str(out)])  # refused before loading anything
    assert again.exit_code == 2 and "--force" in again.stderr
    result = runner.invoke(app, ["eval", str(lm_dir), "--quantized", str(out), "--text", str(text_file),
                                 "--window", "32", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kl"] > 0 and data["quantized"]["bits_per_param"] < 32 and data["reference"]["bits_per_param"] == 32
    result = runner.invoke(app, ["eval", str(lm_dir), "--text", str(text_file), "--window", "32"])
    assert result.exit_code == 0 and "perplexity" in result.output


def test_train_lm(text_file, tmp_path) -> None:
    args = ["train-lm", str(text_file), "--out", str(tmp_path / "lm"), "--steps", "2", "--hidden-size", "16",
            "--layers", "1", "--context", "16", "--batch-size", "2"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lm" / "model.safetensors").is_file() and (tmp_path / "lm" / "tokenizer.json").is_file()


def test_bad_inputs_exit_2_with_a_message(lm_dir, text_file, tmp_path) -> None:
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    cases = [
        (["quantize", str(tmp_path), "--out", str(tmp_path / "o")], "no config.json"),
        (["quantize", str(lm_dir), "--override", "nospec", "--out", str(tmp_path / "o")], "GLOB=SPEC"),
        (["quantize", str(lm_dir), "--format", "int4/block0", "--out", str(tmp_path / "o")], "block size"),
        (["eval", str(lm_dir), "--text", str(latin)], "not UTF-8"),
        (["eval", str(lm_dir), "--text", str(tmp_path / "none.txt")], "does not exist"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
