"""Whole-model benchmark: fidelity, quantize time and eval throughput on MiniLM and the causal testbed.

    .venv/bin/python benchmarks/models.py                 # 1000 WikiText-2 paragraphs, writes BENCHMARKS.md
    .venv/bin/python benchmarks/models.py --paragraphs 100 --no-write

MiniLM (all 37 Linear layers): mean/min cosine of sentence embeddings to fp32 and nearest-neighbour agreement
for RTN asymmetric int4 group 64 with bf16/fp16/fp32 scale + zero, int8 group 64, and NF4 (the bitsandbytes
layout); bitsandbytes' Linear4bit (NF4, block 64) and hqq's HQQLinear (4 bit, group 64) run on the same model
and text when importable (optional `bench` extra), and are skipped with a note otherwise. The causal testbed
(character-level Llama trained on Tiny Shakespeare, cached in ~/.cache/wquant/testbed) is evaluated on its
held-out 10 %: perplexity, KL to fp32 (full and top-10) and top-1 agreement. Times are wall-clock seconds
on this machine with torch threads as given; throughput counts real (non-padding) tokens per second.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import replace_section  # noqa: E402
from torch import nn  # noqa: E402

from wquant.evaluate import (  # noqa: E402
    cached_testbed,
    compare_causal,
    embed_texts,
    embedding_fidelity,
    heldout_text,
    perplexity,
    read_paragraphs,
)
from wquant.models import QuantizeConfig, load_pretrained, model_bits, quantize_model  # noqa: E402

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
WIKITEXT = DATA / "wikitext-2-raw-test.txt"
SHAKESPEARE = DATA / "tinyshakespeare.txt"
SECTION = "## Models"
INT4 = "int4:unsigned/block64:minmax:{}"
MINILM_SPECS = [INT4.format("bf16"), INT4.format("fp16"), INT4.format("fp32"), "int8:unsigned/block64:minmax:bf16",
                "nf4"]  # fmt: skip
CAUSAL_SPECS = [INT4.format("bf16"), "int8:unsigned/block64:minmax:bf16", "nf4"]


@dataclass(frozen=True)
class Row:
    method: str
    bits_per_param: float | None
    quantize_s: float
    tokens_per_s: float
    metrics: dict[str, float]


def _linear_paths(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _replace_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    from wquant.models.quantize import set_submodule

    for path in _linear_paths(model):
        set_submodule(model, path, make(model.get_submodule(path)))
    return model


def _bnb_linear4bit(linear: nn.Linear) -> nn.Module:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=torch.float32, quant_type="nf4")  # fmt: skip
    layer.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type="nf4", blocksize=64)
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    return layer.to("cpu")


def _hqq_linear(linear: nn.Linear) -> nn.Module:
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    config = BaseQuantizeConfig(nbits=4, group_size=64)
    return HQQLinear(copy.deepcopy(linear), quant_config=config, compute_dtype=torch.float32, device="cpu")


PEERS: dict[str, tuple[str, Callable[[nn.Linear], nn.Module]]] = {
    "bitsandbytes Linear4bit nf4 b64": ("bitsandbytes", _bnb_linear4bit),
    "hqq HQQLinear 4bit g64": ("hqq", _hqq_linear),
}


def _peer_available(module: str) -> str | None:
    try:
        __import__(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip this peer"
        return f"{type(exc).__name__}: {exc}"
    return None


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def best_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """Fastest of a few runs: on a shared machine the minimum is the least disturbed measurement."""
    return min(_timed(fn)[1] for _ in range(repeats))


def bench_minilm(paragraphs: int, notes: list[str]) -> tuple[list[Row], dict[str, object]]:
    if not WIKITEXT.is_file():
        notes.append(f"MiniLM skipped: {WIKITEXT} is missing")
        return [], {}
    texts = read_paragraphs(WIKITEXT, limit=paragraphs)
    loaded = load_pretrained("minilm")
    tokens = sum(min(len(ids), loaded.max_length) for ids in loaded.tokenizer(texts)["input_ids"])

    speed_texts = texts[:64]
    speed_tokens = sum(min(len(ids), loaded.max_length) for ids in loaded.tokenizer(speed_texts)["input_ids"])

    def embed(model: nn.Module) -> torch.Tensor:
        return embed_texts(model, loaded.tokenizer, texts, max_length=loaded.max_length)

    def throughput(model: nn.Module) -> float:
        run = lambda: embed_texts(model, loaded.tokenizer, speed_texts, max_length=loaded.max_length)  # noqa: E731
        return speed_tokens / best_seconds(run)

    reference, ref_s = _timed(lambda: embed(loaded.model))
    rows = [Row("fp32 reference", 32.0, 0.0, throughput(loaded.model),
                {"mean_cos": 1.0, "min_cos": 1.0, "nn_agree": 1.0})]  # fmt: skip
    print(f"MiniLM fp32: {ref_s:.1f} s for {len(texts)} paragraphs ({tokens} tokens)", flush=True)

    def measure(method: str, quantized: nn.Module, q_s: float, bits: float | None) -> None:
        emb = embed(quantized)
        fid = embedding_fidelity(reference, emb, bits_per_param=bits or 0.0, reference_bits_per_param=32.0)
        metrics = {"mean_cos": fid.mean_cosine, "min_cos": fid.min_cosine, "nn_agree": fid.neighbour_agreement}
        tokens_per_s = throughput(quantized)
        rows.append(Row(method, bits, q_s, tokens_per_s, metrics))
        summary = f"mean cos {fid.mean_cosine:.5f} min {fid.min_cosine:.5f} nn {fid.neighbour_agreement:.4f}"
        print(f"MiniLM {method}: {summary} | quantize {q_s:.2f} s, {tokens_per_s:.0f} tok/s", flush=True)

    for spec in MINILM_SPECS:
        config = QuantizeConfig(spec, targets=("linear",))
        model, q_s = _timed(lambda config=config: quantize_model(copy.deepcopy(loaded.model), config))
        measure(f"wquant {spec}", model, q_s, model_bits(model).bits_per_param)
    cached = QuantizeConfig(MINILM_SPECS[0], targets=("linear",), cache_dequantized=True)
    model, q_s = _timed(lambda: quantize_model(copy.deepcopy(loaded.model), cached))
    measure(f"wquant {MINILM_SPECS[0]} (cached weights)", model, q_s, model_bits(model).bits_per_param)
    for method, (module, make) in PEERS.items():
        if (why := _peer_available(module)) is not None:
            notes.append(f"{method} skipped: {module} not importable ({why}); install the `bench` extra")
            continue
        model, q_s = _timed(lambda make=make: _replace_linears(copy.deepcopy(loaded.model), make))
        measure(method, model, q_s, None)
    info = {"paragraphs": len(texts), "tokens": tokens, "max_length": loaded.max_length}
    return rows, info


def bench_causal(notes: list[str]) -> tuple[list[Row], dict[str, object]]:
    if not SHAKESPEARE.is_file():
        notes.append(f"causal testbed skipped: {SHAKESPEARE} is missing")
        return [], {}
    folder, train_s = _timed(lambda: cached_testbed(SHAKESPEARE, progress=True))
    loaded = load_pretrained(folder)
    text = heldout_text(folder, SHAKESPEARE)
    window = 128
    rows: list[Row] = []

    speed_text = text[: 64 * window]  # one character is one token

    def throughput(model: nn.Module) -> float:
        return len(speed_text) / best_seconds(lambda: perplexity(model, loaded.tokenizer, speed_text, window=window))

    def measure(method: str, quantized: nn.Module, q_s: float, bits: float | None) -> None:
        result = compare_causal(loaded.model, quantized, loaded.tokenizer, text, window=window)
        metrics = {"ppl": result.quantized.perplexity, "kl": result.kl, "top10_kl": result.top_k_kl,
                   "top1_agree": result.top1_agreement}  # fmt: skip
        if not rows:
            reference_ppl = {"ppl": result.reference.perplexity}
            rows.append(Row("fp32 reference", 32.0, 0.0, throughput(loaded.model), reference_ppl))
        rows.append(Row(method, bits, q_s, throughput(quantized), metrics))
        print(f"testbed {method}: ppl {metrics['ppl']:.4f} KL {metrics['kl']:.5f} top10 {metrics['top10_kl']:.5f} "
              f"top1 {metrics['top1_agree']:.4f} | quantize {q_s:.3f} s", flush=True)  # fmt: skip

    for spec in CAUSAL_SPECS:
        config = QuantizeConfig(spec, targets=("linear",))
        model, q_s = _timed(lambda config=config: quantize_model(copy.deepcopy(loaded.model), config))
        measure(f"wquant {spec}", model, q_s, model_bits(model).bits_per_param)
    for method, (module, make) in PEERS.items():
        if _peer_available(module) is not None:
            continue
        model, q_s = _timed(lambda make=make: _replace_linears(copy.deepcopy(loaded.model), make))
        measure(method, model, q_s, None)
    info = {"params": sum(p.numel() for p in loaded.model.parameters()), "heldout_chars": len(text),
            "window": window, "train_or_cache_s": train_s}  # fmt: skip
    return rows, info


def _table(rows: list[Row], metrics: list[str]) -> str:
    head = ["method", "bits/param (model)", *metrics, "quantize s", "eval tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        bits = f"{r.bits_per_param:.4f}" if r.bits_per_param is not None else "n/a"
        vals = [f"{r.metrics[m]:.5f}" if m in r.metrics else "" for m in metrics]
        tps = f"{r.tokens_per_s:,.0f}" if r.tokens_per_s else ""
        lines.append("| " + " | ".join([r.method, bits, *vals, f"{r.quantize_s:.2f}", tps]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paragraphs", type=int, default=1000, help="WikiText-2 paragraphs for MiniLM")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-causal", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    notes: list[str] = []
    minilm, minilm_info = ([], {}) if args.skip_minilm else bench_minilm(args.paragraphs, notes)
    causal, causal_info = ([], {}) if args.skip_causal else bench_causal(notes)
    parts = [
        SECTION,
        "",
        f"`benchmarks/models.py` on {platform.machine()} CPU, torch {torch.__version__}, {args.threads} threads "
        "(shared machine: times are ±2×). bits/param counts every parameter of the model (unquantized ones at "
        "their dtype width). Peers report n/a bits: their storage is not counted the same way (bitsandbytes "
        "NF4 with block-64 fp32 absmax is the layout of wquant's `nf4` row). Quantize s: whole model, one run. "
        "Eval tok/s: real tokens per second of that model alone on the first 64 paragraphs, best of 3 runs.",
    ]
    if minilm:
        parts += ["", f"### all-MiniLM-L6-v2, all 37 Linear layers, {minilm_info['paragraphs']} WikiText-2 paragraphs "
                  f"({minilm_info['tokens']:,} tokens, max length {minilm_info['max_length']})", "",
                  "Independent reference for RTN int4 g64: mean cosine 0.9499 (1000 paragraphs).", "",
                  _table(minilm, ["mean_cos", "min_cos", "nn_agree"])]  # fmt: skip
    if causal:
        parts += ["", f"### Causal testbed: char-level Llama ({causal_info['params']:,} params) on Tiny Shakespeare, "
                  f"all Linear layers incl. lm_head, held-out {causal_info['heldout_chars']:,} chars, window "
                  f"{causal_info['window']}", "",
                  "Eval tok/s: perplexity pass of that model alone over 64 windows, best of 3.", "",
                  _table(causal, ["ppl", "kl", "top10_kl", "top1_agree"])]  # fmt: skip
    if notes:
        parts += ["", "Notes:", *[f"- {n}" for n in notes]]
    text = "\n".join(parts) + "\n"
    print(text)
    if not args.no_write:
        replace_section(SECTION.removeprefix("## "), text.split("\n", 1)[1] if text.startswith(SECTION) else text)


if __name__ == "__main__":
    main()
