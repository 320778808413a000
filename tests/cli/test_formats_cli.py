"""The `wquant formats` commands, driven as a user would (typer's runner), checked against independent math."""

import json
import math

import pytest
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


def test_compare_is_scale_invariant_and_names_formats_that_cannot_reach_the_magnitude(tmp_path):
    """Weights near 1e30: the float32 energy used to overflow (MSE nan, SQNR inf). Formats with fp32/e8m0 scales
    give the same relative error as at unit scale; fp16 scales saturate at 65504 (or flush to 0), so that format
    is named as failing and no misleading number is printed for it."""
    import torch
    from safetensors.torch import save_file

    unit = torch.randn(16, 256, generator=torch.Generator().manual_seed(2))
    for name, tensor in (("unit", unit), ("huge", unit * 2.0**100), ("tiny", unit * 2.0**-100)):
        save_file({"w": tensor}, str(tmp_path / f"{name}.safetensors"))
    specs = ["-f", "nf4", "-f", "mxfp4", "-f", "int4/block64:absmax:fp16"]

    def rows(name):
        argv = ["formats", "compare", "--dist", f"{tmp_path}/{name}.safetensors:w", *specs, "--json"]
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, result.output
        return {r["spec"]: r for r in map(json.loads, result.stdout.splitlines())}

    at_unit = rows("unit")
    for name in ("huge", "tiny"):
        scaled = rows(name)
        for spec in ("nf4/block64:absmax:fp32", "e2m1/block32:absmax:e8m0"):
            assert scaled[spec]["problem"] == "" and math.isfinite(scaled[spec]["sqnr_db"])
            assert scaled[spec]["rel_mse"] == pytest.approx(at_unit[spec]["rel_mse"], rel=1e-6)
        fp16 = scaled["int4/block64:absmax:fp16"]
        assert "cannot represent this magnitude" in fp16["problem"] and "fp16 scales" in fp16["problem"]
        assert fp16["rel_mse"] is None and fp16["sqnr_db"] is None
    assert at_unit["int4/block64:absmax:fp16"]["problem"] == ""
    table = runner.invoke(app, ["formats", "compare", "--dist", f"{tmp_path}/huge.safetensors:w", *specs])
    assert table.exit_code == 0 and "cannot represent" in table.stdout
    cells = {cell.strip().lower() for line in table.stdout.splitlines() if "│" in line for cell in line.split("│")}
    assert not cells & {"nan", "inf", "-inf"}
