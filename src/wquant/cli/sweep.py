r"""`wquant sweep CONFIG.toml`: run a grid locally or on a Dask cluster; finished points are kept.

The help text goes through rich markup, which would swallow `[sweep]` and `[formats]`: they are written
`\[sweep]` here so the example config pastes as valid TOML (a test runs it from the `--help` output).
"""

from __future__ import annotations

from typing import Annotated

import typer


def sweep(
    config: Annotated[str, typer.Argument(help=r"TOML file: \[sweep] kind = formats | theory | model, plus its grid")],
    out: Annotated[str, typer.Option(help="output folder (results.csv, points/)")] = "wquant-sweep",
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler address tcp://HOST:PORT, e.g. tcp://10.0.0.5:8786")
    ] = None,
) -> None:
    r"""Run every point of the grid that is not finished yet and write one tidy table.

    Example config (paste it into grid.toml):

      \[sweep]
      kind = "formats"
      jobs = 2
      \[formats]
      dist = ["normal", "laplace"]
      formats = [
        "int{bits}/block64:absmax:bf16",
        "uniform@{bits}/tensor:rms+coded",
      ]
      bits = [3, 4]
      n = 65536

    Examples:
      wquant sweep grid.toml --out sweep-formats
      wquant sweep grid.toml --scheduler tcp://127.0.0.1:8786
    """
    from wquant.sweep import load_sweep_config, run_sweep

    result = run_sweep(load_sweep_config(config), out, scheduler=scheduler)
    recomputed = f" ({result.damaged} replacing damaged cache entries)" if result.damaged else ""
    typer.echo(f"{result.computed} points computed{recomputed}, {result.cached} taken from {out}/points")
    typer.echo(f"table: {result.table}")
