"""Quantize + dequantize throughput of a 4096×4096 fp32 tensor: wquant beside bitsandbytes' CPU 4-bit path.

Both libraries run in this process on the same tensor, with the same thread count; the table gives medians
and wquant/bnb ratios (targets: quantize ≥ 5×, dequantize ≥ 1×). `--write` updates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, median_time, replace_section  # noqa: E402

from wquant.formats import quantize  # noqa: E402

CASES = [  # (wquant spec, bitsandbytes block size): the same layout, NF4 table with fp32 absmax per block
    ("nf4/block64:absmax:fp32", 64),
    ("int4/block128:absmax:bf16", 128),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(4096, 4096, generator=torch.Generator().manual_seed(0))
    n = x.numel() / 1e6
    try:
        import bitsandbytes.functional as bnb
    except ImportError:
        bnb = None
    rows = []
    for spec, block in CASES:
        q = quantize(x, spec)
        tq, _ = median_time(lambda spec=spec: quantize(x, spec), args.repeats)
        td, _ = median_time(q.dequantize, args.repeats)
        err = float((q.dequantize() - x).square().sum() / x.square().sum())
        row = {"case": spec, "bits": q.bits_per_param(), "err": err, "q": n / tq, "d": n / td}
        if bnb is not None:
            packed, state = bnb.quantize_4bit(x, blocksize=block, quant_type="nf4")
            bq, _ = median_time(
                lambda block=block: bnb.quantize_4bit(x, blocksize=block, quant_type="nf4"), args.repeats
            )
            bd, _ = median_time(lambda packed=packed, state=state: bnb.dequantize_4bit(packed, state), args.repeats)
            berr = float((bnb.dequantize_4bit(packed, state) - x).square().sum() / x.square().sum())
            row |= {"bnb_q": n / bq, "bnb_d": n / bd, "bnb_err": berr}
        rows.append(row)
        print(row, flush=True)
    version = "absent" if bnb is None else __import__("bitsandbytes").__version__
    lines = [
        f"`python benchmarks/formats_speed.py --write`: {machine_line()}, torch {torch.__version__} with "
        f"{args.threads} threads, bitsandbytes {version}; 4096×4096 fp32 N(0,1), median of {args.repeats}. "
        "bnb runs NF4 at the same block size in the same process. Targets: quantize ≥ 5× bnb, dequantize ≥ 1×.",
        "",
        "| wquant format | bits/param | rel. MSE (bnb) | quantize M el/s: wquant / bnb = ratio | "
        "dequantize M el/s: wquant / bnb = ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "bnb_q" in r:
            lines.append(
                f"| `{r['case']}` | {r['bits']:.3f} | {r['err']:.5f} ({r['bnb_err']:.5f}) | "
                f"{r['q']:.0f} / {r['bnb_q']:.0f} = **{r['q'] / r['bnb_q']:.2f}×** | "
                f"{r['d']:.0f} / {r['bnb_d']:.0f} = **{r['d'] / r['bnb_d']:.2f}×** |"
            )
        else:
            lines.append(f"| `{r['case']}` | {r['bits']:.3f} | {r['err']:.5f} | {r['q']:.0f} | {r['d']:.0f} |")
    body = "\n".join(lines)
    print(body)
    if args.write:
        replace_section("Format speed", body)


if __name__ == "__main__":
    main()
