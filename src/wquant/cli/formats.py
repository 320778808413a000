"""`wquant formats ...`: list the formats and compare them on a distribution or a real tensor."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Annotated

import torch
import typer
from rich.markup import escape
from rich.table import Table

from wquant.cli.app import WquantApp, stdout_console
from wquant.formats import PRESETS, quantize
from wquant.formats.compare import bound_samples, compare_formats, load_tensor, sample_source, standard_formats
from wquant.formats.scaling import SCALE_RULES
from wquant.formats.spec import ELEMENT_FORMS
from wquant.io import check_output_file

app = WquantApp(help="Weight formats: list them, compare them.")
console = stdout_console()


@app.command("list")
def list_formats() -> None:
    """Show every element grid, scaling option and named preset (with its bits/param on 4096-wide rows)."""
    console.print("[bold]Spec:[/] ELEMENT[/GRANULARITY[:RULE][:SCALE]][+search][+outliers<ratio>[:fp16|bf16|fp32]]")
    console.print("[bold]Elements:[/] " + "; ".join(ELEMENT_FORMS))
    console.print("[bold]Granularity:[/] tensor, channel, block<B> (B need not divide the row; padding is not stored)")
    console.print("[bold]Rules:[/] " + ", ".join(SCALE_RULES))
    console.print("[bold]Scale formats:[/] fp32, fp16, bf16, e8m0 (OCP floor), e8m0-rceil, ExMy (e4m3, ue4m3, e7m3…)")
    table = Table(title="Presets")
    table.add_column("name")
    table.add_column("spec")
    table.add_column("bits/param", justify="right")
    probe = torch.randn(8, 4096, generator=torch.Generator().manual_seed(0))
    for name, spec in PRESETS.items():
        table.add_row(name, spec, f"{quantize(probe, spec).bits_per_param():.4f}")
    console.print(table)


@app.command("compare")
def compare(
    dist: Annotated[
        str, typer.Option(help="normal | laplace | t:<nu> (unit variance, iid) or FILE.safetensors:TENSOR")
    ] = "normal",
    formats: Annotated[
        list[str] | None, typer.Option("--formats", "-f", help="format spec (repeat); default: a standard set")
    ] = None,
    bits: Annotated[int, typer.Option(help="element bits of the standard set")] = 4,
    n: Annotated[int, typer.Option(help="samples drawn for a distribution")] = 2**20,
    seed: Annotated[int, typer.Option(help="seed of the samples")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object per format")] = False,
    plot: Annotated[str | None, typer.Option(help="also draw rate vs distortion with R(D) to .png/.svg/.pdf")] = None,
) -> None:
    """Quantize one tensor with several formats: bits/param (all-in), relative MSE, SQNR, gap to R(D).

    Examples:
      wquant formats compare --dist normal --bits 4 --plot rd.png
      wquant formats compare --dist t:5 -f nf4 -f mxfp4 -f "crd-t5:4/tensor:rms+outliers0.001"
      wquant formats compare -f "uniform@3.5/tensor:rms+coded" -f int4-g128   # coded to a 3.5-bit budget
      wquant formats compare --dist model.safetensors:layers.0.mlp.weight --bits 3
    """
    if plot:
        check_output_file(plot, "--plot", (".png", ".svg", ".pdf"))
    if dist.endswith(".safetensors") or ".safetensors:" in dist:
        x, source = load_tensor(dist), None
    else:
        x, source = sample_source(dist, n, seed), dist
    specs = list(formats) if formats else standard_formats(bits)
    reports = compare_formats(x, specs, source)
    if plot:
        from wquant.report.rate_distortion import plot_rate_distortion

        samples = None if source == "normal" else bound_samples(x)
        shown = [r for r in reports if not r.problem]
        typer.echo(f"figure: {plot_rate_distortion(shown, plot, source=source, samples=samples)}", err=True)
    if as_json:  # non-finite numbers become null: JSON has no NaN or Infinity
        for report in reports:
            row = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                   for k, v in dataclasses.asdict(report).items()}  # fmt: skip
            typer.echo(json.dumps(row))
        return
    table = Table(title=f"{dist}: {x.numel():,} values")
    for col in ("format", "bits/param", "rel. MSE", "SQNR dB", "gap to R(D), bits"):
        table.add_column(col, justify="left" if col == "format" else "right")
    for r in sorted(reports, key=lambda rep: (math.isnan(rep.bits_per_param), rep.bits_per_param)):
        bits = f"{r.bits_per_param:.4f}" if math.isfinite(r.bits_per_param) else "—"
        if r.problem:
            table.add_row(r.spec, bits, "cannot represent", "—", "—")
        else:
            table.add_row(r.spec, bits, f"{r.rel_mse:.5f}", f"{r.sqnr_db:.2f}", f"{r.gap_bits:.3f}")
    console.print(table)
    for r in reports:
        if r.problem:
            console.print(f"{escape(r.spec)}: {escape(r.problem)}", highlight=False)
