"""`wquant theory ...` refuses bad input with one line, writes nothing, and refuses --plot before any work.

Each row was a traceback, a hang, a silent wrong answer or a late refusal before (noted per group), except the
last group, which already refused and must keep doing so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import wquant.theory.rs
import wquant.theory.sweeps
from hostile.harness import Hostile, run_refused

SMALL_PD = ("theory", "phase-diagram", "--bits-max", "1", "--n-widths", "3", "--jobs", "1")
ROWS = [
    # silent wrong answers: reported "converged" with impossible numbers (m > sqrt(q), negative errors)
    Hostile("point-alpha-1e-6", ("theory", "point", "--alpha", "1e-6"),
            r"needs ~.* grid nodes, above the limit .* raise alpha=N/M .* or use beta=inf", 1),
    Hostile("point-width-1e-300", ("theory", "point", "--width", "1e-300"), r"width=1e-300 is invalid: .*\[1e-06", 2),
    Hostile("point-beta-1e300", ("theory", "point", "--beta", "1e300"), r"beta=1e\+300 is invalid: .* or inf", 2),
    Hostile("point-levels-1e300", ("theory", "point", "--levels", "0,1e300"), r"largest magnitude is in \[1e-06", 2),
    # tracebacks
    Hostile("point-sigma-1e200", ("theory", "point", "--sigma", "1e200"), r"sigma=1e\+200 is invalid", 2),
    Hostile("phase-diagram-empty-lam", (*SMALL_PD, "--lam", ""), r"lam='' is invalid: .*at least one number", 2),
    Hostile("vs-width-empty-bits", ("theory", "vs-width", "--bits", ""), r"bits='' is invalid", 2),
    Hostile("phase-diagram-bits-max-0", ("theory", "phase-diagram", "--bits-max", "0"),
            r"--bits-max=0 is invalid: --bits-max must be an integer in \[1, 12\]", 2),
    Hostile("phase-diagram-n-widths-0", ("theory", "phase-diagram", "--n-widths", "0"),
            r"--n-widths=0 is invalid: .*\[1, 2000\]", 2),
    Hostile("phase-diagram-jobs-0", ("theory", "phase-diagram", "--jobs", "0"), r"--jobs=0 is invalid: .*\[1, 64\]", 2),
    # memory and hangs: a 596 GiB design, a 10^9-weight instance, a 10^5-site Python sampler
    Hostile("amp-alpha-1e-4", ("theory", "amp", "--alpha", "1e-4"),
            r"M=40000000 samples .* needs about .* GiB but only .* GiB is available.*larger --alpha", 2),
    Hostile("amp-n-1e9", ("theory", "amp", "--n", "1000000000"), r"N=1000000000 weights .* needs about .* GiB", 2),
    Hostile("amp-mc-n-1e5", ("theory", "amp", "--mc-n", "100000"), r"--mc-n=100000 is invalid: .*\[0, 2000\]", 2),
    Hostile("amp-seeds-0", ("theory", "amp", "--seeds", "0"), r"--seeds=0 is invalid", 2),
    Hostile("vs-alpha-n-alphas-0", ("theory", "vs-alpha", "--n-alphas", "0"), r"--n-alphas=0 is invalid", 2),
    Hostile("amp-beta-inf-is-bad-input", ("theory", "amp", "--beta", "inf"), r"--beta=inf is invalid for amp", 2),
    Hostile("point-gamma-collapses-levels", ("theory", "point", "--quantizer", "power", "--gamma", "1e-300"),
            r"gamma=1e-300 is invalid: .*\[0.01, 100\]", 2),
    # --plot refused before any work (the setup makes every solver raise if called)
    Hostile("plot-parent-is-a-file", (*SMALL_PD, "--plot", "{tmp}/file.txt/fig.png"),
            r"cannot write --plot=.*file\.txt/fig\.png.*file\.txt is a file, not a folder; choose another", 2,
            "no_work"),
    Hostile("plot-unknown-suffix", (*SMALL_PD, "--plot", "{tmp}/fig.gif"),
            r"--plot=.*fig\.gif' is invalid: the file must end in \.png, \.pdf, \.svg", 2, "no_work"),
    Hostile("plot-no-suffix", ("theory", "vs-width", "--plot", "{tmp}/fig"), r"must end in \.png", 2, "no_work"),
    Hostile("plot-vs-alpha-parent-is-a-file", ("theory", "vs-alpha", "--plot", "{tmp}/file.txt/f.svg"),
            r"file\.txt is a file, not a folder", 2, "no_work"),
    Hostile("plot-amp-unknown-suffix", ("theory", "amp", "--plot", "{tmp}/a.jpeg"), r"must end in \.png", 2,
            "no_work"),
    # already refused before this change
    Hostile("point-alpha-negative", ("theory", "point", "--alpha", "-1"), r"alpha=-1\.0 is invalid", 2),
    Hostile("point-duplicate-levels", ("theory", "point", "--levels", "0,1,1"), r"duplicates: \[1\.0\]", 2),
    Hostile("point-bits-17", ("theory", "point", "--bits", "17"), r"bits=17 is invalid: .*\[1, 16\]", 2),
    Hostile("point-unknown-cost", ("theory", "point", "--cost", "V9"), r"cost='V9' is invalid", 2),
    Hostile("point-beta-nan", ("theory", "point", "--beta", "nan"), r"beta=nan is invalid", 2),
]  # fmt: skip


def no_work(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file where a folder is expected, and solvers that fail the test if the command starts computing."""
    (tmp / "file.txt").write_text("not a folder")

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("the command started computing before refusing its --plot")

    for module, name in [
        (wquant.theory.sweeps, "phase_diagram"),
        (wquant.theory.sweeps, "error_vs_width"),
        (wquant.theory.sweeps, "error_vs_alpha"),
        (wquant.theory.sweeps, "optimal_width"),
        (wquant.theory.rs, "solve_rs"),
    ]:
        monkeypatch.setattr(module, name, started)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_refuses(row: Hostile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if row.setup:
        globals()[row.setup](tmp_path, monkeypatch)
    run_refused(row, tmp_path)
