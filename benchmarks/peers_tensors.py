"""Tensor-level quality and speed of wquant's formats beside bitsandbytes, hqq, torchao, optimum-quanto, auto-round.

    .venv/bin/python benchmarks/peers_tensors.py --write        # everything (~1 h nice'd on 2 shared cores)
    .venv/bin/python benchmarks/peers_tensors.py --quick        # smoke run: 1024×1024, 6 MiniLM weights
    .venv/bin/python benchmarks/peers_tensors.py --render-only --write   # tables + figure from the saved results

Quality: relative MSE Σ(w−ŵ)²/Σw² against all-in bits/param on seeded 4096×4096 N(0,1), Laplace and
Student-t(5) tensors and on all 37 nn.Linear weights of all-MiniLM-L6-v2 (aggregated: Σ error / Σ energy,
Σ bits / Σ params). Peers run through `_peers.py` (each adapter documents how its bits are counted); wquant's
bits are `QuantizedTensor.bits()`. wquant runs its standard formats (`standard_formats(b)`, b = 2…8) and the
entropy-coded uniform grid at a ladder of budgets and at every peer's bits/param (`quantize_to_budget`).
"Bits saved" interpolates wquant's lower envelope (log distortion vs bits, within each format family) at
each peer point's distortion. Speed: quantize/dequantize throughput on one 4096×4096 fp32 tensor for each
peer's 4-bit group-64 format and wquant's nearest equivalent, in one process, median of `--repeats`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import machine_line, median_time, replace_section  # noqa: E402
from _peers import CODECS, PEERS, peer_status, peer_version  # noqa: E402

from wquant.errors import WquantError  # noqa: E402
from wquant.formats import QuantizedTensor, quantize  # noqa: E402
from wquant.formats.budget import quantize_to_budget  # noqa: E402
from wquant.formats.compare import sample_source, standard_formats  # noqa: E402
from wquant.formats.rd_bounds import gaussian_distortion_rate  # noqa: E402

HERE = Path(__file__).resolve().parent
FIGURE = HERE / "figures" / "distortion_vs_bits_tensors.png"
RESULTS = Path.home() / ".cache" / "wquant" / "peers_tensors.json"
QUALITY, SPEED = "Peers: tensor quality", "Peers: tensor speed"
SOURCES = {"normal": "N(0,1)", "laplace": "Laplace", "t:5": "Student-t ν=5", "minilm": "MiniLM weights"}
CODED = "uniform1/tensor:rms:bf16+coded"  # the step is replaced by quantize_to_budget's search
CODED_FAMILY = "uniform/tensor:rms:bf16+coded (quantize_to_budget)"
CODED_RATES = [1, 1.25, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 9]
FIXED_BITS = [2, 3, 4, 5, 6, 8]
EXTRA_FORMATS = [
    "int{b}:unsigned/block128:minmax:bf16",
    "int{b}:unsigned/block64:minmax:fp16",
    "int{b}:unsigned/block64:minmax:fp32",
    "crd-normal:{b}/block64:absmax:ue4m3",
    "nf4/block64:absmax:ue4m3",
    "sf4/block64:absmax:ue4m3",
    "nf4/block128:absmax:fp32",
    "e2m1/block64:absmax:fp32",
    "af4",
]
LLOYD_MAX_BITS = 5  # Lloyd–Max tables above 5 bits take minutes and may not converge in wquant's 20,000 steps
TARGET_SAVED = 0.25
THREADS_NOTE = (
    "one thread: with two on this shared 2-core box, a busy neighbour process stalls every parallel region, and "
    "wquant's chunked NF4 encoder measured 15× slower than single-threaded"
)
#: (peer codec label, wquant's nearest format) for the speed table
SPEED_PAIRS = {
    "bnb NF4 b64": "nf4/block64:absmax:fp32",
    "bnb FP4 b64": "e2m1/block64:absmax:fp32",
    "hqq 4b g64 fp16": "int4:unsigned/block64:minmax:fp16",
    "torchao int4 g64 sym": "int4:asym/block64:absmax:fp32",
    "quanto qint4 g64 fp32": "int4:unsigned/block64:minmax:fp32",
    "auto-round int4 g64 (returns ŵ)": "int4:unsigned/block64:minmax:fp16",
}


# ---------------------------------------------------------------- data


def load_source(source: str, side: int, minilm_limit: int | None) -> dict[str, torch.Tensor]:
    if source != "minilm":
        return {source: sample_source(source, side * side, seed=0).reshape(side, side)}
    from torch import nn

    from wquant.models import load_pretrained

    model = load_pretrained("minilm").model
    weights = {n: m.weight.detach().float().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return dict(list(weights.items())[:minilm_limit])


def aggregate(tensors: dict[str, torch.Tensor], fn: Callable[[torch.Tensor], tuple[torch.Tensor, float]]) -> dict:
    """Run fn (w → (ŵ, stored bits)) on every tensor: Σ error / Σ energy and Σ bits / Σ params."""
    err = energy = bits = 0.0
    n = 0
    for w in tensors.values():
        w_hat, b = fn(w)
        err += float((w_hat.double() - w.double()).square().sum())
        energy += float(w.double().square().sum())
        bits += b
        n += w.numel()
    return {"bits": bits / n, "rel_mse": err / energy}


def family_of(spec: str, b: int) -> str:
    """'int4:unsigned/block64:minmax:bf16' at b=4 → 'int{b}:unsigned/block64:minmax:bf16'; presets stay."""
    return re.sub(rf"(int|:){b}(?=[/:])", r"\g<1>{b}", spec, count=1)


def wquant_specs(fixed_bits: Iterable[int]) -> list[tuple[str, str]]:
    """(family, spec) for standard_formats(b) (coded uniform handled by the budget ladder) and a few extras."""
    out: dict[str, str] = {}
    for b in fixed_bits:
        for spec in standard_formats(b) + [e.format(b=b) for e in EXTRA_FORMATS if "{b}" in e]:
            if spec.startswith("uniform@") or (spec.startswith("lloydmax") and b > LLOYD_MAX_BITS):
                continue
            out[spec] = family_of(spec, b)
    for spec in EXTRA_FORMATS:
        if "{b}" not in spec:
            out[spec] = spec
    return [(family, spec) for spec, family in out.items()]


# ---------------------------------------------------------------- quality


def run_quality(
    source: str,
    tensors: dict[str, torch.Tensor],
    coded_rates: list[float],
    fixed_bits: list[int],
    status: dict[str, str | None],
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every peer setting, then wquant's formats and coded budgets; wquant rows found in `previous` (a result
    of an earlier run on the same source and wquant revision) are reused instead of re-run."""
    reuse = {p["spec"]: p for p in previous["wquant"]} if previous else {}
    res: dict[str, Any] = {
        "source": source,
        "tensors": len(tensors),
        "numel": sum(w.numel() for w in tensors.values()),
        "peers": [],
        "wquant": [],
        "errors": [],
    }
    t0 = time.perf_counter()
    for peer in PEERS:
        if status[peer.library] is not None:
            continue
        labels: list[str] = []

        def run_peer(w: torch.Tensor, peer=peer, labels=labels) -> tuple[torch.Tensor, float]:
            point = peer.run(w)
            labels.append(point.label)
            return point.w_hat, point.bits_per_param * w.numel()

        try:
            row = aggregate(tensors, run_peer)
        except Exception as exc:  # noqa: BLE001 - a peer failing on a shape is a result, not a crash
            res["errors"].append(f"{peer.library}: {type(exc).__name__}: {exc}")
            continue
        res["peers"].append({"library": peer.library, "label": labels[0], "default": peer.default} | row)
        print(f"  {source} {labels[0]:28s} {row['bits']:.4f} {row['rel_mse']:.6f}", flush=True)

    def run_spec(spec: str) -> Callable[[torch.Tensor], tuple[torch.Tensor, float]]:
        def fn(w: torch.Tensor) -> tuple[torch.Tensor, float]:
            q = quantize(w, spec)
            return q.dequantize(), q.bits()

        return fn

    for family, spec in wquant_specs(fixed_bits):
        if spec in reuse:
            res["wquant"].append(reuse[spec])
            continue
        try:
            row = aggregate(tensors, run_spec(spec))
        except WquantError as exc:
            res["errors"].append(f"wquant `{spec}`: {type(exc).__name__}: {exc}")
            continue
        res["wquant"].append({"family": family, "spec": spec, "coded": False} | row)
        print(f"  {source} {spec:48s} {row['bits']:.4f} {row['rel_mse']:.6f}", flush=True)

    def run_budget(rate: float) -> Callable[[torch.Tensor], tuple[torch.Tensor, float]]:
        def fn(w: torch.Tensor) -> tuple[torch.Tensor, float]:
            q = quantize_to_budget(w, CODED, rate)
            return q.dequantize(), q.bits()

        return fn

    rates = sorted({round(r, 6) for r in coded_rates} | {round(p["bits"], 6) for p in res["peers"]})
    for rate in rates:
        if f"uniform@{rate:g}/tensor:rms:bf16+coded" in reuse:
            res["wquant"].append(reuse[f"uniform@{rate:g}/tensor:rms:bf16+coded"])
            continue
        try:
            row = aggregate(tensors, run_budget(rate))
        except WquantError as exc:
            res["errors"].append(f"wquant budget {rate}: {type(exc).__name__}: {exc}")
            continue
        res["wquant"].append(
            {"family": CODED_FAMILY, "spec": f"uniform@{rate:g}/tensor:rms:bf16+coded", "target": rate, "coded": True}
            | row
        )
        print(f"  {source} coded @ {rate:<10g} {row['bits']:.4f} {row['rel_mse']:.6f}", flush=True)
    res["seconds"] = time.perf_counter() - t0
    return res


def bits_for(points: list[dict], distortion: float) -> tuple[float, bool]:
    """Fewest bits at which some wquant family reaches `distortion`: each family's points are joined by
    straight lines (in log D for the coded grid, in D for fixed-rate formats); a crossing inside a segment is
    interpolated, no family is extrapolated.
    Returns (bits, upper_bound): upper_bound is True when the answer is a family's lowest-rate point that is
    already better than `distortion` (wquant may need fewer bits still); (nan, False) when no point is as good."""
    best, bound = math.inf, False
    families: dict[str, list[dict]] = {}
    for p in points:
        families.setdefault(p["family"], []).append(p)
    for fam in families.values():
        fam = sorted(fam, key=lambda p: p["bits"])
        for i, p in enumerate(fam):
            if p["rel_mse"] <= distortion and p["bits"] < best:
                best, bound = p["bits"], i == 0 and p["rel_mse"] < distortion
        # a coded grid meets any budget, so its curve is continuous and log D is interpolated; between two
        # fixed-rate formats only a split of the rows between them is achievable: D is linear in the bits
        scale = math.log if fam[0]["coded"] else float
        target = scale(distortion)
        for lo, hi in zip(fam, fam[1:], strict=False):
            d0, d1 = scale(lo["rel_mse"]), scale(hi["rel_mse"])
            if d0 > target >= d1:
                b = lo["bits"] + (hi["bits"] - lo["bits"]) * (d0 - target) / (d0 - d1)
                if b < best:
                    best, bound = b, False
    return (best, bound) if math.isfinite(best) else (math.nan, False)


def analyse(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Per peer point: wquant at the same bits (coded budget), best fixed-rate wquant ≤ those bits, bits saved."""
    fixed = [p for p in res["wquant"] if not p["coded"]]
    rows = []
    for peer in res["peers"]:
        same = min(
            (p for p in res["wquant"] if p["coded"] and abs(p["target"] - round(peer["bits"], 6)) < 1e-9),
            key=lambda p: p["rel_mse"],
            default=None,
        )
        under = [p for p in fixed if p["bits"] <= peer["bits"] + 1e-9]
        best_fixed = min(under, key=lambda p: p["rel_mse"], default=None)
        need, bound = bits_for(res["wquant"], peer["rel_mse"])
        need_fixed, bound_fixed = bits_for(fixed, peer["rel_mse"])
        rows.append(
            peer
            | {
                "same_bits": same,
                "best_fixed": best_fixed,
                "wquant_bits": need,
                "saved": peer["bits"] - need,
                "saved_fixed": peer["bits"] - need_fixed,
                "bound": bound,
                "bound_fixed": bound_fixed,
            }
        )
    return rows


# ---------------------------------------------------------------- speed


def load_from_bytes(q: QuantizedTensor, blob: bytes) -> torch.Tensor:
    """ŵ from q's packed stream `blob` (bit-unpacking or ANS decoding included): bnb, hqq and quanto dequantize
    from packed codes too, while `QuantizedTensor.dequantize` starts from codes already held one per byte."""
    return QuantizedTensor.from_bytes(blob, q.spec, q.shape, q.dtype).dequantize()


def run_speed(side: int, repeats: int) -> dict[str, Any]:
    x = sample_source("normal", side * side, seed=0).reshape(side, side)
    n = x.numel() / 1e6
    status = peer_status()
    rows = []
    for label, library, peer_q, peer_d in CODECS:
        spec = SPEED_PAIRS[label]
        row: dict[str, Any] = {"peer": label, "library": library, "spec": spec}
        q = quantize(x, spec)
        row["bits"] = q.bits_per_param()
        row["err"] = float((q.dequantize() - x).square().sum() / x.square().sum())
        if peer_d is None:  # the peer only offers quantize-dequantize in one call: time wquant's round trip too
            row["q"] = n / median_time(lambda spec=spec: quantize(x, spec).dequantize(), repeats)[0]
        else:
            row["q"] = n / median_time(lambda spec=spec: quantize(x, spec), repeats)[0]
            row["d"] = n / median_time(q.dequantize, repeats)[0]
            blob = q.to_bytes()
            row["load"] = n / median_time(lambda q=q, blob=blob: load_from_bytes(q, blob), repeats)[0]
        if status[library] is None:
            stored = peer_q(x)
            row["peer_q"] = n / median_time(lambda peer_q=peer_q: peer_q(x), repeats)[0]
            if peer_d is not None:
                row["peer_d"] = n / median_time(lambda peer_d=peer_d, stored=stored: peer_d(stored), repeats)[0]
        rows.append(row)
        print(row, flush=True)
    coded = quantize_to_budget(x, CODED, 4.5)
    coded_blob = coded.to_bytes()
    coded_row = {
        "spec": f"uniform@4.5/tensor:rms:bf16+coded → {coded.spec.to_string()}",
        "bits": coded.bits_per_param(),
        "err": float((coded.dequantize() - x).square().sum() / x.square().sum()),
        "q": n / median_time(lambda: quantize_to_budget(x, CODED, 4.5), repeats)[0],
        "d": n / median_time(coded.dequantize, repeats)[0],
        "load": n / median_time(lambda: load_from_bytes(coded, coded_blob), repeats)[0],
    }
    print(coded_row, flush=True)
    return {
        "rows": rows,
        "coded": coded_row,
        "machine": machine_line(),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "side": side,
        "wquant": wquant_line(),
    }


# ---------------------------------------------------------------- report


def wquant_line() -> str:
    """Which wquant was measured: the repository's commit (and whether src/ had uncommitted changes), or the
    exported copy named by WQUANT_REVISION when wquant is imported from elsewhere (PYTHONPATH)."""
    import subprocess

    import wquant

    root = HERE.parent
    src = Path(wquant.__file__).resolve().parents[1]
    if src != root / "src":
        return f"wquant {os.environ.get('WQUANT_REVISION', 'of unknown revision')} (imported from {src})"
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src"], cwd=root).returncode != 0
    return f"wquant {rev.strip()}" + (" with uncommitted src/ changes" if dirty else "")


def fmt_mse(v: float) -> str:
    return f"{v:.3g}" if v < 1e-3 else f"{v:.5f}"


def saved_txt(row: dict, key: str) -> str:
    """Bits saved; '≥' when wquant's lowest measured rate already beats the peer (the saving is at least this),
    'not reached' when no wquant format of that kind is as good as the peer."""
    v = row[key]
    if math.isnan(v):
        return "not reached"
    return ("≥ " if row["bound" if key == "saved" else "bound_fixed"] else "") + f"{v:+.2f}"


def versions_line(status: dict[str, str | None]) -> str:
    parts = []
    for library, why in status.items():
        parts.append(f"{library} {peer_version(library)}" if why is None else f"{library}: not run ({why})")
    return ", ".join(parts)


def quality_body(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"`python benchmarks/peers_tensors.py --write`: {meta['wquant']}; {meta['machine']}, torch {meta['torch']}, "
        f"{meta['threads']} torch thread(s); {meta['versions']}. Synthetic sources: seeded "
        f"{meta['side']}×{meta['side']} "
        "fp32 tensors (`wquant.formats.compare.sample_source`, unit variance); MiniLM: all "
        f"{results['minilm']['tensors'] if 'minilm' in results else 0} nn.Linear weights of all-MiniLM-L6-v2 "
        f"({results['minilm']['numel'] if 'minilm' in results else 0:,} params), aggregated as Σ error / Σ energy "
        "and Σ bits / Σ params. Distortion = relative MSE Σ(w−ŵ)²/Σw². Bits are all-in and stored: wquant's "
        "`QuantizedTensor.bits()`; peers as `benchmarks/_peers.py` counts them (packed codes + every scale, zero "
        "and nested statistic at the dtype the call produces; library-constant code tables not counted; torchao "
        "codes counted at b bits, its default UNPACKED_TO_INT8 layout would hold 8). Every peer setting runs on "
        "fp32 weights on CPU; ★ marks the library's default.",
        "",
        f"![distortion vs bits/param](benchmarks/figures/{FIGURE.name})",
        "",
        "**Bits saved at equal distortion** = peer bits/param − the bits wquant needs for the peer's distortion, "
        "read off wquant's lower envelope (each format family's points joined by straight lines, no extrapolation: "
        "in log distortion vs bits for the coded grid, which meets any budget and was also run at every peer's "
        "exact bits; in distortion vs bits for fixed-rate formats, which is what splitting a tensor's rows "
        "between two neighbouring formats achieves). *All wquant* includes the entropy-coded uniform grid "
        "(`+coded`, ANS); *fixed-rate* "
        f"excludes it. Target: ≥ {TARGET_SAVED} bit/param against the best peer (the peer point where wquant "
        "saves least).",
        "",
        "| source | all wquant: least saved, against | fixed-rate wquant only: least saved, against | "
        "3.9–5.1 bits/param: least saved (all / fixed-rate) | target (all wquant) |",
        "|---|---|---|---|---|",
    ]

    def least(rows: list[dict], key: str) -> dict | None:  # a peer point no wquant format reaches counts as worst
        return min(rows, key=lambda r: -math.inf if math.isnan(r[key]) else r[key], default=None)

    def cell(r: dict | None, key: str) -> str:
        if r is None:
            return "–"
        return f"**{saved_txt(r, key)}** vs {r['label']} ({r['bits']:.3f} b, {fmt_mse(r['rel_mse'])})"

    for source, name in SOURCES.items():
        if source not in results:
            continue
        rows = analyse(results[source])
        worst, worst_fixed = least(rows, "saved"), least(rows, "saved_fixed")
        four = [r for r in rows if 3.9 <= r["bits"] <= 5.1]
        w4, w4f = least(four, "saved"), least(four, "saved_fixed")
        four_txt = f"{saved_txt(w4, 'saved')} ({w4['label']}) / {saved_txt(w4f, 'saved_fixed')} ({w4f['label']})"
        verdict = "met" if worst and worst["saved"] >= TARGET_SAVED else "**missed**"
        lines.append(
            f"| {name} | {cell(worst, 'saved')} | {cell(worst_fixed, 'saved_fixed')} | {four_txt} | {verdict} |"
        )
    for source, name in SOURCES.items():
        if source not in results:
            continue
        res = results[source]
        lines += [
            "",
            f"### {name}: every peer setting beside wquant",
            "",
            "| peer setting | bits/param | rel. MSE | wquant coded at the same bits: bits, rel. MSE | best fixed-rate "
            "wquant at ≤ those bits | wquant bits for equal MSE | saved (all / fixed-rate) |",
            "|---|---:|---:|---:|---|---:|---:|",
        ]
        for r in analyse(res):
            same = r["same_bits"]
            same_txt = f"{same['bits']:.3f}, {fmt_mse(same['rel_mse'])}" if same else "–"
            bf = r["best_fixed"]
            bf_txt = f"`{bf['spec']}` {bf['bits']:.3f} b, {fmt_mse(bf['rel_mse'])}" if bf else "–"
            star = " ★" if r["default"] else ""
            lines.append(
                f"| {r['label']}{star} | {r['bits']:.4f} | {fmt_mse(r['rel_mse'])} | {same_txt} | {bf_txt} | "
                f"{r['wquant_bits']:.3f} | {saved_txt(r, 'saved')} / {saved_txt(r, 'saved_fixed')} |"
            )
    lines += ["", "### wquant across bit rates (standard formats; coded ladder)", ""]
    present = [s for s in SOURCES if s in results]
    lines.append("| wquant format | " + " | ".join(f"{SOURCES[s]}: bits, rel. MSE" for s in present) + " |")
    lines.append("|---|" + "---:|" * len(present))
    specs = list(
        dict.fromkeys(
            p["spec"] for s in present for p in results[s]["wquant"] if not p["coded"] or p["target"] in CODED_RATES
        )
    )
    for spec in specs:
        cells = []
        for s in present:
            p = next((p for p in results[s]["wquant"] if p["spec"] == spec), None)
            cells.append(f"{p['bits']:.3f}, {fmt_mse(p['rel_mse'])}" if p else "–")
        lines.append(f"| `{spec}` | " + " | ".join(cells) + " |")
    errors = [f"{SOURCES[s]}: {e}" for s in present for e in results[s]["errors"]]
    if errors:
        lines += ["", "Did not run: " + "; ".join(errors) + "."]
    lines += [
        "",
        "Reading these numbers: the distortion is weight MSE, not model output quality (the Models section "
        "measures that). The saving comes mostly from the entropy-coded grid, which has to be ANS-decoded "
        "when the weights are loaded (its speed is in the next section); the fixed-rate "
        "columns compare formats that dequantize with a table look-up and a scale, as the peers' do.",
        "",
        meta["notes"],
    ]
    return "\n".join(lines)


def speed_body(speed: dict[str, Any], status: dict[str, str | None]) -> str:
    lines = [
        f"`python benchmarks/peers_tensors.py --write`: {speed['wquant']}; {speed['machine']}, torch "
        f"{torch.__version__} with {speed['threads']} thread(s) for every library ({THREADS_NOTE}); "
        f"{versions_line(status)}. One {speed['side']}×{speed['side']} fp32 N(0,1) "
        f"tensor, median of {speed['repeats']}, every library in the same process and run. Each peer's 4-bit "
        "group/block-64 format beside wquant's nearest format (the same layout where one exists; wquant has no "
        "hqq-style optimizer, so hqq is paired with plain min/max RTN and its quantize time includes 20 solver "
        "iterations). auto-round's `quant_tensor_asym` returns ŵ directly, so that row times quantize + "
        "dequantize on both sides. *Dequantize*: wquant from the codes a `QuantizedTensor` holds after "
        "quantize (one per byte) against the peer from what it stores (bnb, hqq, quanto: packed codes; torchao: "
        "one int8 per code); *from packed bytes*: wquant's `QuantizedTensor.from_bytes(...).dequantize()` on its "
        "exact-size stream, the like-for-like with the packed peers. `benchmarks/formats_speed.py` (Format "
        "speed) has the bnb NF4 comparison with the same method (two threads).",
        "",
        "| peer format | wquant format | bits/param (wquant) | rel. MSE (wquant) | quantize M el/s: wquant / peer "
        "= ratio | dequantize M el/s: wquant / peer = ratio | wquant from packed bytes M el/s / peer = ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]

    def ratio(r: dict[str, Any], ours: str, peer: str, peer_fmt: str = ".0f") -> str:
        """The cell "wquant / peer = ratio" for one throughput, or what of it was measured."""
        if ours not in r:
            return "–"
        if peer not in r:
            return f"{r[ours]:.0f}"
        return f"{r[ours]:.0f} / {r[peer]:{peer_fmt}} = **{r[ours] / r[peer]:.2f}×**"

    for r in speed["rows"]:
        q, d, load = ratio(r, "q", "peer_q", ".1f"), ratio(r, "d", "peer_d"), ratio(r, "load", "peer_d")
        lines.append(f"| {r['peer']} | `{r['spec']}` | {r['bits']:.3f} | {fmt_mse(r['err'])} | {q} | {d} | {load} |")
    c = speed["coded"]
    lines += [
        "",
        f"The entropy-coded format that carries the quality gains is slower: `{c['spec']}` "
        f"({c['bits']:.3f} bits/param, rel. MSE {fmt_mse(c['err'])}) quantizes at {c['q']:.1f} M el/s "
        f"(budget search: every trial quantizes and ANS-codes the tensor), dequantizes held codes at {c['d']:.0f} "
        f"M el/s and loads from its packed bytes (ANS decoding included) at {c['load']:.0f} M el/s.",
    ]
    return "\n".join(lines)


def figure(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    present = [s for s in SOURCES if s in results]
    cols = 2
    rows_n = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(12, 4.6 * rows_n), squeeze=False)
    styles = {
        "bitsandbytes": ("tab:red", "s"),
        "hqq": ("tab:green", "^"),
        "torchao": ("tab:purple", "D"),
        "optimum.quanto": ("tab:brown", "v"),
        "auto_round": ("tab:orange", "P"),
    }
    for ax, source in zip(axes.flat, present, strict=False):
        res = results[source]
        families: dict[str, list[dict]] = {}
        for p in res["wquant"]:
            families.setdefault(p["family"], []).append(p)
        for fam, pts in families.items():
            pts = sorted(pts, key=lambda p: p["bits"])
            xs, ys = [p["bits"] for p in pts], [p["rel_mse"] for p in pts]
            if fam == CODED_FAMILY:
                ax.plot(xs, ys, "-o", color="tab:blue", ms=3, lw=2, label="wquant uniform+coded (budget)", zorder=3)
            elif len(pts) > 1:
                ax.plot(xs, ys, "-", color="0.6", lw=0.8, marker=".", ms=4, zorder=1)
            else:
                ax.plot(xs, ys, "x", color="0.45", ms=5, zorder=1)
        ax.plot([], [], "-", color="0.6", marker=".", label="wquant fixed-rate formats (one line per family)")
        for library, (color, marker) in styles.items():
            pts = [p for p in res["peers"] if p["library"] == library]
            if pts:
                xs, ys = [p["bits"] for p in pts], [p["rel_mse"] for p in pts]
                label = f"{library} ({len(pts)} settings)"
                ax.scatter(
                    xs, ys, color=color, marker=marker, s=36, edgecolor="k", linewidth=0.4, label=label, zorder=4
                )
        if source == "normal":
            r = np.linspace(1, 9, 100)
            ax.plot(r, gaussian_distortion_rate(r), "k--", lw=1, label="Gaussian D(R) = 2^(−2R)")
        ax.set_yscale("log")
        ax.set_xlim(0.9, 9.2)
        ax.set_title(f"{SOURCES[source]} ({res['numel']:,} params)")
        ax.set_xlabel("all-in bits/param")
        ax.set_ylabel("relative MSE Σ(w−ŵ)²/Σw²")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(present) :]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1024×1024, 6 MiniLM weights, few rates")
    parser.add_argument("--size", type=int, default=4096, help="side of the synthetic tensors")
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma list of " + ", ".join(SOURCES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the quality part")
    parser.add_argument("--speed-threads", type=int, default=1, help="torch threads for the speed part")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON with the raw numbers (read/written)")
    parser.add_argument("--render-only", action="store_true", help="tables and figure from --results, no runs")
    parser.add_argument(
        "--reuse", action="store_true", help="keep wquant rows already in --results (same wquant revision)"
    )
    parser.add_argument("--write", action="store_true", help="update both sections of BENCHMARKS.md and the figure")
    args = parser.parse_args()
    if args.quick and args.write:
        parser.error("--quick results are a smoke test; they are not written to BENCHMARKS.md")
    side = 1024 if args.quick else args.size
    status = peer_status()
    cached = args.results.is_file() and not args.quick
    results: dict[str, Any] = json.loads(args.results.read_text()) if cached else {}
    if not args.render_only:
        if not args.skip_quality:
            torch.set_num_threads(args.threads)
            same_wquant = results.get("meta", {}).get("wquant") == wquant_line()
            if args.reuse and not same_wquant:
                print("--reuse ignored: the cached rows were measured on another wquant revision", flush=True)
            rates = [2, 3, 4, 5] if args.quick else CODED_RATES
            fixed = [3, 4] if args.quick else FIXED_BITS
            for source in args.sources.split(","):
                tensors = load_source(source, side, 6 if args.quick else None)
                print(f"{SOURCES[source]}: {len(tensors)} tensor(s), {sum(w.numel() for w in tensors.values()):,}")
                previous = results.get(source) if args.reuse and same_wquant else None
                results[source] = run_quality(source, tensors, rates, fixed, status, previous)
            results["meta"] = {
                "machine": machine_line(),
                "torch": torch.__version__,
                "threads": args.threads,
                "side": side,
                "versions": versions_line(status),
                "wquant": wquant_line(),
                "notes": "auto-round 0.16.1 was installed with torch==2.13.0 pinned after `pip install --dry-run` "
                "showed torch, transformers and numpy unchanged; it is not in the `bench` extra, so its rows "
                "are skipped where it is absent. Its `quant_tensor_asym` is plain RTN (SignRound tuning needs "
                "calibration data and is not a tensor-level call). Seconds per source: "
                + ", ".join(f"{SOURCES[s]} {results[s]['seconds']:.0f}" for s in SOURCES if s in results)
                + (" (rows from an earlier run on the same wquant revision were reused)." if args.reuse else "."),
            }
        if not args.skip_speed:
            torch.set_num_threads(args.speed_threads)
            results["speed"] = run_speed(side, args.repeats)
        if not args.quick:
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(results, indent=1))
    if "meta" in results:
        body = quality_body(results)
        print(body)
        if args.write:
            figure(results, FIGURE)
            replace_section(QUALITY, body)
        elif args.quick:
            figure(results, Path("/tmp/peers_tensors_quick.png"))
    if "speed" in results:
        body = speed_body(results["speed"], status)
        print(body)
        if args.write:
            replace_section(SPEED, body)


if __name__ == "__main__":
    main()
