"""`wquant study`: the main job — from a model folder to a report."""

from __future__ import annotations

from typing import Annotated

import typer

from wquant.cli.app import WquantApp

app = WquantApp(help="Study a model end to end and write a report.", no_args_is_help=False)


@app.command()
def study(
    model: Annotated[str, typer.Argument(help="local Hugging Face model folder, or 'minilm' (embedded)")] = "minilm",
    out: Annotated[str, typer.Option(help="output folder (report.html, results.csv, stages/)")] = "wquant-study",
    budget: Annotated[float, typer.Option(help="bits/param, all-in, model-level")] = 4.0,
    text: Annotated[str | None, typer.Option(help="evaluation text file (default: built-in sentences)")] = None,
    max_texts: Annotated[int, typer.Option(help="texts evaluated (and calibrated on)")] = 200,
    calib: Annotated[str | None, typer.Option(help="calibration text for the plan (default: built-in)")] = None,
    formats: Annotated[
        list[str] | None,
        typer.Option("--formats", "-f", help="candidate family: a spec, or a template with {b} (repeat)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of every random choice")] = 0,
    force: Annotated[bool, typer.Option(help="replace an existing report (finished stages are reused)")] = False,
) -> None:
    """Recommend how to quantize a model at a budget: allocate formats to tensors on measured sensitivities,
    check the plan against the best uniform plan, evaluate every candidate, and write a decision document.

    Examples:
      wquant study --out study-minilm
      wquant study ~/models/my-llm --budget 3.5 --text ../shared/data/wikitext-2-raw-test.txt \
                   --calib ../shared/data/wikitext-2-tokens-valid.txt --out study-llm
    """
    from wquant.study.pipeline import DEFAULT_FAMILIES, StudyConfig, run_study

    config = StudyConfig(model=model, budget=budget, text=text, max_texts=max_texts, calib=calib, seed=seed,
                         formats=tuple(formats or DEFAULT_FAMILIES))  # fmt: skip
    result = run_study(config, out, force=force)
    for run in result.stages:
        typer.echo(f"{run.name:>9}: {'cached' if run.cached else f'{run.seconds:.1f} s'}")
    typer.echo("")
    typer.echo(result.summary.sentence)
    typer.echo("")
    typer.echo(f"report: {result.report}")
    typer.echo(f"table:  {result.table}")
    typer.echo(f"plan:   {result.plan}")
