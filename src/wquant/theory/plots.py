"""Figures in the layout of the seed paper's Figs. 2 (phase diagrams), 4 (error vs omega) and 5 (error vs
alpha), plus AMP against state evolution. Agg backend: files only, no display needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from wquant.io import atomic_write  # noqa: E402
from wquant.theory.setting import RegressionSetting  # noqa: E402
from wquant.theory.sweeps import AlphaSweep, PhaseDiagram, WidthSweep  # noqa: E402


def _setting_text(st: RegressionSetting, with_alpha: bool = True) -> str:
    """Panel title text; `with_alpha=False` where alpha is the x axis (an alpha sweep's setting holds only a
    placeholder alpha)."""
    beta = "inf" if np.isinf(st.beta) else f"{st.beta:g}"
    alpha = f"alpha=N/M={st.alpha:g}, " if with_alpha else ""
    return f"{alpha}sigma={st.sigma:g}, lam={st.lam:g}, beta={beta}"


def plot_phase_diagrams(diagrams: Sequence[PhaseDiagram], ncols: int = 2) -> Figure:
    """Fig. 2 layout: one panel per diagram on the (omega, b) plane; shaded = RS, white = RSB, grey = no RS
    solution found."""
    n = len(diagrams)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False)
    cmap = ListedColormap(["#d9d9d9", "white", "#6baed6"])
    for ax, pd in zip(axes.ravel(), diagrams, strict=False):
        code = np.where(~pd.converged, 0, np.where(pd.rs, 2, 1))
        dw = np.diff(pd.widths).mean() if pd.widths.size > 1 else 1.0
        edges_w = np.concatenate([pd.widths - dw / 2, [pd.widths[-1] + dw / 2]])
        edges_b = np.concatenate([pd.bits - 0.5, [pd.bits[-1] + 0.5]])
        ax.pcolormesh(edges_w, edges_b, code, cmap=cmap, vmin=0, vmax=2, shading="flat")
        ax.plot(pd.boundary(), pd.bits, "k.-", lw=1, label="AT line")
        kind = "uniform" if pd.kind == "uniform" else f"non-uniform (power, gamma={pd.gamma:g})"
        ax.set_title(f"{kind}\n{_setting_text(pd.setting)}", fontsize=8)
        ax.set_xlabel("quantization width omega")
        ax.set_ylabel("bits b")
        ax.set_yticks(pd.bits)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.suptitle("RS (shaded) / RSB (white) phase diagram", fontsize=10)
    fig.tight_layout()
    return fig


def plot_error_vs_width(pairs: Sequence[tuple[WidthSweep, WidthSweep | None]]) -> Figure:
    """Fig. 4 layout: a panel per setting; solid = uniform, dashed = non-uniform; arrows mark RSB onset."""
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 3.9), squeeze=False)
    for ax, (uni, non) in zip(axes[0], pairs, strict=True):
        for sweep, style in ((uni, "-"), (non, "--")):
            if sweep is None:
                continue
            for i, b in enumerate(sweep.bits):
                (line,) = ax.plot(
                    sweep.widths,
                    sweep.gen_error[i],
                    style,
                    color=f"C{i}",
                    label=f"b={b} {'uniform' if style == '-' else 'non-uniform'}",
                )
                rsb = np.flatnonzero(~(sweep.at_value[i] < 1.0) & np.isfinite(sweep.gen_error[i]))
                if rsb.size and np.isfinite(sweep.at_value[i]).any():
                    j = rsb[0]
                    ax.annotate(
                        "",
                        xy=(sweep.widths[j], sweep.gen_error[i, j]),
                        xytext=(sweep.widths[j], sweep.gen_error[i, j] * 1.6),
                        arrowprops={"arrowstyle": "->", "color": line.get_color()},
                    )
                ax.plot(sweep.best_width[i], sweep.best_error[i], "o", color=line.get_color(), ms=3)
        ax.set_yscale("log")
        ax.set_xlabel("quantization width omega")
        ax.set_ylabel("generalization error")
        ax.set_title(_setting_text(uni.setting), fontsize=8)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle("RS generalization error vs omega (arrows: RSB onset, dots: optimum)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_error_vs_alpha(sweeps: Sequence[AlphaSweep]) -> Figure:
    """Fig. 5 layout: (a) uniform, (b) non-uniform; error vs alpha = N/M per b, dashed = ridge."""
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5.2 * len(sweeps), 3.9), squeeze=False)
    for ax, sweep, tag in zip(axes[0], sweeps, "abcd", strict=False):
        for i, (b, w) in enumerate(zip(sweep.bits, sweep.widths, strict=True)):
            ax.plot(sweep.alphas, sweep.gen_error[i], "-", color=f"C{i}", label=f"b={b}, omega={w:.3g}")
        ax.plot(sweep.alphas, sweep.ridge_error, "k--", label="ridge (b -> inf)")
        ax.set_yscale("log")
        ax.set_xlabel("alpha = N/M (weights per sample)")
        ax.set_ylabel("generalization error")
        kind = "uniform" if sweep.kind == "uniform" else "non-uniform"
        ax.set_title(f"({tag}) {kind}: {_setting_text(sweep.setting, with_alpha=False)}", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_amp_vs_state_evolution(histories: Sequence[np.ndarray], se: np.ndarray) -> Figure:
    """Overlaps m_t, q_t per iteration: AMP runs (thin) against state evolution (markers)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for k, name in enumerate(("m", "q", "V")):
        for h in histories:
            ax.plot(np.arange(h.shape[0]), h[:, k], "-", color=f"C{k}", lw=0.8, alpha=0.7)
        ax.plot(np.arange(se.shape[0]), se[:, k], "o", color=f"C{k}", ms=4, label=f"{name} (SE)")
    ax.set_xlabel("iteration t")
    ax.set_ylabel("overlap")
    ax.legend(fontsize=8)
    ax.set_title("AMP (lines) vs state evolution (markers)", fontsize=9)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write the figure atomically (format from the suffix: .png, .pdf, .svg; none = PNG) and release it: a
    failed write leaves no partial file."""
    out = Path(path)
    fmt = out.suffix.lower().lstrip(".") or "png"
    try:
        return atomic_write(out, lambda tmp: fig.savefig(tmp, format=fmt, dpi=130))
    finally:
        plt.close(fig)
