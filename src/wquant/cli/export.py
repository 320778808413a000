"""`wquant export SOURCE --to gguf|compressed-tensors|gptq --out PATH`: ship what wquant quantized.

SOURCE is a folder saved by `wquant quantize` / `advise --apply` (its stored codes and scales are written as
they are), or a Hugging Face folder / 'minilm' (exported unquantized). Formats the target cannot hold exactly
are refused with the list of those it can.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from wquant.cli.app import WquantApp, stdout_console
from wquant.errors import ParameterError

app = WquantApp(help="Export quantized models for inference engines (llama.cpp GGUF, compressed-tensors, GPTQ).")
console = stdout_console()


@app.command("export")
def export_command(
    source: Annotated[str, typer.Argument(help="folder saved by wquant quantize, a HF model folder, or 'minilm'")],
    to: Annotated[str, typer.Option("--to", help="gguf, compressed-tensors or gptq")],
    out: Annotated[Path, typer.Option("--out", help="output file (gguf) or folder")],
    float_type: Annotated[
        str | None, typer.Option("--float-type", help="gguf: unquantized matrices as f32 (default), f16 or bf16")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing output")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="list every tensor")] = False,
) -> None:
    """Write SOURCE's stored codes and scales in the layout an inference engine reads."""
    from wquant.export import export, exporters

    options: dict[str, Any] = {}
    if float_type is not None:
        if to.strip().lower() != "gguf":
            raise ParameterError("--float-type applies to --to gguf only")
        options["float_type"] = float_type.strip().lower()
    table = exporters()
    if to.strip().lower() not in table:
        raise ParameterError(f"--to {to!r} unknown; choose from {', '.join(table)}")
    report = export(source, to, out, force=force, **options)
    summary = ", ".join(f"{n} × {kind}" for kind, n in sorted(report.summary().items()))
    console.print(f"wrote {escape(str(report.path))} ({report.file_bytes:,} bytes): {escape(summary)}")
    for note in report.notes:
        console.print(f"  note: {escape(note)}")
    if verbose:
        rows = Table("tensor", "type", "shape", "bytes")
        for t in report.tensors:
            rows.add_row(escape(t.name), escape(t.kind), "×".join(map(str, t.shape)), f"{t.bytes:,}")
        console.print(rows)
