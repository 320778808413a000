"""`wquant quantize --algorithm awq|smoothquant|zeroquant` and `--activations` on a tiny causal LM."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from tests.cli.test_quantize_algorithms_cli import TEXT, make_lm
from wquant.cli.main import app
from wquant.models import QuantizedLinear, load_quantized

runner = CliRunner()


def _quantize(tmp_path, name: str, *options: str) -> tuple[int, str]:
    args = ["quantize", str(tmp_path / "lm"), "--calib", str(tmp_path / "calib.txt"), "--nsamples", "4",
            "--seqlen", "32", "-x", "lm_head", "--out", str(tmp_path / name), *options]  # fmt: skip
    result = runner.invoke(app, args)
    return result.exit_code, result.output


def test_smoothing_algorithms_and_activation_specs_through_the_cli(tmp_path) -> None:
    torch.set_num_threads(1)
    make_lm(tmp_path / "lm")
    (tmp_path / "calib.txt").write_text(TEXT)
    code, out = _quantize(tmp_path, "sq", "--algorithm", "smoothquant", "-f", "int8/channel:absmax:fp32")
    assert code == 0, out
    assert "quantized as int8/token:absmax:fp32:dynamic: 9 bits per activation element" in out  # 8 + 32/32
    model = load_quantized(tmp_path / "sq")
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert layers and all(m.input_quant is not None for m in layers)
    manifest = json.loads((tmp_path / "sq" / "wquant-manifest.json").read_text())["body"]
    assert {m.get("activations") for m in manifest["modules"].values()} == {"int8/token:absmax:fp32:dynamic"}
    code, out = _quantize(tmp_path, "awq", "--algorithm", "awq", "-f", "int4:unsigned/block32:zeropoint:fp16")
    assert code == 0, out
    assert all(m.input_quant is None for m in load_quantized(tmp_path / "awq").modules()
               if isinstance(m, QuantizedLinear))  # fmt: skip
    code, out = _quantize(tmp_path, "zq", "--algorithm", "zeroquant", "-f", "int8/block32:absmax:fp16", "-a", "none")
    assert code == 0, out
    assert all(m.input_quant is None for m in load_quantized(tmp_path / "zq").modules()
               if isinstance(m, QuantizedLinear))  # fmt: skip
    code, out = _quantize(tmp_path, "st", "-f", "int8/channel:absmax:fp32", "-a", "int8/tensor:static")
    assert code == 0, out
    scales = [m.input_quant.scale for m in load_quantized(tmp_path / "st").modules() if isinstance(m, QuantizedLinear)]
    assert scales and all(s is not None and float(s) > 0 for s in scales)
