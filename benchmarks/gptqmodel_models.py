"""gptqmodel's GPTQ pipeline beside wquant's GPTQ, end to end on the trained causal testbed.

gptqmodel 7.6.0 pins numpy 2.2.x, so run this from an environment of its own (the one gptq_vs_gptqmodel.py uses):
    python3 -m venv /tmp/gq && /tmp/gq/bin/pip install torch==2.13.0 gptqmodel==7.6.0 \\
        && /tmp/gq/bin/pip install --no-deps -e . && /tmp/gq/bin/pip install scipy safetensors typer rich \\
           matplotlib joblib constriction
    nice -n 5 /tmp/gq/bin/python benchmarks/gptqmodel_models.py            # prints the section
    nice -n 5 /tmp/gq/bin/python benchmarks/gptqmodel_models.py --write    # and updates BENCHMARKS.md

Model and evaluation are those of benchmarks/models.py for the testbed (character-level Llama trained on Tiny
Shakespeare, cached in ~/.cache/wquant/testbed): `compare_causal(fp32 reference, quantized, tokenizer, held-out
10 %, window=WINDOW)` → KL(fp32 ‖ quantized) per character, perplexity, top-1 agreement. Calibration: 128 windows
of WINDOW characters from the first 90 % (`wquant.data.calibration_windows`, seed 0), the same windows for
both systems.

gptqmodel runs its own model-level pipeline: `GPTQModel.load(folder, QuantizeConfig(bits, group_size=64, sym,
desc_act=False), device="cpu", dtype=torch.float32)` then `.quantize(windows, batch_size=8)` (its defaults
otherwise: damping 0.05, group-aware reordering, true-sequential, lm_head left unquantized). It loads in bf16 on
CPU unless told otherwise; the main rows ask for fp32 (the reference's dtype), one extra row keeps its default.
The quantized model is saved (`.save`, FORMAT.GPTQ: zero points stored minus 1) and its packed tensors (qweight,
qzeros, scales, g_idx) are read back from the checkpoint, unpacked here and dequantized in fp32 into a plain copy
of the fp32 Llama; the gap to gptqmodel's own dequantization (TorchLinear on the reloaded checkpoint) is
printed. Both systems are thus evaluated the same way. (The in-memory model right after `.quantize()` holds
checkpoint-format zeros that its TorchLinear kernel reads without the +1: evaluated as is, it scores KL ≈ 2.2;
hence the save and reload.)
gptqmodel leaves lm_head in full precision by default, so wquant leaves it too (`exclude=("lm_head",)`).

wquant: `quantize_(model, QuantizeConfig(GPTQConfig(spec, damp=0.05), exclude=...), calibration=windows)` on the
identical grid (sym=False ↔
`int<b>:unsigned/block64:zeropoint:fp16`, integer zero point and fp16 scale as gptqmodel stores them; sym=True ↔
`int<b>:asym/block64:span:fp16`), plus wquant's default damping 0.01 as an extra row.

Bits per Linear weight are exact stored bits over the quantized layers' elements. wquant: `model_bits`. gptqmodel:
every stored tensor at its dtype — qweight (b-bit codes in int32 words), qzeros (b bits per group and column),
scales (fp16 per group and column) and g_idx (int32 per input column; stored in the checkpoint even without
act-order).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # its default pool (1 worker on 2 cores) refuses to start
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import machine_line, replace_section  # noqa: E402
from torch import nn  # noqa: E402

from wquant.algorithms import GPTQConfig  # noqa: E402
from wquant.data import (
    calibration_windows,  # noqa: E402
    read_text,  # noqa: E402
)
from wquant.evaluate import cached_testbed, compare_causal, heldout_text  # noqa: E402
from wquant.models import QuantizeConfig, load_pretrained, model_bits, quantize_  # noqa: E402  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = DATA / "tinyshakespeare.txt"  # as in benchmarks/models.py
WINDOW = 128  # as in benchmarks/models.py
GROUP = 64
CALIB_WINDOWS = 128
DAMP = 0.05  # gptqmodel's default damp_percent
SECTION = "Peers: gptqmodel end to end"


def spec_for(bits: int, sym: bool) -> str:
    return f"int{bits}:asym/block{GROUP}:span:fp16" if sym else f"int{bits}:unsigned/block{GROUP}:zeropoint:fp16"


def unpack_codes(words: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """b-bit codes packed LSB-first as one bit stream along `dim` of an int32 tensor (GPTQ layout, any b)."""
    moved = words.movedim(dim, -1).to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(32, dtype=torch.int64)
    stream = ((moved[..., None] >> shifts) & 1).flatten(-2)  # bits in stream order
    count = stream.shape[-1] // bits
    fields = stream[..., : count * bits].unflatten(-1, (count, bits))
    codes = (fields << torch.arange(bits, dtype=torch.int64)).sum(-1)
    return codes.movedim(-1, dim)


def peer_dequantize(tensors: dict[str, torch.Tensor], path: str, bits: int, shape: torch.Size) -> torch.Tensor:
    """(out, in) fp32 weight of one Linear from a gptqmodel checkpoint in FORMAT.GPTQ (v1: zero stored minus 1)."""
    out_f, in_f = shape
    codes = unpack_codes(tensors[f"{path}.qweight"], bits, 0)[:in_f]  # (in, out)
    zeros = unpack_codes(tensors[f"{path}.qzeros"], bits, 1)[:, :out_f] + 1  # (groups, out)
    g = tensors[f"{path}.g_idx"].long()
    weight = tensors[f"{path}.scales"].float()[g] * (codes - zeros[g]).float()
    return weight.t().contiguous()


def peer_bits(tensors: dict[str, torch.Tensor], path: str) -> int:
    return sum(tensors[f"{path}.{k}"].numel() * tensors[f"{path}.{k}"].element_size() * 8
               for k in ("qweight", "qzeros", "scales", "g_idx"))  # fmt: skip


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def linear_paths(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def run_peer(
    folder: Path, reference: nn.Module, calib: list[dict[str, torch.Tensor]], bits: int, sym: bool, fp32: bool
) -> dict[str, Any]:
    from gptqmodel import GPTQModel, QuantizeConfig  # type: ignore[import-not-found]
    from safetensors.torch import load_file

    qcfg = QuantizeConfig(bits=bits, group_size=GROUP, sym=sym, desc_act=False)
    kwargs: dict[str, Any] = {"dtype": torch.float32} if fp32 else {}
    peer = GPTQModel.load(str(folder), qcfg, device="cpu", **kwargs)
    torch.set_num_threads(1)
    start = time.perf_counter()
    peer.quantize(calib, batch_size=8)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="gptqmodel-testbed-") as saved:
        peer.save(saved)
        del peer
        stored = json.loads((Path(saved) / "quantize_config.json").read_text())
        if stored.get("format", "gptq") != "gptq" or stored.get("bits") != bits:
            raise RuntimeError(f"unexpected gptqmodel checkpoint config {stored}")
        tensors: dict[str, torch.Tensor] = {}
        for file in sorted(Path(saved).glob("*.safetensors")):
            tensors.update(load_file(str(file)))
        model = copy.deepcopy(reference)
        total = numel = 0
        skipped = []
        for path in linear_paths(reference):
            linear = model.get_submodule(path)
            if f"{path}.qweight" not in tensors:
                skipped.append(path)
                continue
            linear.weight.data.copy_(peer_dequantize(tensors, path, bits, linear.weight.shape))
            total, numel = total + peer_bits(tensors, path), numel + linear.weight.numel()
        # this fp32 reading of the checkpoint against gptqmodel's own: its TorchLinear (bf16/fp16 only) on the
        # reloaded checkpoint, weights as its dequantize_weight returns them
        reloaded = GPTQModel.load(saved, device="cpu", backend="torch")
        torch.set_num_threads(1)
        gaps = []
        for path in linear_paths(reference):
            if path not in skipped:
                mine = model.get_submodule(path).weight.data
                theirs = reloaded.model.get_submodule(path).dequantize_weight().float().t()
                gaps.append(float((mine - theirs).abs().max() / mine.abs().max()))
        kernel = type(reloaded.model.get_submodule(linear_paths(reference)[0])).__name__
        kernel_gap = max(gaps)
        del reloaded
    return {"model": model, "bits": total / numel, "seconds": seconds, "skipped": skipped,
            "kernel_gap": kernel_gap, "kernel": kernel}  # fmt: skip


def run_wquant(
    reference: nn.Module, batches: list[torch.Tensor], spec: str, damp: float, exclude: tuple[str, ...]
) -> dict[str, Any]:
    model = copy.deepcopy(reference)
    start = time.perf_counter()
    quantize_(model, QuantizeConfig(GPTQConfig(spec, damp=damp), exclude=exclude), calibration=batches)
    seconds = time.perf_counter() - start
    mb = model_bits(model)
    return {"model": model, "bits": mb.quantized_bits / mb.quantized_params, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 3], help="code widths (sym=True at 4 only)")
    parser.add_argument("--no-extras", action="store_true", help="skip the bf16-default and damp-0.01 rows")
    parser.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="extra quantize runs per grid, gptqmodel and wquant interleaved, for median times",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    folder = cached_testbed(SHAKESPEARE)
    loaded = load_pretrained(folder)
    reference, tokenizer = loaded.model, loaded.tokenizer
    heldout = heldout_text(folder, SHAKESPEARE)
    full = read_text(SHAKESPEARE)
    train = full[: len(full) - len(heldout)]
    batches = calibration_windows(tokenizer, train, nsamples=CALIB_WINDOWS, seqlen=WINDOW, seed=0)
    calib = [{"input_ids": w, "attention_mask": torch.ones_like(w)} for batch in batches for w in batch]

    def evaluate(model: nn.Module) -> dict[str, float]:
        r = compare_causal(reference, model, tokenizer, heldout, window=WINDOW)
        return {"kl": r.kl, "ppl": r.quantized.perplexity, "top1": r.top1_agreement, "ref_ppl": r.reference.perplexity}

    grids = [(b, False) for b in args.bits] + ([(4, True)] if 4 in args.bits else [])
    rows: list[str] = []
    ratios: list[str] = []
    notes: list[str] = []
    ref_ppl = float("nan")

    def row(label: str, result: dict[str, Any], metrics: dict[str, float]) -> None:
        line = (f"| {label} | {result['bits']:.4f} | {metrics['kl']:.5f} | {metrics['ppl']:.4f} | "
                f"{metrics['top1']:.4f} | {result['seconds']:.1f} |")  # fmt: skip
        rows.append(line)
        print(line, file=sys.stderr, flush=True)

    for bits, sym in grids:
        spec = spec_for(bits, sym)
        peer_runs = [(True, "fp32")]
        if bits == 4 and not sym and not args.no_extras:
            peer_runs.append((False, "bf16, its CPU default"))
        peer_main: tuple[dict[str, Any], dict[str, float]] | None = None
        for fp32, dtype_note in peer_runs:
            with stdout_to_stderr():  # gptqmodel logs to stdout; the script's stdout is the section
                peer = run_peer(folder, reference, calib, bits, sym, fp32)
            metrics = evaluate(peer["model"])
            ref_ppl = metrics["ref_ppl"]
            row(f"gptqmodel GPTQ {bits}-bit g{GROUP} sym={sym}, load {dtype_note}", peer, metrics)
            notes.append(f"gptqmodel {bits}-bit sym={sym} ({dtype_note}): left unquantized "
                         f"{', '.join(peer['skipped']) or 'nothing'}; fp32 weights read here vs its {peer['kernel']}"
                         f".dequantize_weight() on the reloaded checkpoint: max |Δw| / max |w| = "
                         f"{peer['kernel_gap']:.1e} over the layers")  # fmt: skip
            if fp32:
                peer_main = (peer, metrics)
        exclude = tuple(peer_main[0]["skipped"]) if peer_main else ()
        damps = [DAMP] + ([0.01] if not args.no_extras and not sym else [])
        # wall times: the first run above, then `repeats` more, the two systems interleaved (the load moves)
        peer_times = [] if peer_main is None else [peer_main[0]["seconds"]]
        our_times: list[float] = []
        for _ in range(args.repeats):
            with stdout_to_stderr():
                peer_times.append(run_peer(folder, reference, calib, bits, sym, True)["seconds"])
            our_times.append(run_wquant(reference, batches, spec, DAMP, exclude)["seconds"])
        for damp in damps:
            ours = run_wquant(reference, batches, spec, damp, exclude)
            metrics = evaluate(ours["model"])
            row(f"wquant GPTQ `{spec}`, damp {damp:g}", ours, metrics)
            if peer_main is not None:
                kl_ratio = metrics["kl"] / peer_main[1]["kl"]
                mine = statistics.median([*our_times, ours["seconds"]] if damp == DAMP else [ours["seconds"]])
                time_ratio = mine / statistics.median(peer_times)
                ratios.append(f"| {bits}-bit g{GROUP} sym={sym} | damp {damp:g} | {kl_ratio:.3f} | {time_ratio:.3f} "
                              f"({len(peer_times)} runs) |")  # fmt: skip
                print(ratios[-1], file=sys.stderr, flush=True)

    versions = (f"gptqmodel {version('gptqmodel')}, torch {torch.__version__}, transformers {version('transformers')}, "
                f"wquant {version('wquant')}")  # fmt: skip
    head = (
        f"`benchmarks/gptqmodel_models.py --write` (own venv): {machine_line()}, 1 torch thread; {versions}. "
        f"Mode: gptqmodel's own model-level pipeline (`GPTQModel.load` + `.quantize` on CPU, then `.save`), its "
        f"checkpoint's packed weights dequantized in fp32 into a plain copy of the Llama. Testbed {folder.name}: "
        f"KL(fp32 ‖ quantized) per character, perplexity (fp32 {ref_ppl:.4f}) and top-1 agreement on the held-out "
        f"{len(heldout):,} characters (window {WINDOW}); calibration {CALIB_WINDOWS} windows of {WINDOW} from the "
        f"first 90 %, the same for both. All Linear layers except lm_head (gptqmodel's default leaves it in full "
        f"precision; wquant excludes it too). Bits/weight: exact stored bits over those layers' weights (gptqmodel: "
        f"qweight + qzeros + fp16 scales + int32 g_idx). Quantize seconds: wall time of gptqmodel's `.quantize()` "
        f"call (its whole pipeline) and of wquant's `quantize_` (block-wise calibration walk), shared machine; the "
        f"ratio table compares medians over the first run and {args.repeats} more of each, interleaved."
    )
    table = ["| system | bits/weight | KL | perplexity | top-1 agreement | quantize seconds |",
             "|---|---:|---:|---:|---:|---:|", *rows]  # fmt: skip
    ratio_table = ["| grid | wquant damping | KL wquant / gptqmodel (fp32 load) | median time wquant / gptqmodel |",
                   "|---|---|---:|---:|", *ratios]  # fmt: skip
    body = "\n\n".join([head, "\n".join(table), "\n".join(ratio_table), "\n".join(f"- {n}" for n in notes)])
    print(body)
    if args.write:
        replace_section(SECTION, body)


if __name__ == "__main__":
    main()
