"""`wquant quantize | eval | train-lm`: quantize whole Hugging Face models, measure the damage, train a testbed.

MODEL_DIR is a local Hugging Face folder (safetensors weights + tokenizer) or the word `minilm` for the
embedded all-MiniLM-L6-v2. Nothing is downloaded: every command runs offline.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from wquant.algorithms.registry import algorithm_names
from wquant.cli.app import WquantApp, stdout_console
from wquant.errors import ParameterError
from wquant.formats.spec import DEFAULT_FORMAT

app = WquantApp(help="Quantize whole models, evaluate them, train a small causal-LM testbed.")
console = stdout_console()

ModelDir = Annotated[str, typer.Argument(help="local Hugging Face model folder, or 'minilm'", show_default=False)]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--override", "-o", help="GLOB=SPEC for matching modules (repeat; first match wins; SPEC 'none' "
                 "keeps them unquantized)"),
]  # fmt: skip
Targets = Annotated[
    list[str] | None, typer.Option("--target", "-t", help="module kinds to quantize: linear, embedding (repeat)")
]
Excludes = Annotated[list[str] | None, typer.Option("--exclude", "-x", help="module-name glob to leave alone (repeat)")]


def _quiet_transformers() -> None:
    """transformers' own loading bars would interleave with ours and with --json output."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def parse_overrides(items: list[str] | None) -> tuple[tuple[str, str], ...]:
    """['glob=spec', ...] → (('glob', 'spec'), ...)."""
    pairs = []
    for item in items or []:
        glob, sep, spec = item.partition("=")
        if not sep or not glob.strip() or not spec.strip():
            raise ParameterError(f"--override {item!r} must be GLOB=SPEC, e.g. 'lm_head=int8/channel:absmax:bf16'")
        pairs.append((glob.strip(), spec.strip()))
    return tuple(pairs)


def _config(
    fmt: str, overrides: list[str] | None, targets: list[str] | None, excludes: list[str] | None,
    algorithm: str = "rtn", activations: list[str] | None = None,
) -> Any:  # fmt: skip
    """The QuantizeConfig of the CLI options: the algorithm on --format, targets (default: linear), excludes,
    overrides (an override's SPEC runs the same algorithm on that format; 'none' keeps the module) and the
    activation spec ('none' keeps inputs in float, also for algorithms that have their own default)."""
    from wquant.algorithms import config_for
    from wquant.formats import parse_spec
    from wquant.models import QuantizeConfig

    method = config_for(algorithm, parse_spec(fmt))
    acts = _activations(activations)
    if isinstance(acts, str) and acts.strip().lower() == "none":
        acts = None
        if hasattr(method, "activations"):
            method = dataclasses.replace(method, activations=None)
    return QuantizeConfig(
        method, targets=tuple(targets or ("linear",)), exclude=tuple(excludes or ()),
        overrides=parse_overrides(overrides), activations=acts,
    )  # fmt: skip


def _activations(items: list[str] | None) -> str | tuple[tuple[str, str], ...] | None:
    """['int8/token'] → 'int8/token'; ['*.down_proj=mxint8', 'int8/token'] → per-module pairs, the bare spec last
    as '*' (first match wins)."""
    if not items:
        return None
    pairs = parse_overrides([i for i in items if "=" in i])
    bare = [i.strip() for i in items if "=" not in i]
    if len(bare) > 1:
        raise ParameterError(f"--activations takes one default SPEC (and GLOB=SPEC entries), got {bare}")
    if not pairs:
        return bare[0]
    return pairs + ((("*", bare[0]),) if bare else ())


def _bits_table(title: str, report: Any) -> Table:
    table = Table(title=title)
    for col in ("stored as", "tensors", "params", "bits", "bits/param"):
        table.add_column(col, justify="left" if col == "stored as" else "right")
    groups: dict[str, list[Any]] = {}
    for row in report.tensors:
        groups.setdefault(row.stored_as, []).append(row)
    for name, rows in sorted(groups.items()):
        params, bits = sum(r.numel for r in rows), sum(r.bits for r in rows)
        table.add_row(name, str(len(rows)), f"{params:,}", f"{bits:,}", f"{bits / params:.4f}")
    table.add_row("[bold]model", str(len(report.tensors)), f"{report.params:,}", f"{report.bits:,}",
                  f"[bold]{report.bits_per_param:.4f}")  # fmt: skip
    return table


@app.command("quantize")
def quantize_cmd(
    model_dir: ModelDir,
    out: Annotated[Path, typer.Option("--out", help="folder to write the quantized model to", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", "-f", help="format spec for every selected tensor")] = DEFAULT_FORMAT,
    override: Overrides = None,
    target: Targets = None,
    exclude: Excludes = None,
    algorithm: Annotated[str, typer.Option(help=f"one of: {', '.join(algorithm_names())}")] = "rtn",
    activations: Annotated[
        list[str] | None,
        typer.Option(
            "--activations",
            "-a",
            help="quantize every quantized Linear's input too: int8/token (dynamic), "
            "int8/tensor:static (calibrated), e4m3/token, mxfp8, ...; 'none' keeps inputs in float "
            "(smoothquant and zeroquant default to int8/token); GLOB=SPEC (repeat) for some modules, first match "
            "wins",
        ),
    ] = None,
    calib: Annotated[
        Path | None,
        typer.Option(
            help="calibration text: needed by gptq, awq, smoothquant and static activations; "
            "used by nupes (data-free ones ignore it)"
        ),
    ] = None,
    nsamples: Annotated[int, typer.Option(help="calibration windows (causal LM) or paragraphs (encoder)")] = 128,
    seqlen: Annotated[int, typer.Option(help="tokens per calibration window")] = 512,
    seed: Annotated[int, typer.Option(help="seed of the calibration sampling")] = 0,
    force: Annotated[bool, typer.Option("--force", help="replace an existing non-empty --out folder")] = False,
    plan: Annotated[
        Path | None, typer.Option("--plan", help="a plan.json from `wquant study` or `wquant advise --plan-json`")
    ] = None,
) -> None:
    """Quantize a model's Linear (and, with --target embedding, Embedding) weights and save it.

    The saved folder is a safetensors state dict with the packed quantized weights, a checked JSON manifest
    and the tokenizer. Every algorithm honours --target, --exclude and --override.

    Examples:
      wquant quantize minilm --format int4:unsigned/block64:minmax:bf16 --out minilm-int4
      wquant quantize ./my-llama -f nf4 --override 'lm_head=int8/channel:absmax:bf16' --out llama-nf4
      wquant quantize ./my-llama -f mxfp4 -t linear -t embedding -x '*.layers.0.*' --out llama-mx
      wquant quantize minilm -f int4/block64:absmax:bf16 --algorithm gptq --calib calib.txt --out minilm-gptq
      wquant quantize minilm -f int4:unsigned/block64:minmax:bf16 --algorithm hqq --out minilm-hqq
      wquant quantize ./my-llama -f int4:unsigned/block64:zeropoint:fp16 --algorithm awq --calib c.txt --out l-awq
      wquant quantize ./my-llama -f int8/channel:absmax:fp32 --algorithm smoothquant --calib c.txt --out l-w8a8
      wquant quantize ./my-llama -f int8/channel:absmax:fp32 --activations int8/tensor:static --calib c.txt --out q
      wquant quantize minilm --plan study/plan.json --out minilm-4bit
    """
    from wquant.io import check_output_folder
    from wquant.models import load_pretrained, model_bits, quantize_, save_quantized

    _quiet_transformers()
    config = _config(fmt, override, target, exclude, algorithm, activations)
    check_output_folder(out, force=force)
    chosen = None if plan is None else _read_plan(plan, override, target, exclude)
    if chosen is not None:
        planned = chosen.quantize_config(None if algorithm == "rtn" else config.method)
        config = dataclasses.replace(planned, activations=config.activations)
    configs = [c for c in (config.method, *dict(config.overrides).values()) if c is not None]
    per_module = isinstance(config.activations, tuple)
    specs = [a for _, a in config.activations] if per_module else [config.activations_for(c) for c in configs]
    static = [a for a in specs if a is not None and a.static]
    if calib is None and any(c.needs_calibration for c in configs):
        raise ParameterError(f"--algorithm {algorithm} needs --calib FILE (calibration text)")
    if calib is None and static:
        raise ParameterError(f"static activation scales ({static[0]}) are calibrated: give calibration batches with "
                             "--calib FILE, or use a dynamic spec such as int8/token")  # fmt: skip
    loaded = load_pretrained(model_dir)
    before = model_bits(loaded.model)
    uses_data = bool(static) or any(c.uses_calibration or callable(getattr(c, "channel_scales", None)) for c in configs)
    batches = _calibration(loaded, calib, nsamples, seqlen, seed) if calib is not None and uses_data else None
    reports = quantize_(loaded.model, config, calibration=batches, log=_log)
    if chosen is not None:
        chosen.check_applied(loaded.model)
    save_quantized(loaded.model, out, tokenizer=loaded.tokenizer, force=force)
    report = model_bits(loaded.model)
    console.print(_bits_table(f"{model_dir}: {before.bits_per_param:.2f} → {report.bits_per_param:.4f} "
                              "bits/param", report))  # fmt: skip
    acts = sorted({(r.activations, r.activation_bits) for r in reports if r.activations is not None})
    for spec, bits in acts:
        layers = sum(r.activations == spec and r.activation_bits == bits for r in reports)
        console.print(f"inputs of {layers} layers quantized as {spec}: {bits:.4g} bits per activation element "
                      "(codes + dynamic scales)")  # fmt: skip
    console.print(f"saved to {out}")


def _read_plan(path: Path, *others: list[str] | None) -> Any:
    """The plan in a plan.json; it fixes every tensor's format, so per-tensor options cannot be combined with it."""
    from wquant.allocation import Plan

    if any(others):
        raise ParameterError("--plan fixes every tensor's format; drop --override, --target and --exclude")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ParameterError(f"--plan {path}: cannot read it ({exc}); give the plan.json a study wrote") from None
    return Plan.from_json(text)


def _log(message: str) -> None:
    typer.echo(message, err=True)


def _calibration(loaded: Any, calib: Path, nsamples: int, seqlen: int, seed: int) -> list[Any]:
    """Calibration batches from a text file: random windows for causal LMs, paragraphs for encoders."""
    from wquant.data import calibration_windows, read_paragraphs, sentence_batches

    if loaded.task == "encoder":
        texts = read_paragraphs(calib, limit=nsamples)
        return sentence_batches(loaded.tokenizer, texts, max_length=min(seqlen, loaded.max_length))
    return calibration_windows(loaded.tokenizer, calib, nsamples=nsamples, seqlen=seqlen, seed=seed)


@app.command("eval")
def eval_cmd(
    model_dir: ModelDir,
    text: Annotated[Path, typer.Option("--text", help="UTF-8 text file to evaluate on", show_default=False)],
    quantized: Annotated[
        Path | None, typer.Option("--quantized", "-q", help="folder written by 'wquant quantize' to compare")
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="quantize MODEL_DIR on the fly to this spec and compare")
    ] = None,
    override: Overrides = None,
    target: Targets = None,
    exclude: Excludes = None,
    window: Annotated[int, typer.Option(help="causal LMs: tokens per non-overlapping window")] = 256,
    top_k: Annotated[int, typer.Option(help="causal LMs: k of the top-k KL")] = 10,
    limit: Annotated[int | None, typer.Option(help="encoders: use at most this many paragraphs")] = None,
    min_chars: Annotated[int, typer.Option(help="encoders: shortest line kept as a paragraph")] = 30,
    batch_size: Annotated[int, typer.Option(help="windows or paragraphs per forward pass")] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as one JSON object")] = False,
) -> None:
    """Measure a quantized model against its unquantized base on a text file.

    Causal LMs: perplexity of both and KL(base ‖ quantized), full and top-k, plus top-1 agreement.
    Encoders: mean/min cosine of mean-pooled sentence embeddings, nearest-neighbour agreement.
    Without --quantized or --format, a causal LM's perplexity alone is reported.

    Examples:
      wquant eval minilm --format int4:unsigned/block64:minmax:bf16 --target linear --text wiki.txt --limit 1000
      wquant eval minilm --quantized minilm-int4 --text wiki.txt
      wquant eval ~/.cache/wquant/lm --quantized lm-int4 --text shakespeare.txt --window 128
    """
    from wquant.models import load_pretrained, load_quantized, quantize_
    from wquant.models.checkpoint import check_matches_base
    from wquant.models.inference import ForwardTimer

    _quiet_transformers()
    if quantized is not None and fmt is not None:
        raise ParameterError("pass either --quantized DIR or --format SPEC, not both")
    loaded = load_pretrained(model_dir)
    other = None
    if quantized is not None:
        other = load_quantized(quantized)
        check_matches_base(other, loaded.model, quantized)
    elif fmt is not None:
        other = copy.deepcopy(loaded.model)
        quantize_(other, _config(fmt, override, target, exclude))
    timers = {"base": ForwardTimer(loaded.model)} | ({} if other is None else {"quantized": ForwardTimer(other)})
    with timers["base"], timers.get("quantized", nullcontext()):
        result = _evaluate(loaded, other, text, window=window, top_k=top_k, limit=limit, min_chars=min_chars,
                           batch_size=batch_size)  # fmt: skip
    inference = _inference_report(other, timers)
    if as_json:
        body = dataclasses.asdict(result) | {"inference": inference}
        typer.echo(json.dumps(body, allow_nan=False))  # strict JSON: NaN was refused above
        return
    console.print(_result_table(f"{model_dir} on {text.name}", result))
    console.print(_result_table("inference (forwards of this evaluation)", inference))


def _evaluate(loaded: Any, other: Any, text: Path, *, window: int, top_k: int, limit: int | None, min_chars: int,
              batch_size: int) -> Any:  # fmt: skip
    from wquant.data import iter_paragraphs, read_text
    from wquant.evaluate import compare_causal, compare_encoders, perplexity

    if loaded.task == "causal-lm":
        body = read_text(text)
        if other is None:
            result: Any = perplexity(loaded.model, loaded.tokenizer, body, window=window,
                                     batch_size=batch_size, progress=True)  # fmt: skip
        else:
            result = compare_causal(loaded.model, other, loaded.tokenizer, body, window=window,
                                    batch_size=batch_size, top_k=top_k, progress=True)  # fmt: skip
    else:
        if other is None:
            raise ParameterError("an encoder has no perplexity; pass --quantized DIR or --format SPEC to compare")
        paragraphs = iter_paragraphs(text, min_chars=min_chars, limit=limit)
        result = compare_encoders(loaded.model, other, loaded.tokenizer, paragraphs, batch_size=batch_size,
                                  max_length=loaded.max_length, total=limit, progress=True)  # fmt: skip
    return result


def _inference_report(other: Any, timers: dict[str, Any]) -> dict[str, Any]:
    """Median forward time of each model during the evaluation, and the quantized weights' resident memory."""
    from wquant.models.inference import weight_memory

    report: dict[str, Any] = {f"{name}_forward_ms": 1e3 * t.latency.median_s if t.times else None
                              for name, t in timers.items()}  # fmt: skip
    report["forwards"] = len(timers["base"].times)
    if other is not None:
        memory = weight_memory(other)
        report |= {"quantized_weight_bytes": memory.resident_bytes, "exact_weight_bytes": memory.exact_bits / 8,
                   "resident_over_exact": memory.ratio, "kernels": memory.kernels}  # fmt: skip
    return report


def _result_table(title: str, result: Any) -> Table:
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in _flatten(result if isinstance(result, dict) else dataclasses.asdict(result)):
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    return table


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


@app.command("train-lm")
def train_lm_cmd(
    text: Annotated[Path, typer.Argument(help="UTF-8 training text", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="folder for model + tokenizer", show_default=False)],
    steps: Annotated[int, typer.Option(help="optimizer steps")] = 400,
    seed: Annotated[int, typer.Option(help="seed of initialisation and batch sampling")] = 0,
    hidden_size: Annotated[int, typer.Option(help="model width")] = 128,
    layers: Annotated[int, typer.Option(help="transformer blocks")] = 4,
    context: Annotated[int, typer.Option(help="training window, characters")] = 128,
    batch_size: Annotated[int, typer.Option(help="windows per step")] = 16,
    threads: Annotated[int, typer.Option(help="torch CPU threads while training")] = 2,
    force: Annotated[bool, typer.Option("--force", help="replace an existing, non-empty --out folder")] = False,
) -> None:
    """Train a small seeded character-level Llama on a text file (a causal LM for KL / perplexity work).

    The last 10 % of the text is held out; the folder loads with AutoModelForCausalLM / AutoTokenizer.

    Examples:
      wquant train-lm /work/shared/data/tinyshakespeare.txt --out ~/.cache/wquant/shakespeare-lm
      wquant train-lm corpus.txt --out lm --steps 1000 --hidden-size 192 --layers 6
    """
    from wquant.evaluate import TrainConfig, train_causal_lm

    _quiet_transformers()
    base = TrainConfig()
    heads = base.heads if hidden_size % base.heads == 0 else 1
    config = TrainConfig(
        hidden_size=hidden_size, layers=layers, heads=heads, intermediate_size=3 * hidden_size,
        context=context, batch_size=batch_size, steps=steps, seed=seed, threads=threads,
    )  # fmt: skip
    result = train_causal_lm(text, out, config, progress=True, force=force)
    console.print(
        f"trained {result.params:,} parameters in {result.seconds:.0f} s: train loss {result.train_loss:.3f}, "
        f"held-out loss {result.heldout_loss:.3f} nats/char → {result.path}"
    )
