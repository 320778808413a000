"""`wquant advise MODEL_DIR --budget 4.0 --calib FILE`: a format per tensor at a budget, allocated on measured
sensitivities and shipped only where it beats the best uniform plan.

Prints the plan (tensor, format, bits/param, closed-form bits, predicted distortion), the all-in model
bits/param it lands on and why it was chosen; `--apply --out DIR` quantizes the model with it and saves it.
Output locations are checked before any work; a `--fisher-dir` made for another model or setting is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from wquant.cli.app import WquantApp, stdout_console
from wquant.errors import ParameterError

#: Mount without a name, `root.add_typer(app)`, as the models commands are: that merges the `advise` command
#: into the root (`wquant advise MODEL_DIR ...`); with name="advise" typer would need `wquant advise advise`.
app = WquantApp(help="Fisher-based bit allocation: the format per tensor that meets a bits/param budget.")
console = stdout_console()


def _bits_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ParameterError(f"--bits {text!r} must be comma-separated numbers, e.g. 2,3,4,5,6,7,8") from None
    if not values:
        raise ParameterError("--bits is empty")
    return values


@app.command("advise")
def advise_command(
    model_dir: Annotated[str, typer.Argument(help="local Hugging Face model folder, or 'minilm'", show_default=False)],
    budget: Annotated[float, typer.Option("--budget", "-b", help="all-in model bits/param (model_bits rule)")],
    calib: Annotated[Path, typer.Option("--calib", help="calibration text (UTF-8); never the evaluation text")],
    formats: Annotated[
        list[str] | None,
        typer.Option(
            "--formats", "-f", help="candidate spec template, {b} expands over --bits (repeat); gguf: Q2_K … Q8_0"
        ),
    ] = None,
    bits: Annotated[str, typer.Option("--bits", help="bit widths substituted for {b}")] = "2,3,4,5,6,7,8",
    mode: Annotated[
        str, typer.Option(help="Fisher: auto, true, empirical (causal LMs), embedding (encoders)")
    ] = "auto",
    weighting: Annotated[
        str,
        typer.Option(
            help="measured (output distortion, checked against uniform plans) or the Fisher proxy: "
            "mean (½F̄‖δ‖²), diag (½ΣFδ²)"
        ),
    ] = "measured",
    windows: Annotated[int, typer.Option(help="calibration windows (texts for encoders)")] = 64,
    window: Annotated[int, typer.Option(help="tokens per calibration window")] = 128,
    seed: Annotated[int, typer.Option(help="seed of sampled labels / random projections")] = 0,
    fisher_dir: Annotated[
        Path | None, typer.Option("--fisher-dir", help="reuse the Fisher saved here, or save it here")
    ] = None,
    apply: Annotated[bool, typer.Option("--apply", help="quantize with the plan and save to --out")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="output folder for --apply")] = None,
    plan_json: Annotated[Path | None, typer.Option("--plan-json", help="also write the plan as JSON")] = None,
) -> None:
    """Allocate formats to tensors by Fisher sensitivity so the model lands on BUDGET bits/param."""
    if apply and out is None:
        raise ParameterError("--apply needs --out DIR")
    _run(model_dir, budget, calib, formats, bits, mode, weighting, windows, window, seed, fisher_dir, apply,
         out, plan_json)  # fmt: skip


def _check_outputs(plan_json: Path | None, out: Path | None, fisher_dir: Path | None) -> None:
    """Refuse unwritable output locations before any work starts (nothing is created here)."""
    from wquant.io import check_output_folder, check_writable_dir

    if plan_json is not None:
        if plan_json.is_dir():
            raise ParameterError(f"--plan-json {plan_json} is a folder; give a file name, e.g. {plan_json}/plan.json")
        check_writable_dir(plan_json.parent, "--plan-json")
    if out is not None:
        check_output_folder(out)
    if fisher_dir is not None:
        check_writable_dir(fisher_dir, "--fisher-dir")


def _run(
    model_dir: str,
    budget: float,
    calib: Path,
    formats: list[str] | None,
    bits: str,
    mode: str,
    weighting: str,
    windows: int,
    window: int,
    seed: int,
    fisher_dir: Path | None,
    apply: bool,
    out: Path | None,
    plan_json: Path | None,
) -> None:
    from transformers.utils import logging

    from wquant.allocation import DEFAULT_FORMATS, AdviseConfig, FisherConfig, FisherEstimate, advise
    from wquant.allocation.fisher import FISHER_JSON, fisher_provenance
    from wquant.data import read_text
    from wquant.io import write_atomic
    from wquant.models import load_pretrained, model_bits, quantize_, save_quantized

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    config = AdviseConfig(
        budget=budget,
        formats=tuple(formats or DEFAULT_FORMATS),
        bits=_bits_list(bits),
        weighting=weighting,  # type: ignore[arg-type]
        fisher=FisherConfig(mode=mode, seed=seed, window=window, max_windows=windows),  # type: ignore[arg-type]
    )
    _check_outputs(plan_json, out if apply else None, fisher_dir)
    text = read_text(calib)
    loaded = load_pretrained(model_dir)
    fisher = None
    if fisher_dir is not None:
        provenance = fisher_provenance(loaded.model, text, loaded.task, config.fisher)
        if (fisher_dir / FISHER_JSON).is_file():
            fisher = FisherEstimate.load(fisher_dir, expect=provenance)
    advice = advise(loaded.model, loaded.tokenizer, loaded.task, text, config, fisher=fisher)
    if fisher_dir is not None and fisher is None:
        advice.fisher.save(fisher_dir, provenance)
    plan = advice.plan
    _print_plan(plan)
    if advice.decision is not None:
        console.print(f"shipped: {escape(advice.decision.shipped.label)}: {escape(advice.decision.reason)}")
    if plan_json is not None:
        write_atomic(plan_json, plan.to_json())
    if apply:
        assert out is not None
        quantize_(loaded.model, plan.quantize_config())
        plan.check_applied(loaded.model)
        save_quantized(loaded.model, out, tokenizer=loaded.tokenizer)
        console.print(f"saved to {escape(str(out))}: {model_bits(loaded.model).bits_per_param:.4f} bits/param all-in")


def _print_plan(plan: object) -> None:
    from wquant.allocation import Plan

    assert isinstance(plan, Plan)
    what = "measured output distortion" if plan.weighting == "measured" else f"{plan.mode} Fisher proxy"
    table = Table(title=f"allocation at {plan.budget:g} bits/param ({what})")
    for column, justify in (("tensor", "left"), ("format", "left"), ("bits/param", "right"),
                            ("closed form", "right"), ("predicted distortion", "right")):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for t in plan.tensors:
        table.add_row(
            escape(t.name), escape(t.spec), f"{t.bits_per_param:.4f}", f"{t.continuous_bits:.2f}",
            f"{t.predicted_kl:.3e}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"all-in {plan.bits_per_param:.5f} bits/param (budget {plan.budget:g}, "
        f"{plan.budget * plan.params - plan.total_bits:.0f} bits left), predicted distortion {plan.predicted_kl:.4e}"
    )
