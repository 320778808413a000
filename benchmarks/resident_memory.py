"""Resident memory of quantized weights: wquant's packed buffers against their exact bit count and bitsandbytes.

What is measured is the memory the quantized Linear weights of all-MiniLM-L6-v2 hold between forwards: for wquant,
every buffer of every `PackedWeight` (uint8 fields, bit-packed); for bitsandbytes' `Linear4bit`, its packed weight
plus every tensor of its quant state (absmax, the nested absmax and offset with double quantization, and the
16-entry code table it keeps per layer). No dequantized copy is kept by either between forwards.

    python benchmarks/resident_memory.py            # prints the table
    python benchmarks/resident_memory.py --write    # and updates the section in BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import machine_line, replace_section  # noqa: E402
from torch import nn  # noqa: E402

from wquant.models import load_pretrained, model_bits, packed_weights, quantize_  # noqa: E402

SPECS = {
    "nf4 b64, fp32 absmax (bnb's layout)": "nf4",
    "nf4 b64, bf16 absmax": "nf4/block64:absmax:bf16",
    "int4 g64 scale+zero bf16": "int4:unsigned/block64:minmax:bf16",
    "int4 g128, GPTQ checkpoint layout": "gptq-int4-g128",
    "mxfp4": "mxfp4",
    "int3 g64 absmax bf16": "int3/block64:absmax:bf16",
    "coded uniform at 3 b/w": "uniform@3/tensor:rms:bf16+coded",
}


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def wquant_rows(model: nn.Module) -> list[tuple[str, float, float, float]]:
    rows = []
    for label, spec in SPECS.items():
        quantized = copy.deepcopy(model)
        quantize_(quantized, spec)
        bits = model_bits(quantized)
        resident = sum(p.resident_bytes() for _, p in packed_weights(quantized))
        exact = bits.quantized_bits / 8
        rows.append((f"wquant {label}", bits.quantized_bits / bits.quantized_params, resident, resident / exact))
    return rows


def bnb_rows(model: nn.Module) -> list[tuple[str, float, float, float]]:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return []
    rows = []
    for double in (False, True):
        resident = numel = 0
        for module in copy.deepcopy(model).modules():
            for name, child in list(module.named_children()):
                if not isinstance(child, nn.Linear):
                    continue
                layer = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=torch.float32,
                    compress_statistics=double,
                    quant_type="nf4",
                )
                layer.weight = bnb.nn.Params4bit(child.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                                 blocksize=64, compress_statistics=double)  # fmt: skip
                layer = layer.to("cpu")  # quantizes
                state = layer.weight.quant_state
                held = [layer.weight.data, state.absmax, state.code]
                if state.nested:
                    held += [state.state2.absmax, state.state2.code, state.offset]
                resident += sum(_bytes(t) for t in held)
                numel += child.weight.numel()
                setattr(module, name, layer)
        label = "bitsandbytes Linear4bit NF4 b64" + (" + double quant" if double else "")
        rows.append((label, 8 * resident / numel, resident, float("nan")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    args = parser.parse_args()
    model = load_pretrained("minilm").model
    numel = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    rows = wquant_rows(model) + bnb_rows(model)
    lines = [
        f"`python benchmarks/resident_memory.py --write`: {machine_line()}, torch {torch.__version__}. "
        f"all-MiniLM-L6-v2, its 37 Linear weights ({numel:,} values) quantized in place; resident = bytes held "
        "between forwards by the quantized weights (wquant: every PackedWeight buffer; bitsandbytes: the packed "
        "weight and every quant-state tensor). Exact bits: `QuantizedTensor.bits()` summed. Target: within 2 % of "
        "the exact bit count, and no more than bitsandbytes at equal bits.",
        "",
        "| system | bits/weight (exact) | resident bytes | resident / exact bits/8 | resident bits/weight |",
        "|---|---|---|---|---|",
    ]
    for label, bits, resident, ratio in rows:
        shown = "—" if ratio != ratio else f"{ratio:.4f}"
        lines.append(f"| {label} | {bits:.4f} | {resident:,.0f} | {shown} | {8 * resident / numel:.4f} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_section("Resident memory of quantized weights", text)


if __name__ == "__main__":
    main()
