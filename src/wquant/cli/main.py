"""Entry point of the `wquant` command: wires the sub-command groups together."""

from __future__ import annotations

import logging
import warnings
from typing import Annotated

import typer

from wquant import __version__
from wquant.cli import advise as advise_cli
from wquant.cli import export as export_cli
from wquant.cli import formats as formats_cli
from wquant.cli import inference as inference_cli
from wquant.cli import models as models_cli
from wquant.cli import qat as qat_cli
from wquant.cli import study as study_cli
from wquant.cli import sweep as sweep_cli
from wquant.cli import theory as theory_cli
from wquant.cli.app import WquantApp

#: Loggers whose warnings are about other libraries, not the user's command: importing transformers'
#: quantizers imports torchao when installed, which logs "Failed to load <its .so>" for kernels built for
#: other torch versions, and makes torch.utils._pytree log a deprecation for each Enum it registers.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")
#: Third-party modules whose deprecation warnings are meant for their own callers' developers.
QUIET_MODULES = r"(torch|torchao|transformers|huggingface_hub|accelerate|tokenizers|safetensors)(\.|$)"


def quiet_third_party() -> None:
    """Silence other libraries' deprecation notices and torchao's load failures; wquant's warnings still show."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=QUIET_MODULES)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"wquant {__version__}")
        raise typer.Exit()


app = WquantApp(help="wquant: weight quantization formats, theory and algorithms.")


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", help="print the version and exit", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    """wquant: weight quantization formats, theory and algorithms."""
    quiet_third_party()


app.add_typer(formats_cli.app, name="formats")
app.add_typer(theory_cli.app, name="theory")
app.command("study")(study_cli.study)
app.command("sweep")(sweep_cli.sweep)
app.add_typer(models_cli.app)  # quantize, eval, train-lm
app.add_typer(advise_cli.app)  # advise
app.add_typer(export_cli.app)  # export
app.add_typer(inference_cli.app)  # bench-inference
app.add_typer(qat_cli.app)  # qat


if __name__ == "__main__":  # pragma: no cover
    app()
