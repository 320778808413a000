"""`wquant bench-inference`: resident weight memory and forward latency of a quantized model against its base.

Both models run the same random token batches, interleaved (one forward of each per round) so that background
load hits them alike; medians are reported. The quantized model's kernels are prepared before timing
(`prepare_inference`), and the memory is what its quantized weights hold between forwards.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from wquant.cli.app import WquantApp, stdout_console
from wquant.errors import ParameterError

app = WquantApp(help="Measure a quantized model's inference speed and memory.")
console = stdout_console()


def parse_batches(items: list[str] | None) -> list[tuple[int, int]]:
    """'BxT' strings → (batch, tokens) pairs; default 1x16 and 32x64 (the issue's two regimes)."""
    out = []
    for item in items or ["1x16", "32x64"]:
        m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", item)
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            raise ParameterError(f"--batch {item!r}: give BATCHxTOKENS with positive numbers, e.g. 1x16")
        out.append((int(m.group(1)), int(m.group(2))))
    return out


def _vocab_size(model: Any) -> int:
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if not size:
        raise ParameterError("the model's config names no vocab_size; cannot make token batches for it")
    return int(size)


@app.command("bench-inference")
def bench_inference_cmd(
    model_dir: Annotated[str, typer.Argument(help="local Hugging Face model folder, or 'minilm'", show_default=False)],
    quantized: Annotated[
        Path, typer.Option("--quantized", "-q", help="folder written by 'wquant quantize'", show_default=False)
    ],
    batch: Annotated[
        list[str] | None, typer.Option("--batch", "-b", help="BATCHxTOKENS to time (repeat; default 1x16, 32x64)")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's own setting)")] = None,
    repeats: Annotated[int, typer.Option(help="timed forwards per model and batch (the median is reported)")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as one JSON object")] = False,
) -> None:
    """Resident weight memory and median forward latency of a quantized model next to its unquantized base.

    Examples:
      wquant bench-inference minilm --quantized minilm-nf4
      wquant bench-inference ~/.cache/wquant/lm --quantized lm-int4 --batch 1x16 --batch 8x128 --threads 1
    """
    import torch

    from wquant.models import load_pretrained, load_quantized
    from wquant.models.checkpoint import check_matches_base
    from wquant.models.inference import forward_latency, prepare_inference, token_batch, weight_memory

    if repeats < 1:
        raise ParameterError(f"--repeats must be at least 1, got {repeats}")
    if threads is not None:
        if threads < 1:
            raise ParameterError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    shapes = parse_batches(batch)
    loaded = load_pretrained(model_dir)
    other = load_quantized(quantized)
    check_matches_base(other, loaded.model, quantized)
    other.eval()
    prepare_inference(other)
    memory = weight_memory(other)
    vocab = _vocab_size(loaded.model)
    rows = []
    for b, t in shapes:
        if t > loaded.max_length:
            raise ParameterError(f"--batch {b}x{t}: the model reads at most {loaded.max_length} tokens")
        times = forward_latency({"base": loaded.model, "quantized": other}, token_batch(vocab, b, t), repeats=repeats)
        base, mine = times["base"].median_s, times["quantized"].median_s
        rows.append({"batch": b, "tokens": t, "base_ms": 1e3 * base, "quantized_ms": 1e3 * mine,
                     "ratio": mine / base})  # fmt: skip
    result: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "weights": {
            "resident_bytes": memory.resident_bytes,
            "exact_bytes": memory.exact_bits / 8,
            "resident_over_exact": memory.ratio,
            "resident_bits_per_param": memory.resident_bits_per_param,
            "base_bytes": 4 * memory.params,
            "kernels": memory.kernels,
        },
        "latency": rows,
    }
    if as_json:
        typer.echo(json.dumps(result))
        return
    w = result["weights"]
    console.print(
        f"quantized weights: {w['resident_bytes']:,} bytes resident ({w['resident_bits_per_param']:.4f} bits/weight, "
        f"{w['resident_over_exact']:.4f}× the exact bits; fp32: {w['base_bytes']:,} bytes); kernels: "
        + ", ".join(f"{k} {n}" for k, n in w["kernels"].items())
    )
    table = Table(title=f"forward latency, median of {repeats}, {result['threads']} thread(s)")
    for col in ("batch × tokens", "base ms", "quantized ms", "ratio"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(f"{row['batch']} × {row['tokens']}", f"{row['base_ms']:.2f}", f"{row['quantized_ms']:.2f}",
                      f"{row['ratio']:.2f}×")  # fmt: skip
    console.print(table)
