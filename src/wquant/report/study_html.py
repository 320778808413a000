"""The study report: a decision document in one self-contained HTML file (figures are PNG data URIs, no script,
nothing fetched) and results.csv with every number the report shows.

Order: what to do (one sentence, the best choices), why (the Pareto plot of everything evaluated, how the
decision was made), where the bits went (heat map), then the supporting detail collapsed: theory, formats
against R(D), weight profiles, timings. No path of the machine that ran the study appears anywhere.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wquant import __version__
from wquant.io import write_atomic
from wquant.study.pipeline import PARETO_RANGE, RD_TENSORS
from wquant.study.summary import Summary, cli_model_name, describe, family_name

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;line-height:1.45;padding:0 1rem}
h1{margin-bottom:0.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:0.8rem 0;font-size:0.85rem}
th,td{border:1px solid #ccc;padding:0.25rem 0.5rem;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
figure{margin:1rem 0}img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:0.9rem}
.note{color:#555;font-size:0.9rem}
.rec{background:#eef6ee;border:1px solid #9c9;border-radius:6px;padding:0.8rem 1rem;font-size:1.1rem}
details{margin:0.6rem 0}summary{cursor:pointer;font-weight:600}
tr.best td{background:#eef6ee}
"""
PAPER = (
    "Kashiwamura, Sakata &amp; Imaizumi, <i>Effect of Weight Quantization on Learning Models by Typical Case "
    "Analysis</i> (2024)"
)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if value != value else f"{value:.5g}"
    return html.escape(str(value))


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str], left: Sequence[str] = (), best: int = -1) -> str:
    head = "".join(f'<th class="l">{c}</th>' if c in left else f"<th>{c}</th>" for c in columns)
    body = "".join(
        ("<tr class='best'>" if i == best else "<tr>")
        + "".join(f'<td class="l">{_cell(r.get(c, ""))}</td>' if c in left else f"<td>{_cell(r.get(c, ''))}</td>"
                  for c in columns)
        + "</tr>"
        for i, r in enumerate(rows)
    )  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>"


def _details(title: str, body: str) -> str:
    return f"<details><summary>{html.escape(title)}</summary>{body}</details>"


def _figure(src: str, alt: str, caption: str, ident: str) -> str:
    return f"<figure id='{ident}'><img alt='{html.escape(alt)}' src='{src}'><figcaption>{caption}</figcaption></figure>"


# ------------------------------------------------------------------------------------------------- figures


def _matplotlib() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_figure(summary: Summary, rows: list[dict[str, Any]]) -> str:
    """Distortion vs exact bits/param of every evaluated variant, families as lines, the Pareto front stepped,
    the recommendation starred."""
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        families = ", ".join(family_name(f) for f in r["families"])
        kinds = {"allocation": "wquant allocation", "proxy": "Fisher-proxy allocation"}
        key = kinds.get(r["kind"], f"uniform {families}")
        groups.setdefault(key, []).append(r)
    markers = iter("osD^v<>ph*")
    for key, members in groups.items():
        members = sorted(members, key=lambda r: r["bits_per_param"])
        style = "-" if len(members) > 1 else ""
        ax.semilogy([r["bits_per_param"] for r in members], [max(r["distortion"], 1e-12) for r in members],
                    style, marker=next(markers, "o"), ms=5, lw=1, label=key)  # fmt: skip
    front = summary.front
    ax.step([r["bits_per_param"] for r in front], [max(r["distortion"], 1e-12) for r in front], "k:", where="post",
            lw=1, label="Pareto front")  # fmt: skip
    s = summary.shipped
    ax.semilogy([s["bits_per_param"]], [max(s["distortion"], 1e-12)], "*", ms=18, mfc="gold", mec="k",
                label="recommendation", zorder=5)  # fmt: skip
    ax.axvline(summary.budget, color="grey", ls="--", lw=0.8, label=f"budget {summary.budget:g}")
    ax.set_xlabel("bits per parameter (exact, all-in, whole model)")
    ax.set_ylabel(f"distortion ({summary.metric}, held-out text)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


_LAYER = re.compile(r"^(?P<prefix>.*?)\.(?P<index>\d+)\.(?P<kind>.+)$")


def heat_grid(names: Sequence[str]) -> tuple[list[str], list[str], dict[str, tuple[int, int]]]:
    """Rows (layers, plus one for tensors outside the repeated blocks), columns (tensor kinds) and the cell of
    every tensor name."""
    cells: dict[str, tuple[str, str]] = {}
    for name in names:
        stem = name.removesuffix(".weight")
        m = _LAYER.match(stem)
        cells[name] = (f"layer {int(m['index'])}", m["kind"]) if m else ("outside layers", stem)
    layers = sorted({r for r, _ in cells.values() if r.startswith("layer ")}, key=lambda r: int(r.split()[1]))
    rows = (["outside layers"] if any(r == "outside layers" for r, _ in cells.values()) else []) + layers
    columns = list(dict.fromkeys(k for _, k in cells.values()))
    return rows, columns, {n: (rows.index(r), columns.index(k)) for n, (r, k) in cells.items()}


def heatmap_figure(tensors: list[dict[str, Any]]) -> str:
    """Bits/param per tensor on a layers × tensor kinds grid (grey: no such tensor)."""
    plt = _matplotlib()
    rows, columns, where = heat_grid([t["name"] for t in tensors])
    grid = np.full((len(rows), len(columns)), np.nan)
    for t in tensors:
        grid[where[t["name"]]] = t["bits"] / t["numel"]
    fig, ax = plt.subplots(figsize=(min(12, 1.2 + 0.75 * len(columns)), 0.9 + 0.42 * len(rows)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    mesh = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if v == v:
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < np.nanmean(grid) else "k")
    ax.set_xticks(range(len(columns)), [c.replace(".", "\n", 1) for c in columns], fontsize=7, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    fig.colorbar(mesh, ax=ax, label="bits/param")
    return _png(fig)


def theory_figures(theory: dict[str, Any]) -> tuple[str, str]:
    plt = _matplotlib()
    phase = theory["phase"]
    at = np.array(phase["at_value"])
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    mesh = ax.pcolormesh(phase["widths"], phase["bits"], np.log10(np.clip(at, 1e-3, 1e3)), cmap="coolwarm",
                         vmin=-2, vmax=2, shading="nearest")  # fmt: skip
    ax.contour(phase["widths"], phase["bits"], at, levels=[1.0], colors="k")
    fig.colorbar(mesh, ax=ax, label="log10 AT value (> 0: RSB)")
    ax.set_xlabel("quantization width ω (teacher-weight RMS units)")
    ax.set_ylabel("bits b")
    ax.set_title("where the replica-symmetric solution holds (blue)")
    phase_png = _png(fig)
    widths = theory["optimal_width"]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    bits = [w["bits"] for w in widths]
    ax.plot(bits, [w["predicted"] for w in widths], "s-", label="theory: ω* minimising generalization error")
    ax.errorbar(bits, [w["measured_median"] for w in widths],
                yerr=[[w["measured_median"] - w["measured_q25"] for w in widths],
                      [w["measured_q75"] - w["measured_median"] for w in widths]],
                fmt="o-", capsize=3, label="this model's layers: ω* minimising weight MSE (median, IQR)")  # fmt: skip
    ax.set_xlabel("bits b")
    ax.set_ylabel("optimal width ω (RMS units)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return phase_png, _png(fig)


def _format_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per format family: numel-weighted bits/param, relative MSE and gap to R(D) over every tensor."""
    out = []
    for family in dict.fromkeys(r["family"] for r in rows):
        sel = [r for r in rows if r["family"] == family]
        weights = np.array([r["numel"] for r in sel], dtype=float)
        mean = {}
        for key in ("bits_per_param", "rel_mse", "gap_bits"):
            values = np.array([r[key] for r in sel], dtype=float)
            ok = np.isfinite(values)
            mean[key] = float(np.average(values[ok], weights=weights[ok])) if ok.any() else float("nan")
        out.append({"format": sel[0]["spec"] if len(sel) == 1 else family, "family": family, **mean,
                    "tensors": len(sel)})  # fmt: skip
    return sorted(out, key=lambda r: (r["gap_bits"] != r["gap_bits"], r["gap_bits"]))


def rd_figure(summary_rows: list[dict[str, Any]]) -> str:
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    rates = np.linspace(1, 7, 100)
    ax.semilogy(rates, 2.0 ** (-2 * rates), "k-", label="Gaussian D(R)")
    ax.semilogy(rates, np.pi * np.e / 6 * 2.0 ** (-2 * rates), "k:", label="ECSQ (+1.53 dB)")
    for row in summary_rows:
        ax.semilogy(row["bits_per_param"], row["rel_mse"], "o", label=row["family"])
    ax.set_xlabel("bits per parameter (all-in, numel-weighted)")
    ax.set_ylabel("relative MSE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


# ------------------------------------------------------------------------------------------------- text


def theory_text(theory: dict[str, Any], bits: int, profiles: list[dict[str, Any]]) -> str:
    """What the regression analogue predicts, and how far this model's layers are from it, in plain words."""
    row = min(theory["optimal_width"], key=lambda w: abs(w["bits"] - bits))
    predicted, measured = row["predicted"], row["measured_median"]
    ratio = measured / predicted if predicted > 0 else float("nan")
    kurt = float(np.median([p["kurtosis"] for p in profiles]))
    tails = "heavier-tailed than a Gaussian" if kurt > 0.5 else "close to Gaussian in shape"
    direction = "wider" if ratio > 1 else "narrower"
    return (
        f"<p>The theory is the typical-case (replica) analysis of {PAPER}: linear regression whose weights are "
        "restricted to a uniform grid of 2<sup>b</sup> levels spanning [−ω, ω]. It predicts, for each bit width, "
        "the grid width ω* that gives the lowest generalization error, and where the replica-symmetric solution "
        "is valid (the phase diagram below).</p>"
        f"<p>At {row['bits']} bits it predicts ω* = {predicted:.2f} (in units of the weights' RMS). Clipping this "
        f"model's layers to minimise their own weight error wants ω = {measured:.2f} (median over layers, "
        f"interquartile {row['measured_q25']:.2f}–{row['measured_q75']:.2f}): the real layers want a "
        f"{abs(ratio - 1) * 100:.0f}% {direction} grid than the regression analogue, because their weights are "
        f"{tails} (median excess kurtosis {kurt:.2f}) while the analogue's teacher weights are Gaussian. "
        "Read the theory as the shape of the trade-off (wider grids as bits grow), not as the width to use: "
        "the formats above choose their scales from the data.</p>"
    )


def _choices_rows(summary: Summary) -> list[dict[str, Any]]:
    best = summary.shipped["distortion"]
    return [
        {"rank": i + 1, "choice": describe(r), "bits/param": r["bits_per_param"],
         "quality": summary.quality(r["distortion"]).split(" to ")[0], "distortion": r["distortion"],
         "× recommendation's distortion": r["distortion"] / best if best > 0 else float("nan")}
        for i, r in enumerate(summary.choices)
    ]  # fmt: skip


def _saving_text(summary: Summary) -> str:
    parts = []
    if summary.vs_uniform is not None:
        v = summary.vs_uniform
        u = summary.best_uniform or {}
        name, distortion = u.get("variant", ""), u.get("distortion", float("nan"))
        extra = " (extrapolated beyond its evaluated points)" if v.bound == "extrapolated" else ""
        parts.append(
            f"Against the best uniform plan at the budget ({name}, distortion {distortion:.4g}): "
            f"its family needs {v.reference_bits:.3f} bits/param to match the recommendation's distortion, "
            f"{v.bits:.2f} bits/param more{extra}."
        )
    if summary.vs_nf4 is not None:
        v = summary.vs_nf4
        parts.append(
            f"NF4 (bitsandbytes' layout, {v.reference_bits:.3f} bits/param) reaches distortion "
            f"{v.reference_distortion:.4g}; the recommended method gets there at "
            f"{'≤ ' if v.bound == '>=' else ''}{v.bits_at_equal:.3f} bits/param."
        )
    return " ".join(parts)


def write_study_report(path: Path, config: Any, summary: Summary, results: dict[str, Any], runs: Sequence[Any]) -> Path:
    plan, evaluation = results["plan"], results["evaluate"]
    rows = evaluation["variants"]
    alloc = plan["decision"]["allocation"]["plan"]
    shipped_is_alloc = summary.shipped["kind"] == "allocation"
    applied = summary.applied
    texts = "wquant's built-in sentences" if config.text is None else html.escape(Path(config.text).name)
    calib = (
        "wquant's built-in sentences (the other half)" if config.calib is None else html.escape(Path(config.calib).name)
    )
    metric_note = ("mean cosine between each text's sentence embedding under the quantized and the unquantized "
                   "model (distortion = 1 − cosine)" if summary.task == "encoder" else
                   "mean KL divergence per token from the unquantized model's next-token distribution")  # fmt: skip
    applied_rows = [{k: v for k, v in applied.items() if k != "variant"}]
    tensors = [
        {"tensor": t["name"], "format": t["spec"], "family": family_name(t.get("family", "")),
         "bits/param": t["bits"] / t["numel"], "predicted distortion": t["predicted_kl"],
         "Fisher closed form bits": t["continuous_bits"], "F̄": t["fisher_mean"], "RMS": t["rms"]}
        for t in alloc["tensors"]
    ]  # fmt: skip
    ratios = [
        {"tensor": t["name"], "bits/param of anchor": a_bits, "measured": d, "Fisher proxy": 0.5 * u,
         "measured / proxy": d / (0.5 * u) if u > 0 else float("nan")}
        for t in plan["table"]["tensors"] for (u, d), a_bits in zip(t["anchors"], _anchor_bits(t), strict=True)
    ]  # fmt: skip
    finite = [r["measured / proxy"] for r in ratios if r["measured / proxy"] == r["measured / proxy"]]
    uniform_cal = plan["decision"]["uniform"]
    decision_rows = [{"plan": "wquant allocation", "bits/param": alloc_bits(alloc),
                      "distortion (calibration)": plan["decision"]["allocation"]["distortion"]}] + [
        {"plan": c["label"], "bits/param": alloc_bits(c["plan"]), "distortion (calibration)": c["distortion"]}
        for c in uniform_cal
    ]  # fmt: skip
    proxy = next((r for r in rows if r["kind"] == "proxy"), None)
    phase_png, width_png = theory_figures(results["theory"])
    fsummary = _format_summary(results["formats"])
    timing = [{"stage": r.name, "seconds": r.seconds, "from cache": "yes" if r.cached else "no"} for r in runs]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>wquant study: {html.escape(summary.model)} at {config.budget:g} bits/param</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>How to quantize {html.escape(summary.model)} at {config.budget:g} bits/param</h1>",
        f"<p class='note'>{summary.task}; budget {config.budget:g} bits per parameter, all-in (every stored "
        f"field counted, unquantized parameters at their dtype width); evaluated on {evaluation['texts']} "
        f"texts of {texts}, calibrated on {calib}; wquant {__version__}, seed {config.seed}.</p>",
        f"<p class='rec' id='recommendation'>{html.escape(summary.sentence)}</p>",
        f"<p>{html.escape(_saving_text(summary))}</p>" if _saving_text(summary) else "",
        f"<p class='note'>Decision: {html.escape(summary.reason)} (measured on the calibration text, with the "
        "whole plan applied). Quality is the " + metric_note + ", on held-out text the decision never saw.</p>",
        "<h2>Best choices at the budget</h2>",
        _table(_choices_rows(summary), ["rank", "choice", "bits/param", "quality", "distortion",
                                        "× recommendation's distortion"], left=["choice", "quality"], best=0),
        "<p class='note'>As shipped (the model really quantized with the recommended plan and measured end to "
        "end):</p>",
        _table(applied_rows, list(applied_rows[0]), left=[]),
        _details("Apply the plan with another algorithm", _algorithms_text(summary.model)),
        "<h2>Everything evaluated</h2>",
        _figure(pareto_figure(summary, rows), "Pareto plot of distortion against bits per parameter",
                "Every candidate evaluated on the held-out text: wquant's allocation at several budgets, the "
                "Fisher-proxy allocation, and every uniform plan (one format on every tensor, including the "
                "peers' formats NF4 and MXFP4 as wquant stores them bit-exactly) within "
                f"{PARETO_RANGE:g} bits/param of the budget. The star is the recommendation.", "pareto"),
        _details("All evaluated variants", _table(
            [{"variant": r["variant"], "kind": r["kind"], "bits/param": r["bits_per_param"],
              "distortion": r["distortion"], "on the Pareto front": "yes" if r in summary.front else ""}
             for r in sorted(rows, key=lambda r: r["bits_per_param"])],
            ["variant", "kind", "bits/param", "distortion", "on the Pareto front"], left=["variant", "kind"])),
        "<h2>Where the bits go</h2>",
        _figure(heatmap_figure(alloc["tensors"]), "heat map of allocated bits per tensor",
                "Bits/param the allocation gives each tensor (layers × tensor kinds). "
                + ("This is the shipped plan." if shipped_is_alloc else
                   "Not shipped: a uniform plan measured better on the calibration text."), "heatmap"),
        "<p>How the allocation decides: every tensor is quantized with every candidate format (exact bits), "
        "perturbed alone at two formats near the budget, and the change of the model's output measured; a "
        "per-tensor curve through those points gives every candidate's distortion, and a knapsack solver "
        "spends the budget where it buys the most. The plan is then measured whole against the best uniform "
        "plan of every family at no more bits, and the better one ships.</p>",
        (f"<p>Why measured and not the Fisher proxy alone: the proxy ½·F̄·‖δ‖² (the paper's rule) is off by a "
         f"factor {min(finite):.2g}–{max(finite):.2g} depending on the tensor here (median {np.median(finite):.2g}); "
         + (f"its allocation scores {proxy['distortion']:.4g} at {proxy['bits_per_param']:.3f} bits/param on the "
            "held-out text." if proxy else "") + "</p>") if finite else "",  # fmt: skip
        _details("Decision on the calibration text", _table(decision_rows, ["plan", "bits/param",
                                                                          "distortion (calibration)"], left=["plan"])),
        _details("Per-tensor allocation", _table(tensors, list(tensors[0]), left=["tensor", "format", "family"])),
        _details("Measured sensitivities against the Fisher proxy",
                 _table(ratios, list(ratios[0]), left=["tensor"]) if ratios else ""),
        "<h2>Theory: what the regression analogue says</h2>",
        theory_text(results["theory"], config.element_bits, results["profile"]),
        _figure(width_png, "optimal width, theory against this model's layers",
                "Optimal grid width: theory (squares) against the width that minimises each layer's weight "
                "error (circles, median and interquartile range over layers).", "width"),
        _details("Phase diagram of the regression analogue",
                 _figure(phase_png, "phase diagram", "Replica-symmetric (blue) and replica-symmetry-broken (red) "
                         f"regions at the paper's Fig. 4 setting {html.escape(str(results['theory']['setting']))}.",
                         "phase")),
        _table(results["theory"]["optimal_width"], ["bits", "predicted", "measured_median", "measured_q25",
                                                    "measured_q75"]),
        "<h2>Supporting detail</h2>",
        _details(f"Formats against each tensor's rate–distortion bound ({config.element_bits} bits)",
                 "<p class='note'>gap = bits/param spent above R(D) of each tensor's own values (Blahut–Arimoto), "
                 f"on {RD_TENSORS} tensors evenly spaced through the model, averaged weighted by size.</p>"
                 + _table(fsummary, ["family", "format", "bits_per_param", "rel_mse", "gap_bits", "tensors"],
                          left=["family", "format"])
                 + _figure(rd_figure(fsummary), "rate-distortion", "Relative weight error against the Gaussian "
                           "bound, per format family.", "rd")),
        _details("Weight tensors", _table(results["profile"],
                                          ["name", "numel", "rms", "kurtosis", "outlier_share", "family"],
                                          left=["name", "family"])),
        "<h2>Timings</h2>",
        _table(timing, ["stage", "seconds", "from cache"], left=["stage", "from cache"]),
        "</body></html>",
    ]  # fmt: skip
    write_atomic(path, "\n".join(parts))
    return path


def _algorithms_text(model: str) -> str:
    """Every registered algorithm with the command that applies the shipped plan through it: the study measures
    round to nearest; a data-driven algorithm keeps each tensor's planned format (so the bits) and usually lowers
    the distortion further."""
    from wquant.algorithms.registry import ALGORITHMS

    rows = [{"algorithm": a.name, "what it does": a.summary,
             "command": f"wquant quantize {cli_model_name(model)} --plan plan.json --algorithm {a.name} "
                        "--calib FILE --out DIR"}
            for a in ALGORITHMS.values()]  # fmt: skip
    return (
        "<p class='note'>The numbers above are round to nearest on the planned formats. Every algorithm below "
        "keeps each tensor's planned format, so the plan's exact bits, and works from calibration text (the "
        "data-free ones ignore it); SmoothQuant and ZeroQuant also quantize the layers' inputs (W8A8). They are "
        "not measured here; BENCHMARKS.md compares them end to end.</p>"
        + _table(rows, ["algorithm", "what it does", "command"], left=["algorithm", "what it does", "command"])
    )


def alloc_bits(plan: dict[str, Any]) -> float:
    return (int(plan["fixed_bits"]) + sum(int(t["bits"]) for t in plan["tensors"])) / int(plan["params"])


def _anchor_bits(tensor: dict[str, Any]) -> list[float]:
    """Bits/param of a tensor's measured anchors (the candidates whose curve error equals an anchor's)."""
    out = []
    for u, _ in tensor["anchors"]:
        match = [c for c in tensor["candidates"] if u in (c["weighted_error"], c["sq_error"])]
        out.append(match[0]["bits"] / tensor["numel"] if match else float("nan"))
    return out


def write_results_csv(path: Path, results: dict[str, Any], summary: Summary, runs: Sequence[Any]) -> Path:
    """One tidy table of every number in the report: a row per (section, item, format, metric)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["section", "item", "format", "metric", "value"])
    s = summary.shipped
    writer.writerow(["recommendation", s["variant"], s["kind"], "bits_per_param", s["bits_per_param"]])
    writer.writerow(["recommendation", s["variant"], s["kind"], "distortion", s["distortion"]])
    for name, saving in (("nf4", summary.vs_nf4), ("best_uniform", summary.vs_uniform)):
        if saving is not None:
            writer.writerow(["recommendation", saving.reference, saving.bound, f"bits_saved_vs_{name}", saving.bits])
            writer.writerow(["recommendation", saving.reference, saving.bound, f"{name}_bits_per_param",
                             saving.reference_bits])  # fmt: skip
            writer.writerow(["recommendation", saving.reference, saving.bound, f"{name}_distortion",
                             saving.reference_distortion])  # fmt: skip
    for metric, value in summary.applied.items():
        if metric != "variant":
            writer.writerow(["applied", summary.applied["variant"], "", metric, value])
    for i, r in enumerate(summary.choices):
        writer.writerow(["choice", r["variant"], r["kind"], f"rank_{i + 1}_distortion", r["distortion"]])
    for r in results["evaluate"]["variants"]:
        for metric in ("bits_per_param", "distortion"):
            writer.writerow(["variant", r["variant"], r["kind"], metric, r[metric]])
        writer.writerow(["variant", r["variant"], r["kind"], "pareto", int(r in summary.front)])
    decision = results["plan"]["decision"]
    for c in (decision["allocation"], *decision["uniform"]):
        writer.writerow(["decision", c["label"], "calibration", "bits_per_param", alloc_bits(c["plan"])])
        writer.writerow(["decision", c["label"], "calibration", "distortion", c["distortion"]])
    for t in decision["allocation"]["plan"]["tensors"]:
        for metric, value in (("bits_per_param", t["bits"] / t["numel"]), ("predicted_distortion", t["predicted_kl"]),
                              ("continuous_bits", t["continuous_bits"]), ("fisher_mean", t["fisher_mean"]),
                              ("rms", t["rms"])):  # fmt: skip
            writer.writerow(["allocation", t["name"], t["spec"], metric, value])
    for t in results["plan"]["table"]["tensors"]:
        for (u, d), b in zip(t["anchors"], _anchor_bits(t), strict=True):
            writer.writerow(["sensitivity", t["name"], f"{b:.4f} bits/param", "measured", d])
            writer.writerow(["sensitivity", t["name"], f"{b:.4f} bits/param", "fisher_proxy", 0.5 * u])
    for r in results["formats"]:
        for metric in ("bits_per_param", "rel_mse", "gap_bits"):
            writer.writerow(["formats", r["tensor"], r["spec"], metric, r[metric]])
    for r in results["profile"]:
        for metric in ("rms", "kurtosis", "outlier_share"):
            writer.writerow(["profile", r["name"], r["family"], metric, r[metric]])
    for r in results["theory"]["optimal_width"]:
        for metric in ("predicted", "measured_median", "measured_q25", "measured_q75"):
            writer.writerow(["theory", f"bits={r['bits']}", "uniform", f"optimal_width_{metric}", r[metric]])
    for r in runs:
        writer.writerow(["timing", r.name, "cached" if r.cached else "", "seconds", r.seconds])
    write_atomic(path, buffer.getvalue())
    return path
