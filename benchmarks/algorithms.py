"""RTN vs GPTQ vs NUPES end to end at 3 and 4 bits: MiniLM embedding cosine and causal-testbed KL.

    .venv/bin/python benchmarks/algorithms.py --write        # updates "Algorithms end to end" in BENCHMARKS.md

Every Linear layer of each model is quantized at the same bits: RTN and GPTQ on `int<b>/block64:absmax:bf16`,
NUPES on `pow<a>:<b>/block64:absmax:bf16` with its exponent a searched per tensor on the layer output error and
its codes learned from a GPTQ start. MiniLM: calibration = short sentences of WikiText-2 *valid*, evaluation =
paragraphs of WikiText-2 raw *test*, mean cosine of sentence embeddings to fp32 (`compare_encoders`). Testbed
(char-level Llama on Tiny Shakespeare, `cached_testbed`, incl. lm_head): calibration = random windows of the
training 90 %, evaluation = KL(fp32 ‖ quantized) and perplexity on the held-out 10 % (`compare_causal`).
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import machine_line, replace_section  # noqa: E402

from wquant.algorithms import GPTQConfig, NUPESConfig, RTNConfig  # noqa: E402
from wquant.data import calibration_windows, read_paragraphs, read_text, sentence_batches  # noqa: E402
from wquant.evaluate import cached_testbed, compare_causal, compare_encoders, heldout_text  # noqa: E402
from wquant.models import load_pretrained, model_bits, quantize_  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
CALIB, EVAL = DATA / "wikitext-2-tokens-valid.txt", DATA / "wikitext-2-raw-test.txt"
SHAKESPEARE = DATA / "tinyshakespeare.txt"
SCALING = "block64:absmax:bf16"
WINDOW = 128


def configs(bits: int, steps: int) -> dict[str, Any]:
    fmt = f"int{bits}/{SCALING}"
    return {"RTN": RTNConfig(fmt, search=False), "GPTQ": GPTQConfig(fmt),
            "NUPES": NUPESConfig(bits=bits, scaling=SCALING, steps=steps)}  # fmt: skip


def layer_bits(model: torch.nn.Module) -> float:
    bits = model_bits(model)
    return bits.quantized_bits / bits.quantized_params


def exponents(reports: list[Any]) -> str:
    found = [float(m.group(1)) for r in reports if (m := re.match(r"pow([0-9.]+):", r.format))]
    if not found:
        return ""
    return f"a ∈ [{min(found):.2f}, {max(found):.2f}], median {statistics.median(found):.2f}"


def sweep(label: str, reference: torch.nn.Module, batches: list[Any], bits_list: list[int], steps: int,
          evaluate: Callable[[torch.nn.Module], dict[str, float]]) -> list[dict[str, Any]]:  # fmt: skip
    """Quantize a copy of `reference` with every method at every bit width and evaluate it."""
    rows = []
    for bits in bits_list:
        for name, config in configs(bits, steps).items():
            model = copy.deepcopy(reference)
            start = time.perf_counter()
            reports = quantize_(model, config, calibration=batches)
            seconds = time.perf_counter() - start
            row = {"model": label, "bits": bits, "method": name, **evaluate(model), "bpp": layer_bits(model),
                   "seconds": seconds, "note": exponents(reports)}  # fmt: skip
            print(row, flush=True)
            rows.append(row)
    return rows


def run_minilm(bits_list: list[int], ncal: int, neval: int, steps: int) -> list[dict[str, Any]]:
    loaded = load_pretrained("minilm")
    paragraphs = read_paragraphs(CALIB, limit=400)
    sentences = [s.strip() + " ." for p in paragraphs for s in p.split(" . ") if len(s) > 40][:ncal]
    batches = sentence_batches(loaded.tokenizer, sentences, batch_size=32, max_length=64)
    texts = read_paragraphs(EVAL, limit=neval)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return {"metric": compare_encoders(loaded.model, model, loaded.tokenizer, texts, max_length=128).mean_cosine}

    return sweep("MiniLM", loaded.model, batches, bits_list, steps, evaluate)


def run_testbed(bits_list: list[int], nwindows: int, steps: int) -> list[dict[str, Any]]:
    folder = cached_testbed(SHAKESPEARE)
    loaded = load_pretrained(folder)
    heldout = heldout_text(folder, SHAKESPEARE)
    full = read_text(SHAKESPEARE)
    batches = calibration_windows(loaded.tokenizer, full[: len(full) - len(heldout)], nsamples=nwindows,
                                  seqlen=WINDOW, seed=0)  # fmt: skip

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        cmp = compare_causal(loaded.model, model, loaded.tokenizer, heldout, window=WINDOW)
        return {"metric": cmp.kl, "ppl": cmp.quantized.perplexity, "ref_ppl": cmp.reference.perplexity}

    return sweep("testbed", loaded.model, batches, bits_list, steps, evaluate)


def table(minilm: list[dict[str, Any]], testbed: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"`python benchmarks/algorithms.py --write`: {machine_line()}, torch {torch.__version__}. Every Linear layer, "
        f"scales `{SCALING}` for all three methods. MiniLM: {args.ncal} calibration sentences (WikiText-2 valid), "
        f"{args.neval} evaluation paragraphs (WikiText-2 raw test), mean cosine to fp32. Testbed: {args.windows} "
        f"calibration windows of {WINDOW} characters from the training 90 %, KL(fp32 ‖ quantized) nats/char on "
        f"the held-out 10 %. NUPES: exponent searched per tensor on the layer output error, {args.steps} "
        "straight-through steps from a GPTQ start.",
        "",
        "| model | bits | method | mean cosine / KL | perplexity | bits/param (quantized layers) | time s | "
        "NUPES exponents |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in minilm + testbed:
        metric = f"{r['metric']:.4f}" if r["model"] == "MiniLM" else f"{r['metric']:.5f}"
        ppl = f"{r['ppl']:.3f} (fp32 {r['ref_ppl']:.3f})" if "ppl" in r else "–"
        lines.append(f"| {r['model']} | {r['bits']} | {r['method']} | {metric} | {ppl} | {r['bpp']:.3f} | "
                     f"{r['seconds']:.0f} | {r['note']} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--ncal", type=int, default=96, help="MiniLM calibration sentences")
    parser.add_argument("--neval", type=int, default=64, help="MiniLM evaluation paragraphs")
    parser.add_argument("--windows", type=int, default=64, help="testbed calibration windows")
    parser.add_argument("--steps", type=int, default=10, help="NUPES straight-through steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    args = parser.parse_args()
    if not (CALIB.exists() and EVAL.exists() and SHAKESPEARE.exists()):
        sys.exit(f"shared text not found under {DATA}; see its README")
    torch.set_num_threads(args.threads)
    testbed = run_testbed(args.bits, args.windows, args.steps)
    minilm = run_minilm(args.bits, args.ncal, args.neval, args.steps)
    text = table(minilm, testbed, args)
    print(text)
    if args.write:
        replace_section("Algorithms end to end", text)


if __name__ == "__main__":
    main()
