"""The `wquant theory` sub-app: every command has an example in --help, prints a table, rejects bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from wquant.cli.theory import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["point", "phase-diagram", "vs-width", "vs-alpha", "amp"])
def test_help_has_an_example(command: str) -> None:
    res = runner.invoke(app, [command, "--help"])
    assert res.exit_code == 0 and "Example" in res.output


def test_point_prints_the_spec_reference_values() -> None:
    res = runner.invoke(
        app, ["point", "--bits", "2", "--width", "1", "--alpha", "0.5", "--sigma", "0.1", "--beta", "5"]
    )
    assert res.exit_code == 0, res.output
    assert "0.6339" in res.output and "RS" in res.output


def test_bad_input_exits_with_a_named_parameter() -> None:
    res = runner.invoke(app, ["point", "--alpha", "-1"])
    assert res.exit_code == 2 and "alpha" in res.output
    res = runner.invoke(app, ["point", "--levels", "0,1,1"])
    assert res.exit_code == 2 and "duplicates" in res.output


def test_small_phase_diagram_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "fig2.png"
    res = runner.invoke(
        app,
        [
            "phase-diagram",
            "--bits-max",
            "2",
            "--n-widths",
            "6",
            "--width-max",
            "3",
            "--lam",
            "0",
            "--beta",
            "20",
            "--alpha",
            "0.5",
            "--sigma",
            "0.1",
            "--jobs",
            "1",
            "--plot",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 1000 and "RS fraction" in res.output


def test_amp_command_small(tmp_path: Path) -> None:
    out = tmp_path / "amp.png"
    res = runner.invoke(
        app,
        [
            "amp",
            "--n",
            "500",
            "--seeds",
            "1",
            "--alpha",
            "0.5",
            "--sigma",
            "0.1",
            "--beta",
            "5",
            "--plot",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert out.exists() and "AMP" in res.output


def test_alpha_sweep_titles_do_not_claim_one_alpha() -> None:
    """alpha is the x axis of Fig. 5; the sweep's setting holds a placeholder alpha that must not be printed."""
    import math

    import numpy as np

    from wquant.theory.plots import plot_error_vs_alpha
    from wquant.theory.setting import RegressionSetting
    from wquant.theory.sweeps import AlphaSweep

    st = RegressionSetting(alpha=1.0, sigma=0.1, lam=1e-3, beta=math.inf)
    alphas = np.array([0.5, 1.0, 2.0])
    sweep = AlphaSweep(
        st,
        "uniform",
        1.5,
        "sample",
        np.array([2]),
        np.array([1.4]),
        alphas,
        np.array([[0.3, 0.5, 0.4]]),
        np.array([[0.1, 0.1, 0.1]]),
        np.array([0.2, 0.6, 0.3]),
        np.array([1.5]),
    )
    fig = plot_error_vs_alpha([sweep])
    title = fig.axes[0].get_title()
    assert "alpha=N/M=1" not in title and "sigma=0.1" in title and "lam=0.001" in title
    assert "alpha = N/M" in fig.axes[0].get_xlabel()


def test_plot_goes_to_a_new_folder_as_svg_and_atomically(tmp_path: Path) -> None:
    out = tmp_path / "new" / "folder" / "fig.svg"
    args = ["phase-diagram", "--bits-max", "1", "--n-widths", "3", "--lam", "0", "--jobs", "1", "--plot", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert out.read_text().lstrip().startswith("<?xml") and "<svg" in out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["fig.svg"]  # no temporary file left behind
