"""`wquant sweep CONFIG.toml`: run a grid locally or on a Dask cluster; finished points are kept."""

from __future__ import annotations

from typing import Annotated

import typer


def sweep(
    config: Annotated[str, typer.Argument(help="TOML file: [sweep] kind = formats | theory | model, plus its grid")],
    out: Annotated[str, typer.Option(help="output folder (results.csv, points/)")] = "wquant-sweep",
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler, e.g. tcp://10.0.0.5:8786")] = None,
) -> None:
    """Run every point of the grid that is not finished yet and write one tidy table.

    Example config:

      [sweep]
      kind = "formats"
      jobs = 2
      [formats]
      dist = ["normal", "laplace", "t:5"]
      formats = ["int{bits}/block64:absmax:bf16", "uniform@{bits}/tensor:rms+coded"]
      bits = [3, 4]

    Examples:
      wquant sweep grid.toml --out sweep-formats
      wquant sweep grid.toml --scheduler tcp://127.0.0.1:8786
    """
    from wquant.sweep import load_sweep_config, run_sweep

    result = run_sweep(load_sweep_config(config), out, scheduler=scheduler)
    typer.echo(f"{result.computed} points computed, {result.cached} taken from {out}/points")
    typer.echo(f"table: {result.table}")
