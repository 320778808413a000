"""GPTQ quality and time beside gptqmodel's GPTQ on the same weights, inputs and group size.

gptqmodel 7.6.0 pins numpy 2.2.x, so run this from an environment of its own:
    python3 -m venv /tmp/gq && /tmp/gq/bin/pip install torch==2.13.0 gptqmodel==7.6.0 \
        && /tmp/gq/bin/pip install --no-deps -e . && /tmp/gq/bin/pip install scipy safetensors typer rich \
           matplotlib joblib constriction
    /tmp/gq/bin/python benchmarks/gptq_vs_gptqmodel.py --write
Grids: gptqmodel sym=False (integer zero point) beside wquant's scale + real-valued zero; gptqmodel sym=True
(−8…7 with step 2·amax/15) beside wquant's int4:asym absmax (step amax/7). Close, not identical, grids.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT.parent / "tests" / "algorithms")]
from _common import machine_line, replace_section  # noqa: E402
from algo_helpers import correlated_layer, output_error  # noqa: E402

from wquant.algorithms import GPTQConfig, gptq, hessian_from_inputs  # noqa: E402
from wquant.formats import quantize  # noqa: E402

LAYERS = [(64, 128, 1024), (384, 1536, 4096)]
GRIDS = [(False, "int4:unsigned/block64:minmax:fp32"), (True, "int4:asym/block64:absmax:fp32")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    args = parser.parse_args()
    from gptqmodel.quantization import QuantizeConfig as PeerConfig
    from gptqmodel.quantization.gptq import GPTQ

    torch.set_num_threads(2)
    rows = ["| layer | gptqmodel grid | wquant spec | error wquant / gptqmodel | wquant / RTN | gptqmodel / RTN | "
            "time wquant / gptqmodel |", "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for out_f, in_f, n in LAYERS:
        weight, x = correlated_layer(out_f, in_f, n, seed=4)
        for sym, spec in GRIDS:
            layer = torch.nn.Linear(in_f, out_f, bias=False)
            layer.weight.data.copy_(weight)
            peer = GPTQ(layer, qcfg=PeerConfig(bits=4, group_size=64, sym=sym, desc_act=False))
            peer.quantizer.configure(perchannel=True)
            peer.add_batch(x[None], layer(x[None]))
            start = time.perf_counter()
            result = peer.quantize(blocksize=128)
            t_peer = time.perf_counter() - start
            peer_w = (result[0] if isinstance(result, tuple) else layer.weight.data).float()
            start = time.perf_counter()
            ours = gptq(weight, hessian_from_inputs(x), GPTQConfig(spec))
            t_ours = time.perf_counter() - start
            e_rtn = output_error(weight, quantize(weight, spec).dequantize(), x)
            e_peer, e_ours = output_error(weight, peer_w, x), output_error(weight, ours.quantized.dequantize(), x)
            rows.append(f"| {out_f}×{in_f} | sym={sym} | `{spec}` | {e_ours / e_peer:.3f} | {e_ours / e_rtn:.3f} | "
                        f"{e_peer / e_rtn:.3f} | {t_ours / t_peer:.2f} |")  # fmt: skip
    head = (f"`benchmarks/gptq_vs_gptqmodel.py --write` (own venv, gptqmodel 7.6.0): {machine_line()}, one run per "
            f"case, {n} tokens for the larger layer. Target: error within 1 % and time ratio ≤ 1.")  # fmt: skip
    body = head + "\n\n" + "\n".join(rows)
    print(body)
    if args.write:
        replace_section("GPTQ vs gptqmodel", body)


if __name__ == "__main__":
    main()
