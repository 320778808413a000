"""`wquant theory ...`: replica analysis and AMP for linear regression with quantized weights."""

from __future__ import annotations

import typer

app = typer.Typer(help="Typical-case theory of linear regression with quantized weights.", no_args_is_help=True)
