"""GPTQ wall time on a 1536×384 and a 4096×4096 layer (128 × 512 calibration tokens), beside gptqmodel.

Inputs are correlated Gaussian features (a random mixing), so the Hessian is dense and well conditioned.
The Hessian build is timed apart from the solve, for both libraries. gptqmodel (own venv, see
gptq_vs_gptqmodel.py) runs on the same weights, inputs, grid (sym=False = wquant's zeropoint rule), damping and
column order when it is importable (ratio wquant/gptqmodel, target ≤ 1.0); otherwise its column says "absent".
`--write` updates the "GPTQ speed" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, median_time, replace_section  # noqa: E402

from wquant.algorithms import GPTQConfig, gptq, hessian_from_inputs  # noqa: E402
from wquant.formats import quantize  # noqa: E402

SHAPES = [(1536, 384), (4096, 4096)]  # (out, in)
SPEC = "int4:unsigned/block128:zeropoint:fp32"  # GPTQ's usual asymmetric 4-bit, group 128, integer zero point
DAMP = 0.05  # gptqmodel's default


def _inputs(cols: int, tokens: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=gen) / cols**0.5 + 0.3 * torch.eye(cols)
    return torch.randn(tokens, cols, generator=gen) @ mix


def _peer_time(weight: torch.Tensor, x: torch.Tensor, repeats: int) -> float | None:
    try:
        from gptqmodel.quantization import QuantizeConfig  # type: ignore[import-not-found]
        from gptqmodel.quantization.gptq import GPTQ  # type: ignore[import-not-found]
    except ImportError:
        return None

    times = []
    for _ in range(repeats):  # the Hessian (add_batch) is built outside the timed solve, as for wquant
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        layer.weight.data.copy_(weight)
        qcfg = QuantizeConfig(bits=4, group_size=128, sym=False, desc_act=False, damp_percent=DAMP)
        peer = GPTQ(layer, qcfg=qcfg)
        peer.quantizer.configure(perchannel=True)
        peer.add_batch(x[None], None)
        peer.finalize_hessian()
        start = time.perf_counter()
        peer.quantize(blocksize=128)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for out_f, in_f in SHAPES:
        weight = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(1)) * 0.02
        x = _inputs(in_f, args.samples * args.seqlen, seed=2)
        repeats = args.repeats if out_f * in_f < 4_000_000 else 1
        th, _ = median_time(lambda x=x: hessian_from_inputs(x), repeats)
        h = hessian_from_inputs(x)
        config = GPTQConfig(SPEC, damp=DAMP, act_order="group")
        ts, _ = median_time(lambda w=weight, h=h, c=config: gptq(w, h, c), repeats, warmup=0 if repeats == 1 else 1)
        q = gptq(weight, h, config).quantized
        probe = x[:8192].T
        gain = float(((weight - q.dequantize()) @ probe).square().sum()) / float(
            ((weight - quantize(weight, SPEC).dequantize()) @ probe).square().sum()
        )
        peer = _peer_time(weight, x, repeats)
        row = {"shape": f"{out_f}×{in_f}", "hessian_s": th, "gptq_s": ts, "err_vs_rtn": gain, "peer_s": peer}
        rows.append(row)
        print(row, flush=True)
    lines = [
        f"`python benchmarks/gptq_speed.py --write`: {machine_line()}, torch {torch.__version__} with "
        f"{args.threads} threads; {args.samples} × {args.seqlen} calibration tokens of correlated Gaussian "
        f"features; format `{SPEC}`; median of {args.repeats} (1 for 4096×4096). gptqmodel: "
        + (
            "absent (not installed; it would downgrade the shared venv's numpy)"
            if rows[0]["peer_s"] is None
            else "same run"
        )
        + ".",
        "",
        "| layer (out×in) | Hessian build s | GPTQ solve s | output error / RTN's | gptqmodel solve s | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        peer = "absent" if r["peer_s"] is None else f"{r['peer_s']:.2f}"
        ratio = "–" if r["peer_s"] is None else f"{r['gptq_s'] / r['peer_s']:.2f}"
        lines.append(
            f"| {r['shape']} | {r['hessian_s']:.2f} | {r['gptq_s']:.2f} | {r['err_vs_rtn']:.3f} | {peer} | {ratio} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.write:
        replace_section("GPTQ speed", text)


if __name__ == "__main__":
    main()
