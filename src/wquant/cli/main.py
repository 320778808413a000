"""Entry point of the `wquant` command: wires the sub-command groups together."""

from __future__ import annotations

from wquant.cli import advise as advise_cli
from wquant.cli import formats as formats_cli
from wquant.cli import models as models_cli
from wquant.cli import study as study_cli
from wquant.cli import sweep as sweep_cli
from wquant.cli import theory as theory_cli
from wquant.cli.app import WquantApp

app = WquantApp(help="wquant: weight quantization formats, theory and algorithms.")
app.add_typer(formats_cli.app, name="formats")
app.add_typer(theory_cli.app, name="theory")
app.command("study")(study_cli.study)
app.command("sweep")(sweep_cli.sweep)
app.add_typer(models_cli.app)  # quantize, eval, train-lm
app.add_typer(advise_cli.app)  # advise


if __name__ == "__main__":  # pragma: no cover
    app()
