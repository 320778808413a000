"""The `wquant formats` commands, driven as a user would (typer's runner), checked against independent math."""

import json
import math

from typer.testing import CliRunner

from wquant.cli.main import app

runner = CliRunner()


def test_compare_json_reports_gaussian_bound_gap():
    result = runner.invoke(
        app, ["formats", "compare", "--dist", "normal", "-f", "int8/channel:absmax:fp32", "-f", "mxfp4", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [r["spec"] for r in rows] == ["int8/channel:absmax:fp32", "e2m1/block32:absmax:e8m0"]
    for r in rows:
        # independent: Gaussian R(D) = ½ log2(1/D) for unit variance
        assert math.isclose(r["gap_bits"], r["bits_per_param"] - 0.5 * math.log2(1 / r["rel_mse"]), abs_tol=0.01)
        assert math.isclose(r["sqnr_db"], -10 * math.log10(r["rel_mse"]), rel_tol=1e-9)
    assert rows[1]["bits_per_param"] == 4.25


def test_compare_on_a_safetensors_tensor(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"layer.weight": torch.randn(64, 256, generator=torch.Generator().manual_seed(1))}, str(path))
    result = runner.invoke(app, ["formats", "compare", "--dist", f"{path}:layer.weight", "-f", "nf4", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert row["bits_per_param"] == 4.5 and 0 < row["rel_mse"] < 0.02
    missing = runner.invoke(app, ["formats", "compare", "--dist", f"{path}:nope"])
    assert missing.exit_code == 2 and "has no tensor 'nope'" in missing.output


def test_bad_spec_exits_2_with_the_valid_forms():
    result = runner.invoke(app, ["formats", "compare", "-f", "int4/rows"])
    assert result.exit_code == 2
    assert "valid: tensor, channel, block<B>" in result.output


def test_list_shows_presets_with_exact_bits():
    result = runner.invoke(app, ["formats", "list"])
    assert result.exit_code == 0
    assert "mxfp4" in result.output and "4.2500" in result.output


def test_compare_plots_rate_distortion(tmp_path):
    target = tmp_path / "rd.png"
    result = runner.invoke(
        app, ["formats", "compare", "-f", "uniform@2.5/tensor:rms+coded", "-f", "int3", "--plot", str(target), "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.strip().splitlines() if line.startswith("{")]
    coded = rows[0]
    assert coded["spec"].startswith("uniform0.") and 2.5 * 0.995 <= coded["bits_per_param"] <= 2.5
    assert abs(coded["gap_bits"] - 0.2546) < 0.05  # ECSQ sits ½·log2(πe/6) bits above the Gaussian R(D)
    assert target.stat().st_size > 10_000 and target.read_bytes()[:4] == b"\x89PNG"
