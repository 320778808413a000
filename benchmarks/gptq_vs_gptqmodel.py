"""GPTQ output error beside gptqmodel's GPTQ on the same weights, inputs, grid, damping and column order.

gptqmodel 7.6.0 pins numpy 2.2.x, so run this from an environment of its own:
    python3 -m venv /tmp/gq && /tmp/gq/bin/pip install torch==2.13.0 gptqmodel==7.6.0 \\
        && /tmp/gq/bin/pip install --no-deps -e . && /tmp/gq/bin/pip install scipy safetensors typer rich \\
           matplotlib joblib constriction
    /tmp/gq/bin/python benchmarks/gptq_vs_gptqmodel.py --write
Grids are identical: gptqmodel sym=False is wquant's `zeropoint` rule on `int<b>:unsigned` (integer zero point),
sym=True is the `span` rule on `int<b>:asym` (−8…7, step 2·absmax/15). Both use damping 0.05·mean(diag H)
(gptqmodel's default) and group-aware column order (GAR, gptqmodel's default and wquant's).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT.parent / "tests" / "algorithms")]
from _common import machine_line, replace_section  # noqa: E402
from algo_helpers import correlated_layer, output_error  # noqa: E402

from wquant.algorithms import GPTQConfig, gptq, hessian_from_inputs  # noqa: E402
from wquant.formats import quantize  # noqa: E402

LAYERS = [(64, 128, 1024), (384, 1536, 4096)]  # (out, in, tokens)
GRIDS = [  # (bits, group, sym, wquant spec)
    (4, 64, False, "int4:unsigned/block64:zeropoint:fp32"),
    (4, 64, True, "int4:asym/block64:span:fp32"),
    (3, 32, False, "int3:unsigned/block32:zeropoint:fp32"),
]
DAMP = 0.05


def peer_gptq(weight: torch.Tensor, x: torch.Tensor, bits: int, group: int, sym: bool) -> torch.Tensor:
    from gptqmodel.quantization import QuantizeConfig as PeerConfig  # type: ignore[import-not-found]
    from gptqmodel.quantization.gptq import GPTQ  # type: ignore[import-not-found]

    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data.copy_(weight)
    qcfg = PeerConfig(bits=bits, group_size=group, sym=sym, desc_act=False, act_group_aware=True, damp_percent=DAMP)
    peer = GPTQ(layer, qcfg=qcfg)
    peer.quantizer.configure(perchannel=True)
    peer.add_batch(x[None], None)
    result = peer.quantize(blocksize=128)
    return (result[0] if isinstance(result, tuple) else layer.weight.data).float()


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="seeded layers per case")
    parser.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = ["| layer | grid (gptqmodel) | wquant spec | error wquant / gptqmodel: geomean [min, max] | "
            "wquant / RTN | gptqmodel / RTN |", "|---|---|---|---|---:|---:|"]  # fmt: skip
    for out_f, in_f, n in LAYERS:
        for bits, group, sym, spec in GRIDS:
            ratio, ours_rtn, peer_rtn = [], [], []
            for seed in range(10, 10 + args.seeds):
                weight, x = correlated_layer(out_f, in_f, n, seed=seed)
                e_peer = output_error(weight, peer_gptq(weight, x, bits, group, sym), x)
                ours = gptq(weight, hessian_from_inputs(x), GPTQConfig(spec, damp=DAMP, act_order="group"))
                e_ours = output_error(weight, ours.quantized.dequantize(), x)
                e_rtn = output_error(weight, quantize(weight, spec).dequantize(), x)
                ratio.append(e_ours / e_peer)
                ours_rtn.append(e_ours / e_rtn)
                peer_rtn.append(e_peer / e_rtn)
            line = (f"| {out_f}×{in_f}, {n} tokens | {bits}-bit g{group} sym={sym} | `{spec}` | "
                    f"{geomean(ratio):.4f} [{min(ratio):.3f}, {max(ratio):.3f}] | {geomean(ours_rtn):.3f} | "
                    f"{geomean(peer_rtn):.3f} |")  # fmt: skip
            rows.append(line)
            print(line, flush=True)
    head = (f"`benchmarks/gptq_vs_gptqmodel.py --write` (own venv, gptqmodel 7.6.0): {machine_line()}. "
            f"{args.seeds} seeded layers per case (Gaussian weights, correlated inputs), identical grids, damping "
            f"{DAMP}, group-aware order. Target: output error within 1 %.")  # fmt: skip
    body = head + "\n\n" + "\n".join(rows)
    print(body)
    if args.write:
        replace_section("GPTQ vs gptqmodel", body)


if __name__ == "__main__":
    main()
