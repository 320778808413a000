"""Rate–distortion figure: every format as a point (all-in bits/param, relative MSE) against R(D)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wquant.formats.compare import FormatReport
from wquant.formats.rd_bounds import empirical_rate_distortion_curve, gaussian_distortion_rate
from wquant.io import atomic_write

ECSQ_GAP = np.pi * np.e / 6  # entropy-coded uniform quantizer: 1.53 dB above D(R) at high rate


def plot_rate_distortion(
    reports: Sequence[FormatReport], path: str | Path, *, source: str | None, samples: np.ndarray | None = None
) -> Path:
    """Write a PNG or SVG (by suffix): formats, the Shannon bound D(R), and the ECSQ line 1.53 dB above it.

    source="normal" draws the Gaussian's closed-form bound; otherwise `samples` (unit mean square) give the
    bound by Blahut–Arimoto.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    lowest = min(r.bits_per_param for r in reports)
    highest = max(r.bits_per_param for r in reports)
    rates = np.linspace(max(0.25, lowest - 1.5), highest + 1.5, 200)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if source == "normal" or samples is None:
        bound = np.asarray(gaussian_distortion_rate(rates))
        ax.semilogy(rates, bound, "k-", lw=1.5, label="Shannon bound D(R), Gaussian")
        ax.semilogy(rates, bound * ECSQ_GAP, "k:", lw=1, label="ECSQ, +1.53 dB")
    else:
        curve = empirical_rate_distortion_curve(samples)
        r = np.array([p.rate_bits for p in curve])
        d = np.array([p.distortion for p in curve])
        ax.semilogy(r, d, "k-", lw=1.5, label="R(D) of the data (Blahut–Arimoto)")
        ax.semilogy(r, d * ECSQ_GAP, "k:", lw=1, label="+1.53 dB")
    for report in sorted(reports, key=lambda rep: rep.bits_per_param):
        ax.semilogy(report.bits_per_param, report.rel_mse, "o", ms=5, label=report.spec)
    ax.set_xlabel("bits per parameter (all-in)")
    ax.set_ylabel("relative MSE")
    ax.set_xlim(rates[0], rates[-1])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, loc="upper right", ncol=1)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
