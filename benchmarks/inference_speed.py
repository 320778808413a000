"""Packed inference on the CPU: dequantize throughput and forward latency, wquant's kernels against bitsandbytes.

Dequantize: Ŵ from the packed layout, float32 out, wquant through its selected kernel's prepared state (the
table kernel: one pass over the packed bytes) against `bitsandbytes.functional.dequantize_4bit` (its native
CPU kernel) on the same weight. bitsandbytes has no integer grid, so int4 g128 is compared with its NF4 at the
same block of 128. Forward: `model(**batch)` of random token batches, every system interleaved (one forward of
each per round) so that background load falls on all alike; medians. Systems: fp32; wquant NF4 b64 and int4
g128 (scale + zero, bf16) with float32 activations; wquant int4 g128 on a bf16 model (torch's int4 kernel);
bitsandbytes Linear4bit NF4 b64 (fp32 compute); torchao int4 weight-only where it runs on this CPU. All Linear
layers of all-MiniLM-L6-v2 and of the causal testbed (char-level Llama, Tiny Shakespeare) are quantized.

    nice -n 10 python benchmarks/inference_speed.py            # prints the tables
    nice -n 10 python benchmarks/inference_speed.py --write    # and updates the section in BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import machine_line, replace_section  # noqa: E402
from torch import nn  # noqa: E402

from wquant.evaluate import cached_testbed  # noqa: E402
from wquant.formats import quantize  # noqa: E402
from wquant.kernels import native, prepare  # noqa: E402
from wquant.models import load_pretrained, quantize_  # noqa: E402
from wquant.models.inference import forward_latency, prepare_inference, token_batch, weight_memory  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
SECTION = "Inference speed (packed kernels, CPU)"
DEQ_SHAPES = ((1536, 384), (1024, 4096), (4096, 4096))
BATCHES = ((1, 16), (32, 64))
THREADS = (1, 2)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each callable, one call of each per round (after one untimed round)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


# ---------------------------------------------------------------------------------------------------- dequantize


def dequantize_rows(repeats: int) -> list[str]:
    import bitsandbytes.functional as bnb_f

    lines = ["| threads | weight | wquant layout | bnb layout | wquant M values/s | bnb M values/s | wquant / bnb |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    cases = []
    for rows, cols in DEQ_SHAPES:
        w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0))
        for spec, block, label in (("nf4", 64, "NF4 b64"), ("int4-g128", 128, "int4 g128")):
            state = prepare(quantize(w, spec), torch.float32)
            packed, qs = bnb_f.quantize_4bit(w, blocksize=block, quant_type="nf4")
            cases.append(((rows, cols), label, block, state, packed, qs))
    for threads in THREADS:
        torch.set_num_threads(threads)
        for (rows, cols), label, block, state, packed, qs in cases:
            got = interleaved({"wquant": lambda s=state: s.kernel.dequantize(s),
                               "bnb": lambda p=packed, q=qs: bnb_f.dequantize_4bit(p, q)}, repeats)  # fmt: skip
            n = rows * cols / 1e6
            lines.append(f"| {threads} | {rows}×{cols} | {label} ({state.kernel.name}) | NF4 b{block} | "
                         f"{n / got['wquant']:,.0f} | {n / got['bnb']:,.0f} | "
                         f"**{got['bnb'] / got['wquant']:.2f}×** |")  # fmt: skip
    return lines


# ------------------------------------------------------------------------------------------------------- forward


def bnb_model(model: nn.Module) -> nn.Module:
    import bitsandbytes as bnb

    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.float32, compress_statistics=False,
                                      quant_type="nf4")  # fmt: skip
            layer.weight = bnb.nn.Params4bit(child.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                             blocksize=64, compress_statistics=False)  # fmt: skip
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data.clone(), requires_grad=False)
            setattr(module, name, layer.to("cpu"))  # quantizes
    return model


def torchao_model(model: nn.Module) -> tuple[nn.Module | None, str]:
    """torchao int4 weight-only (group 128) on a bf16 copy, or None and why it does not run here."""
    try:
        from torchao.quantization import Int4WeightOnlyConfig
        from torchao.quantization import quantize_ as ao_quantize

        copy_ = copy.deepcopy(model).to(torch.bfloat16)
        ao_quantize(copy_, Int4WeightOnlyConfig(group_size=128))
        return copy_, ""
    except Exception as exc:  # torchao raises ImportError/NotImplementedError/AssertionError by packing format
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"


def systems(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, str], list[str]]:
    out: dict[str, nn.Module] = {"fp32": model}
    kernels: dict[str, str] = {}
    notes = []
    for label, spec, dtype in (("wquant NF4 b64", "nf4", torch.float32),
                               ("wquant int4 g128", "int4-g128", torch.float32),
                               ("wquant int4 g128, bf16 model", "int4-g128", torch.bfloat16)):  # fmt: skip
        q = copy.deepcopy(model).to(dtype)
        quantize_(q, spec)
        prepare_inference(q, dtype)
        memory = weight_memory(q)
        kernels[label] = ", ".join(f"{k} {n}" for k, n in memory.kernels.items())
        notes.append(f"{label}: resident weights {memory.resident_bytes:,} B = {memory.ratio:.4f}× the exact bits "
                     f"({memory.resident_bits_per_param:.3f} b/w), kernels {kernels[label]}")  # fmt: skip
        out[label] = q
    out["bnb Linear4bit NF4 b64"] = bnb_model(model)
    ao, why = torchao_model(model)
    if ao is not None:
        out["torchao int4 g128 (bf16)"] = ao
    else:
        notes.append(f"torchao int4 weight-only does not run on this CPU ({why})")
    return out, kernels, notes


def forward_rows(name: str, model: nn.Module, max_tokens: int, repeats: int) -> tuple[list[str], list[str]]:
    models, kernels, notes = systems(model)
    vocab = int(model.config.vocab_size)  # type: ignore[union-attr]
    lines = [f"| {name} | threads | batch × tokens | " + " | ".join(models) + " | NF4 / bnb | int4 / bnb | "
             "NF4 / fp32 | int4 / fp32 |", "|---|---|---|" + "---|" * (len(models) + 4)]  # fmt: skip
    for threads in THREADS:
        torch.set_num_threads(threads)
        for batch, tokens in BATCHES:
            tokens = min(tokens, max_tokens)
            reps = repeats if batch == 1 else max(5, 2 * repeats // 3)
            timed = forward_latency(models, token_batch(vocab, batch, tokens), repeats=reps)
            got = {k: v.median_s for k, v in timed.items()}
            bnb, fp32 = got["bnb Linear4bit NF4 b64"], got["fp32"]
            nf4, int4 = got["wquant NF4 b64"], got["wquant int4 g128"]
            cells = " | ".join(f"{1e3 * v:.1f}" for v in got.values())
            lines.append(f"| | {threads} | {batch} × {tokens} | {cells} | **{nf4 / bnb:.2f}×** | "
                         f"**{int4 / bnb:.2f}×** | "
                         f"**{nf4 / fp32:.2f}×** | **{int4 / fp32:.2f}×** |")  # fmt: skip
    return lines, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (batch 32: two thirds of them)")
    args = parser.parse_args()
    load_before = machine_line()
    deq = dequantize_rows(args.repeats)
    print("\n".join(deq))
    minilm = load_pretrained("minilm")
    mini_lines, mini_notes = forward_rows("MiniLM (ms)", minilm.model, minilm.max_length, args.repeats)
    print("\n".join(mini_lines))
    testbed = load_pretrained(cached_testbed(SHAKESPEARE, progress=True))
    tb_lines, tb_notes = forward_rows("testbed (ms)", testbed.model, testbed.max_length, args.repeats)
    print("\n".join(tb_lines))
    text = "\n".join([
        f"`nice -n 10 python benchmarks/inference_speed.py --write`: {load_before} at the start, "
        f"{machine_line().split(', ')[-1]} at the end; torch {torch.__version__} (CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}), compiled table decoder "
        f"{'present' if native.library() is not None else 'absent (torch fallback)'}. "
        f"{__doc__.split(chr(10) + chr(10))[1]}"
        " Medians; forward ratios below 1 and dequantize ratios above 1 mean wquant is faster. The machine has 2 "
        "cores shared with other jobs: when a neighbour holds a core, every system's 2-thread run stalls in OpenMP "
        "waits (compare the fp32 column at 1 and 2 threads), so the 2-thread rows show that all systems suffer alike "
        "and only their ratios mean anything.",
        "",
        "### Dequantize throughput (target ≥ 1.5× bitsandbytes)",
        "",
        *deq,
        "",
        "### Forward latency (targets: ≤ 1.0× bitsandbytes at batch 1, ≤ 1.1× fp32 at batch 32)",
        "",
        *mini_lines,
        "",
        *tb_lines,
        "",
        "MiniLM: " + "; ".join(mini_notes) + ".",
        "",
        "Testbed: " + "; ".join(tb_notes) + ".",
    ])  # fmt: skip
    print("\n".join(mini_notes + tb_notes))
    if args.write:
        replace_section(SECTION, text)


if __name__ == "__main__":
    main()
