"""The study report: one self-contained HTML file (figures embedded as PNG data URIs) and a tidy CSV."""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wquant import __version__
from wquant.io import write_atomic

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:0.8rem 0;font-size:0.85rem}
th,td{border:1px solid #ccc;padding:0.25rem 0.5rem;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
figure{margin:1rem 0}img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:0.9rem}
"""


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str], left: Sequence[str] = ()) -> str:
    def cell(key: str, value: Any) -> str:
        text = f"{value:.5g}" if isinstance(value, float) else html.escape(str(value))
        return f'<td class="l">{text}</td>' if key in left else f"<td>{text}</td>"

    head = "".join(f'<th class="l">{c}</th>' if c in left else f"<th>{c}</th>" for c in columns)
    body = "".join("<tr>" + "".join(cell(c, r.get(c, "")) for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _format_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per format family: numel-weighted bits/param, relative MSE and gap to R(D) over every tensor."""
    out = []
    for family in dict.fromkeys(r["family"] for r in rows):
        sel = [r for r in rows if r["family"] == family]
        weights = np.array([r["numel"] for r in sel], dtype=float)
        mean = {
            key: float(np.average([r[key] for r in sel], weights=weights))
            for key in ("bits_per_param", "rel_mse", "gap_bits")
        }
        out.append(
            {"format": sel[0]["spec"] if len(sel) == 1 else family, "family": family, **mean, "tensors": len(sel)}
        )
    return sorted(out, key=lambda r: r["gap_bits"])


def _figures(results: dict[str, Any]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    summary = _format_summary(results["formats"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    rates = np.linspace(1, 7, 100)
    ax.semilogy(rates, 2.0 ** (-2 * rates), "k-", label="Gaussian D(R)")
    ax.semilogy(rates, np.pi * np.e / 6 * 2.0 ** (-2 * rates), "k:", label="ECSQ (+1.53 dB)")
    for row in summary:
        ax.semilogy(row["bits_per_param"], row["rel_mse"], "o", label=row["family"])
    ax.set_xlabel("bits per parameter (all-in, numel-weighted)")
    ax.set_ylabel("relative MSE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    figs["rd"] = _png(fig)

    phase = results["theory"]["phase"]
    at = np.array(phase["at_value"])
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    mesh = ax.pcolormesh(phase["widths"], phase["bits"], np.log10(np.clip(at, 1e-3, 1e3)), cmap="coolwarm",
                         vmin=-2, vmax=2, shading="nearest")  # fmt: skip
    ax.contour(phase["widths"], phase["bits"], at, levels=[1.0], colors="k")
    fig.colorbar(mesh, ax=ax, label="log10 AT value (> 0: RSB)")
    ax.set_xlabel("quantization width ω")
    ax.set_ylabel("bits b")
    ax.set_title("RS (blue) / RSB (red) of the regression analogue")
    figs["phase"] = _png(fig)

    widths = results["theory"]["optimal_width"]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    bits = [w["bits"] for w in widths]
    ax.plot(bits, [w["predicted"] for w in widths], "s-", label="theory: ω* minimising generalization error")
    ax.errorbar(bits, [w["measured_median"] for w in widths],
                yerr=[[w["measured_median"] - w["measured_q25"] for w in widths],
                      [w["measured_q75"] - w["measured_median"] for w in widths]],
                fmt="o-", capsize=3, label="real layers: ω* minimising weight MSE (median, IQR)")  # fmt: skip
    ax.set_xlabel("bits b")
    ax.set_ylabel("optimal width ω (RMS units)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    figs["width"] = _png(fig)
    return figs


def write_study_report(path: Path, config: Any, model: str, results: dict[str, Any], runs: Sequence[Any]) -> Path:
    figs = _figures(results)
    profiles = results["profile"]
    summary = _format_summary(results["formats"])
    plan = results["plan"]
    evals = results["evaluate"]
    metric_cols = [k for k in evals[0] if k not in ("variant", "reference_bits_per_param")]
    timing = [{"stage": r.name, "seconds": r.seconds, "from cache": "yes" if r.cached else "no"} for r in runs]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>wquant study</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>wquant study: {html.escape(model)}</h1>",
        f"<p class='note'>budget {config.budget} bits/param (all-in) · wquant {__version__} · seed {config.seed}</p>",
        "<h2>1. Weight tensors</h2>",
        _table(profiles, ["name", "numel", "rms", "kurtosis", "outlier_share", "family"], left=["name", "family"]),
        f"<h2>2. Formats against the rate–distortion bound ({config.element_bits} bits)</h2>",
        "<p class='note'>gap = bits/param spent above R(D) of each tensor's own values (Blahut–Arimoto), "
        "averaged over tensors weighted by size.</p>",
        _table(
            summary, ["family", "format", "bits_per_param", "rel_mse", "gap_bits", "tensors"], left=["family", "format"]
        ),
        f"<figure><img alt='rate-distortion' src='{figs['rd']}'></figure>",
        "<h2>3. Theory: the regression analogue</h2>",
        "<p class='note'>Replica-symmetric analysis of linear regression with quantized weights at the seed's "
        f"Fig. 4 setting {html.escape(str(results['theory']['setting']))}.</p>",
        f"<figure><img alt='phase diagram' src='{figs['phase']}'></figure>",
        _table(
            results["theory"]["optimal_width"], ["bits", "predicted", "measured_median", "measured_q25", "measured_q75"]
        ),
        f"<figure><img alt='optimal width' src='{figs['width']}'></figure>",
        "<h2>4. Plans at the budget</h2>",
        f"<p>Fisher allocation (predicted ΔKL = ½ Σ F̄·‖δ‖², {html.escape(plan['fisher']['mode'])} Fisher): "
        f"{plan['fisher']['bits_per_param']:.4f} bits/param all-in, predicted distortion "
        f"{sum(t['predicted_kl'] for t in plan['fisher']['tensors']):.4g}.</p>",
        _table(
            plan["fisher"]["tensors"],
            ["name", "spec", "continuous_bits", "fisher_mean", "rms", "predicted_kl"],
            left=["name", "spec"],
        ),  # fmt: skip
        f"<p>{html.escape(plan['uniform']['rule'])}: {plan['uniform']['per_tensor_bits']} bits/param per tensor "
        f"(<code>{html.escape(plan['uniform']['tensors'][0]['spec'])}</code>).</p>",
        "<h2>5. Evaluation</h2>",
        _table(evals, ["variant", *metric_cols], left=["variant"]),
        f"<p class='note'>unquantized model: {evals[0]['reference_bits_per_param']:.2f} bits/param.</p>",
        "<h2>Timings</h2>",
        _table(timing, ["stage", "seconds", "from cache"], left=["stage", "from cache"]),
        "</body></html>",
    ]
    write_atomic(path, "\n".join(parts))
    return path


def write_results_csv(path: Path, results: dict[str, Any]) -> Path:
    """One tidy table: a row per (section, tensor or variant, format, metric)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["section", "item", "format", "metric", "value"])
    for r in results["formats"]:
        for metric in ("bits_per_param", "rel_mse", "gap_bits"):
            writer.writerow(["formats", r["tensor"], r["spec"], metric, r[metric]])
    for r in results["profile"]:
        for metric in ("rms", "kurtosis", "outlier_share"):
            writer.writerow(["profile", r["name"], r["family"], metric, r[metric]])
    for r in results["theory"]["optimal_width"]:
        for metric in ("predicted", "measured_median"):
            writer.writerow(["theory", f"bits={r['bits']}", "uniform", f"optimal_width_{metric}", r[metric]])
    for r in results["evaluate"]:
        for metric, value in r.items():
            if metric not in ("variant", "quantize_seconds"):  # timings live in the report, the table is exact
                writer.writerow(["evaluate", r["variant"], "", metric, value])
    write_atomic(path, buffer.getvalue())
    return path
