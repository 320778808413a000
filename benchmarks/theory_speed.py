"""Speed of the theory engine: one RS point, an 8 x 60 phase diagram, AMP at N = 10^4.

Prints a markdown table (median of repeats) and, with --write, inserts/replaces the "## Theory engine" section
of BENCHMARKS.md at the repo root. Targets on 2 cores: phase diagram < 30 s, AMP N = 10^4 < 10 s.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, median_time, replace_section  # noqa: E402

from wquant.theory.amp import run_amp
from wquant.theory.quantizers import uniform_levels
from wquant.theory.rs import solve_rs
from wquant.theory.setting import RegressionSetting
from wquant.theory.simulate import make_instance
from wquant.theory.sweeps import phase_diagram

FIG2 = RegressionSetting(alpha=1.5, sigma=0.01, lam=0.0, beta=20.0)  # the seed's Fig. 2 (sigma, alpha)
SPEC = RegressionSetting(alpha=0.5, sigma=0.1, lam=0.0, beta=20.0)  # theory.md's M/N = 2 tables


def _amp_n10k() -> None:
    inst = make_instance(FIG2, 10_000, seed=0)
    run_amp(inst, uniform_levels(2, 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="update the Theory engine section of BENCHMARKS.md")
    args = parser.parse_args()
    widths = np.linspace(10 / 60, 10.0, 60)
    cases: list[tuple[str, Callable[[], object], int]] = [
        (
            "RS point (b=2, omega=1, beta=20)",
            lambda: solve_rs(FIG2, uniform_levels(2, 1.0)),
            5 * args.repeats,
        ),
        (
            "phase diagram 8 x 60, alpha=N/M=1.5 (Fig. 2)",
            lambda: phase_diagram(FIG2, range(1, 9), widths, n_jobs=args.jobs),
            args.repeats,
        ),
        (
            "phase diagram 8 x 60, alpha=N/M=0.5 (theory.md F-A)",
            lambda: phase_diagram(SPEC, range(1, 9), widths, n_jobs=args.jobs),
            args.repeats,
        ),
        ("AMP N=10^4 (M=6667, incl. instance generation)", _amp_n10k, args.repeats),
    ]
    rows = []
    for name, fn, rep in cases:
        med, times = median_time(fn, rep)  # one warm-up run first (imports, joblib workers)
        rows.append(f"| {name} | {med:.3f} | {min(times):.3f} | {rep} |")
        print(rows[-1], flush=True)
    machine = f"{machine_line()}, numpy {np.__version__}, joblib n_jobs={args.jobs}"
    table = "\n".join(["| case | median s | min s | repeats |", "|---|---:|---:|---:|", *rows])
    body = (
        f"`python benchmarks/theory_speed.py --write` on {machine}. Targets (2 cores): phase diagram < 30 s, "
        "AMP N = 10^4 < 10 s.\n\n" + table + "\n"
    )
    print()
    print(body)
    if args.write:
        replace_section("Theory engine", body)


if __name__ == "__main__":
    main()
