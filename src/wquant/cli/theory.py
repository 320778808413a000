"""`wquant theory ...`: replica analysis and AMP for linear regression with quantized weights.

alpha is N/M (weights per sample), the seed paper's convention; sigma is the label-noise standard deviation;
beta is the inverse temperature of the Gibbs measure (inf = zero-temperature ERM).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from wquant.cli.app import WquantApp, stdout_console
from wquant.errors import ParameterError
from wquant.io import check_output_file

app = WquantApp(help="Typical-case theory of linear regression with quantized weights.")
console = stdout_console()

Alpha = Annotated[
    float,
    typer.Option(help="alpha = N/M, weights per sample (paper's convention; > 1 is over-parameterised)."),
]
Sigma = Annotated[float, typer.Option(help="Label-noise standard deviation.")]
Lam = Annotated[float, typer.Option(help="L2 regularisation strength lam >= 0.")]
Beta = Annotated[float, typer.Option(help="Inverse temperature; 'inf' = zero-temperature ERM.")]
Cost = Annotated[
    str,
    typer.Option(
        help="Penalty placement: V1 (on quantized w), V2 (latent w, the paper's form), V3 (latent Gaussian prior)."
    ),
]
Quant = Annotated[str, typer.Option(help="uniform or power (non-uniform, power-law companded).")]
Gamma = Annotated[float, typer.Option(help="Companding exponent of the non-uniform grid.")]
Plot = Annotated[str | None, typer.Option("--plot", help="Write the figure to this .png, .pdf or .svg file.")]
Jobs = Annotated[int, typer.Option(help="Parallel workers (joblib).")]


FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
"""Figure formats --plot writes (chosen by the file name's suffix)."""
MAX_POINTS = 2000
"""Most grid points on one sweep axis (--n-widths, --n-alphas): beyond it a sweep runs for hours."""
MAX_SWEEP_BITS = 12
"""Most bits in a sweep: each extra bit doubles the levels, and so the work, of every point of a row."""
MAX_JOBS = 64
MAX_MC_N = 2000
"""Largest heat-bath sample: the sampler visits sites one by one in Python (O(N^2) work per sweep)."""


def _floats(text: str, name: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        vals = None
    if not vals:
        raise ParameterError(
            f"{name}={text!r} is invalid: {name} must be a comma-separated list of at least one number"
        )
    return vals


def _ints(text: str, name: str) -> list[int]:
    vals = _floats(text, name)
    if any(not v.is_integer() for v in vals):
        raise ParameterError(f"{name}={text!r} is invalid: {name} must be a comma-separated list of integers")
    return [int(v) for v in vals]


def _count(name: str, value: int, lo: int, hi: int, why: str = "") -> int:
    """An integer option within [lo, hi]; `why` says what the upper bound protects."""
    if not lo <= value <= hi:
        raise ParameterError(f"{name}={value} is invalid: {name} must be an integer in [{lo}, {hi}]{why}")
    return value


def _sweep_bits(bits: list[int], name: str) -> list[int]:
    for b in bits:
        _count(name, b, 1, MAX_SWEEP_BITS, " (each extra bit doubles a sweep's work)")
    return bits


def _plot_target(path: str | None) -> Path | None:
    """Check --plot before any work (suffix, folder, permissions); nothing is created by the check."""
    return None if not path else check_output_file(path, "--plot", FIGURE_SUFFIXES)


def _fmt(x: float) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.4g}"


def _setting(alpha: float, sigma: float, lam: float, beta: float, cost: str = "V1"):  # noqa: ANN202
    from wquant.theory.setting import RegressionSetting

    return RegressionSetting(alpha=alpha, sigma=sigma, lam=lam, beta=beta, cost=cost)  # type: ignore[arg-type]


def _save(fig: object, target: Path | None) -> None:
    if target is not None:
        from wquant.theory.plots import save

        console.print(f"figure written to {save(fig, target)}")  # type: ignore[arg-type]


@app.command()
def point(
    bits: Annotated[int, typer.Option(help="Bits b (2**b levels).")] = 2,
    width: Annotated[float, typer.Option(help="Quantization half-range omega.")] = 1.0,
    levels: Annotated[str | None, typer.Option(help="Custom level set, e.g. '-1,0,1' (overrides bits/width).")] = None,
    alpha: Alpha = 1.5,
    sigma: Sigma = 0.01,
    lam: Lam = 0.0,
    beta: Beta = 20.0,
    cost: Cost = "V1",
    quantizer: Quant = "uniform",
    gamma: Gamma = 1.5,
) -> None:
    """RS saddle point at one setting: order parameters, errors, AT value and phase.

    Example: wquant theory point --bits 2 --width 1 --alpha 0.5 --sigma 0.1 --beta 5
    """
    from wquant.theory._validation import check_gamma
    from wquant.theory.quantizers import custom_levels, make_levels
    from wquant.theory.rs import solve_rs

    st = _setting(alpha, sigma, lam, beta, cost)
    check_gamma(gamma)
    lv = custom_levels(_floats(levels, "levels")) if levels else make_levels(quantizer, bits, width, gamma)
    r = solve_rs(st, lv)
    t = Table(
        title=f"RS point: {lv.label}, alpha=N/M={st.alpha:g}, sigma={st.sigma:g}, lam={st.lam:g}, "
        f"beta={_fmt(st.beta)}, cost={st.cost}"
    )
    t.add_column("quantity")
    t.add_column("value", justify="right")
    rows = [
        ("m", r.m),
        ("q", r.q),
        ("Q", r.Q),
        ("chi = beta V", r.chi),
        ("training error", r.train_error),
        ("gen. error (Gibbs sample)", r.gen_error),
        ("gen. error (Gibbs mean)", r.gen_error_mean),
        ("AT eigenvalue", r.at_value),
        ("AT / beta (T=0)", r.at_slope),
    ]
    for name, val in rows:
        t.add_row(name, _fmt(val))
    t.add_row("phase", "RS" if r.rs_stable else "RSB")
    t.add_row("regime", r.regime)
    t.add_row("iterations / residual", f"{r.iterations} / {r.residual:.1e}")
    console.print(t)


@app.command("phase-diagram")
def phase_diagram_cmd(
    bits_max: Annotated[int, typer.Option(help="Bits 1..bits_max on the vertical axis.")] = 8,
    width_max: Annotated[float, typer.Option(help="Largest omega.")] = 10.0,
    n_widths: Annotated[int, typer.Option(help="Number of omega values.")] = 60,
    alpha: Alpha = 1.5,
    sigma: Sigma = 0.01,
    lam: Annotated[str, typer.Option(help="Comma-separated lam values, one row of panels each.")] = "0,1",
    beta: Beta = 20.0,
    gamma: Gamma = 1.5,
    jobs: Jobs = 2,
    plot: Plot = None,
) -> None:
    """RS/RSB phase diagram on the (b, omega) plane, uniform and non-uniform (the seed's Fig. 2 layout).

    Example: wquant theory phase-diagram --alpha 1.5 --sigma 0.01 --lam 0,1 --beta 20 --plot fig2.png
    """
    from wquant.theory._validation import check_gamma, check_width
    from wquant.theory.sweeps import phase_diagram

    _count("--bits-max", bits_max, 1, MAX_SWEEP_BITS, " (each extra bit doubles a row's work)")
    _count("--n-widths", n_widths, 1, MAX_POINTS)
    _count("--jobs", jobs, 1, MAX_JOBS)
    check_width(width_max, "--width-max")
    check_gamma(gamma)
    settings = [_setting(alpha, sigma, lam_v, beta) for lam_v in _floats(lam, "lam")]
    target = _plot_target(plot)
    widths = np.linspace(width_max / n_widths, width_max, n_widths)
    diagrams = []
    for st in settings:
        for kind in ("uniform", "power"):
            diagrams.append(phase_diagram(st, range(1, bits_max + 1), widths, kind, gamma, n_jobs=jobs))
    t = Table(
        title=f"RSB range of omega per b ('RS' = RS for all omega <= {width_max:g}), "
        f"alpha=N/M={alpha:g}, sigma={sigma:g}, beta={_fmt(beta)}"
    )
    t.add_column("b", justify="right")
    for pd in diagrams:
        kind = "uniform" if pd.kind == "uniform" else "non-unif."
        t.add_column(f"{kind} lam={pd.setting.lam:g}", justify="right")
    for i, b in enumerate(diagrams[0].bits):
        cells = []
        for pd in diagrams:
            rsb = pd.widths[pd.converged[i] & ~pd.rs[i]]
            cells.append("RS" if rsb.size == 0 else f"{rsb.min():.3g}-{rsb.max():.3g}")
        t.add_row(str(b), *cells)
    t.add_row("RS fraction", *[f"{pd.rs_fraction():.2f}" for pd in diagrams])
    console.print(t)
    if target is not None:
        from wquant.theory.plots import plot_phase_diagrams

        _save(plot_phase_diagrams(diagrams), target)


@app.command("vs-width")
def vs_width(
    bits: Annotated[str, typer.Option(help="Comma-separated bit depths.")] = "1,2,3,4",
    width_max: Annotated[float, typer.Option(help="Largest omega.")] = 6.0,
    n_widths: Annotated[int, typer.Option(help="Number of omega values.")] = 40,
    alpha: Alpha = 1.4,
    sigma: Annotated[str, typer.Option(help="Comma-separated noise std values, one panel each.")] = "0.01,1.0",
    lam: Lam = 0.01,
    beta: Beta = 20.0,
    gamma: Gamma = 1.5,
    estimator: Annotated[str, typer.Option(help="sample (a Gibbs sample) or mean (the Gibbs mean).")] = "sample",
    jobs: Jobs = 2,
    plot: Plot = None,
) -> None:
    """Generalization error vs omega per b, uniform and non-uniform, with the optimal omega (Fig. 4 layout).

    Example: wquant theory vs-width --alpha 1.4 --lam 0.01 --sigma 0.01,1.0 --beta 20 --plot fig4.png
    """
    from wquant.theory._validation import check_gamma, check_width
    from wquant.theory.sweeps import error_vs_width

    b_list = _sweep_bits(_ints(bits, "bits"), "bits")
    _count("--n-widths", n_widths, 1, MAX_POINTS)
    _count("--jobs", jobs, 1, MAX_JOBS)
    check_width(width_max, "--width-max")
    check_gamma(gamma)
    settings = [_setting(alpha, sg, lam, beta) for sg in _floats(sigma, "sigma")]
    target = _plot_target(plot)
    widths = np.linspace(width_max / n_widths, width_max, n_widths)
    pairs = []
    t = Table(title=f"optimal omega: alpha=N/M={alpha:g}, lam={lam:g}, beta={_fmt(beta)}, estimator={estimator}")
    for col in ("sigma", "quantizer", "b", "omega*", "E_g(omega*)", "AT at omega*", "phase", "RSB onset"):
        t.add_column(col, justify="right")
    for st in settings:
        uni = error_vs_width(st, b_list, widths, "uniform", gamma, estimator, n_jobs=jobs)
        non = error_vs_width(st, b_list, widths, "power", gamma, estimator, n_jobs=jobs)
        pairs.append((uni, non))
        for sweep in (uni, non):
            for i, b in enumerate(sweep.bits):
                rsb = np.flatnonzero(~(sweep.at_value[i] < 1.0))
                onset = _fmt(float(sweep.widths[rsb[0]])) if rsb.size else "-"
                t.add_row(
                    _fmt(st.sigma),
                    sweep.kind,
                    str(b),
                    _fmt(float(sweep.best_width[i])),
                    _fmt(float(sweep.best_error[i])),
                    _fmt(float(sweep.best_at[i])),
                    "RS" if sweep.best_is_rs[i] else "RSB",
                    onset,
                )
    console.print(t)
    if target is not None:
        from wquant.theory.plots import plot_error_vs_width

        _save(plot_error_vs_width(pairs), target)


@app.command("vs-alpha")
def vs_alpha(
    bits: Annotated[str, typer.Option(help="Comma-separated bit depths.")] = "2,3,4",
    widths: Annotated[
        str | None,
        typer.Option(help="Comma-separated omega per b; default: the optimal omega of each b at alpha = N/M = 0.5."),
    ] = None,
    alpha_min: Annotated[float, typer.Option(help="Smallest alpha = N/M.")] = 0.5,
    alpha_max: Annotated[float, typer.Option(help="Largest alpha = N/M.")] = 2.5,
    n_alphas: Annotated[int, typer.Option(help="Number of alpha values.")] = 60,
    sigma: Sigma = 0.1,
    lam: Lam = 1e-3,
    beta: Beta = math.inf,
    gamma: Gamma = 1.5,
    jobs: Jobs = 2,
    plot: Plot = None,
) -> None:
    """Generalization error vs alpha = N/M: double descent, quantized vs ridge (Fig. 5 layout).

    Example: wquant theory vs-alpha --bits 2,3,4 --sigma 0.1 --lam 0.001 --beta inf --plot fig5.png
    """
    from wquant.theory._validation import check_alpha, check_gamma, check_width
    from wquant.theory.sweeps import error_vs_alpha, optimal_width

    b_list = _sweep_bits(_ints(bits, "bits"), "bits")
    w_given = [check_width(w) for w in _floats(widths, "widths")] if widths else None
    if w_given is not None and len(w_given) != len(b_list):
        raise ParameterError(
            f"widths={widths!r} is invalid: widths must give one omega per bit depth ({len(b_list)} for bits={bits!r})"
        )
    check_alpha(alpha_min, "--alpha-min")
    check_alpha(alpha_max, "--alpha-max")
    _count("--n-alphas", n_alphas, 1, MAX_POINTS)
    _count("--jobs", jobs, 1, MAX_JOBS)
    check_gamma(gamma)
    st = _setting(1.0, sigma, lam, beta)
    target = _plot_target(plot)
    alphas = np.linspace(alpha_min, alpha_max, n_alphas)
    sweeps = []
    for kind in ("uniform", "power"):
        w_list = w_given or [optimal_width(st.with_(alpha=0.5), b, kind, gamma) for b in b_list]
        sweeps.append(error_vs_alpha(st, alphas, b_list, w_list, kind, gamma, n_jobs=jobs))
    t = Table(title=f"double-descent peak: sigma={sigma:g}, lam={lam:g}, beta={_fmt(beta)} (alpha = N/M)")
    for col in ("quantizer", "b", "omega", "peak alpha", "peak E_g", "interp. threshold alpha_c"):
        t.add_column(col, justify="right")
    for sweep in sweeps:
        peaks, ridge_peak = sweep.peak_alpha()
        for i, b in enumerate(sweep.bits):
            row = sweep.gen_error[i]
            j = int(np.argmin(np.abs(sweep.alphas - peaks[i]))) if np.isfinite(peaks[i]) else None
            t.add_row(
                sweep.kind,
                str(b),
                _fmt(float(sweep.widths[i])),
                _fmt(float(peaks[i])),
                _fmt(float(row[j])) if j is not None else "-",
                _fmt(float(sweep.interpolation_alpha[i])),
            )
    peaks, ridge_peak = sweeps[0].peak_alpha()
    j = int(np.argmin(np.abs(alphas - ridge_peak))) if np.isfinite(ridge_peak) else None
    t.add_row(
        "ridge",
        "inf",
        "-",
        _fmt(ridge_peak),
        _fmt(float(sweeps[0].ridge_error[j])) if j is not None else "-",
        "1",
    )
    console.print(t)
    if target is not None:
        from wquant.theory.plots import plot_error_vs_alpha

        _save(plot_error_vs_alpha(sweeps), target)


@app.command()
def amp(
    n: Annotated[int, typer.Option(help="Number of weights N.")] = 4000,
    seeds: Annotated[int, typer.Option(help="Number of random instances (seeds 0..seeds-1).")] = 3,
    bits: Annotated[int, typer.Option(help="Bits b.")] = 2,
    width: Annotated[float, typer.Option(help="Quantization half-range omega.")] = 1.0,
    alpha: Alpha = 1.5,
    sigma: Sigma = 0.01,
    lam: Lam = 0.0,
    beta: Beta = 20.0,
    cost: Cost = "V1",
    quantizer: Quant = "uniform",
    gamma: Gamma = 1.5,
    damping: Annotated[float, typer.Option(help="AMP damping in [0, 1).")] = 0.0,
    mc_n: Annotated[
        int,
        typer.Option(
            help="If > 0, also run heat-bath Monte Carlo on an instance of this size and compare marginals with AMP."
        ),
    ] = 0,
    plot: Plot = None,
) -> None:
    """Finite-beta AMP on simulated instances against the RS prediction (and optionally Monte Carlo).

    Example: wquant theory amp --n 4000 --seeds 3 --bits 2 --width 1 --alpha 0.5 --sigma 0.1 --beta 5
    """
    from wquant.theory._validation import check_damping, check_gamma
    from wquant.theory.amp import run_amp, state_evolution
    from wquant.theory.quantizers import make_levels
    from wquant.theory.rs import solve_rs
    from wquant.theory.simulate import check_memory, fresh_data_error, heat_bath_sampler, make_instance, n_samples_for

    st = _setting(alpha, sigma, lam, beta, cost)
    if st.zero_temperature:
        raise ParameterError("--beta=inf is invalid for amp: AMP and the sampler need a finite beta")
    check_gamma(gamma)
    check_damping(damping)
    _count("--n", n, 2, 10**9)
    _count("--seeds", seeds, 1, 100)
    _count("--mc-n", mc_n, 0, MAX_MC_N, " (the heat-bath sampler visits sites one by one; 0 = no Monte Carlo)")
    if mc_n == 1:
        raise ParameterError(f"--mc-n=1 is invalid: --mc-n must be 0 (no Monte Carlo) or in [2, {MAX_MC_N}]")
    m = n_samples_for(st, n)
    what = f"an instance with N={n} weights and M={m} samples (alpha=N/M={alpha:g})"
    check_memory(4 * m * n, what, "use a smaller --n or a larger --alpha")  # before any work
    lv = make_levels(quantizer, bits, width, gamma)
    target = _plot_target(plot)
    rs = solve_rs(st, lv)
    runs, fresh = [], []
    for seed in range(seeds):
        inst = make_instance(st, n, seed)
        r = run_amp(inst, lv, damping=damping)
        runs.append(r)
        fresh.append(fresh_data_error(inst, r.w_mean, n_test=2000, seed=10_000 + seed)[1])
    t = Table(
        title=f"AMP (N={n}, {seeds} seeds) vs RS: {lv.label}, alpha=N/M={alpha:g}, sigma={sigma:g}, "
        f"lam={lam:g}, beta={_fmt(beta)}; RS phase: {'RS' if rs.rs_stable else 'RSB'} "
        f"(AT={rs.at_value:.3g})"
    )
    for col in ("quantity", "RS theory", "AMP mean", "AMP sd", "diff %"):
        t.add_column(col, justify="right")
    rows = [
        ("m", rs.m, [r.m for r in runs]),
        ("q", rs.q, [r.q for r in runs]),
        ("Q", rs.Q, [r.Q for r in runs]),
        ("chi", rs.chi, [r.chi for r in runs]),
        ("gen. error, fresh data (Gibbs mean)", rs.gen_error_mean, fresh),
        ("iterations", math.nan, [float(r.iterations) for r in runs]),
    ]
    for name, theory, vals in rows:
        mean, sd = float(np.mean(vals)), float(np.std(vals))
        diff = 100.0 * (mean / theory - 1.0) if math.isfinite(theory) and theory != 0.0 else math.nan
        t.add_row(name, _fmt(theory), _fmt(mean), _fmt(sd), _fmt(diff))
    console.print(t)
    if mc_n > 0:
        inst = make_instance(st, mc_n, 0)
        a = run_amp(inst, lv, damping=max(damping, 0.3))
        mc = heat_bath_sampler(inst, lv, n_sweeps=600, burn_in=150, n_chains=2, seed=1)
        corr = float(np.corrcoef(a.w_mean, mc.mean[:, 0])[0, 1])
        console.print(
            f"Monte Carlo (N={mc_n}, 2 chains, 600 sweeps): corr(AMP mean, MC mean)={corr:.4f}; "
            f"m AMP={a.m:.4f} MC={mc.m[0]:.4f}; q between chains={mc.q_between:.4f} vs "
            f"self={mc.q_self.min():.4f}"
        )
    if target is not None:
        from wquant.theory.plots import plot_amp_vs_state_evolution

        _save(plot_amp_vs_state_evolution([r.history for r in runs], state_evolution(st, lv, 12)), target)
