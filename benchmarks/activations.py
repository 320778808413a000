"""Activation-aware quantization end to end: W4A16 and W8A8 on the causal testbed and MiniLM, beside llm-compressor.

    .venv/bin/python benchmarks/activations.py --prepare   # calibration windows for llm-compressor's venv
    /tmp/llmc-venv/bin/python benchmarks/llmcompressor_models.py ~/.cache/wquant/bench-activations/testbed
    .venv/bin/python benchmarks/activations.py --write     # rows (cached), reference check → BENCHMARKS.md

W4A16 (weight-only, `int4:unsigned/block128:zeropoint:fp16`: 4-bit codes, fp16 scale and 4-bit zero point per 128,
the AutoAWQ/GPTQ layout): RTN, AWQ (scale search + clip search), GPTQ, AWQ then GPTQ; also AWQ with int8 token-wise
activations (W4A8). W8A8 (`int8/channel:absmax:fp32` weights, `int8/token` dynamic activations): the weight-only
W8A16 reference, plain W8A8, SmoothQuant (α = 0.5 and α searched per layer group), ZeroQuant (group-wise
`int8/block64:absmax:fp16` weights) with and without layer-wise distillation. Every Linear layer is quantized,
lm_head included, as in the "Models" section (same calibration and evaluation text, same metrics, so the peers'
rows there compare directly). llm-compressor (own venv; `llmcompressor_models.py`) runs AWQ, GPTQ and RTN at
W4A16_ASYM group 128 and SmoothQuant α = 0.5 + W8A8 on the testbed's very calibration windows; its fake-quantized
weights are evaluated here, its dynamic per-token int8 activations emulated by wquant's `int8/token` (the same
rule: scale = max|x|/127 per token, round to nearest). Its bits are counted as its pack-quantized checkpoint
stores them (4-bit codes and zero points packed in int32, scales in the model's dtype: fp32 here).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import machine_line, replace_section  # noqa: E402
from models import Bench, minilm_bench, testbed_bench  # noqa: E402
from torch import nn  # noqa: E402

import wquant  # noqa: E402
from wquant.algorithms import AWQConfig, GPTQConfig, SmoothQuantConfig, ZeroQuantConfig  # noqa: E402
from wquant.algorithms.activations import fake_quantize, parse_activations  # noqa: E402
from wquant.models import QuantizeConfig, model_bits  # noqa: E402

CACHE = Path("~/.cache/wquant/bench-activations").expanduser()
SECTION = "Activation-aware quantization"
W4 = "int4:unsigned/block128:zeropoint:fp16"
W8 = "int8/channel:absmax:fp32"
ZQ = "int8/block64:absmax:fp16"
A8 = "int8/token"
GROUP = 128

Build = Callable[[Any], tuple[nn.Module, list[Any]]]


def _wquant(config: Any, data: bool = True) -> Build:
    def build(ctx: Any) -> tuple[nn.Module, list[Any]]:
        model = copy.deepcopy(ctx.model)
        cfg = config if isinstance(config, QuantizeConfig) else QuantizeConfig(config)
        reports = wquant.quantize_(model, cfg, calibration=ctx.batches() if data else None)
        return model, reports

    return build


def systems() -> list[tuple[str, str, Build]]:
    """(label, group, build)."""
    return [
        ("wquant RTN", "W4A16", _wquant(W4, data=False)),
        ("wquant AWQ", "W4A16", _wquant(AWQConfig(W4))),
        ("wquant GPTQ", "W4A16", _wquant(GPTQConfig(W4))),
        ("wquant AWQ+GPTQ", "W4A16", _wquant(AWQConfig(W4, finish="gptq"))),
        ("wquant GPTQ act-order, static groups", "W4A16", _wquant(GPTQConfig(W4, act_order=True, static_groups=True))),
        ("wquant AWQ+GPTQ act-order", "W4A16", _wquant(AWQConfig(W4, finish="gptq", act_order=True))),
        ("wquant AWQ, int8/token inputs (W4A8)", "W4A8", _wquant(QuantizeConfig(AWQConfig(W4), activations=A8))),
        ("wquant W8A16 (weights only, RTN)", "W8A8", _wquant(W8, data=False)),
        ("wquant W8A8 plain (RTN + int8/token)", "W8A8", _wquant(QuantizeConfig(W8, activations=A8), data=False)),
        ("wquant SmoothQuant α=0.5", "W8A8", _wquant(SmoothQuantConfig(W8, activations=A8))),
        ("wquant SmoothQuant α searched", "W8A8", _wquant(SmoothQuantConfig(W8, activations=A8, search=True))),
        ("wquant SmoothQuant α=0.5 + GPTQ", "W8A8", _wquant(SmoothQuantConfig(W8, activations=A8, finish="gptq"))),
        ("wquant ZeroQuant (int8 g64 + int8/token)", "W8A8", _wquant(ZeroQuantConfig(ZQ, activations=A8), False)),
        ("wquant ZeroQuant + LKD", "W8A8", _wquant(ZeroQuantConfig(ZQ, activations=A8, lkd=True))),
    ]


STORED = [  # where no module can absorb the scale (BERT), keep it as a stored fp16 divisor: MiniLM only
    ("wquant AWQ, stored divisors", "W4A16", _wquant(AWQConfig(W4, fold="store"))),
    ("wquant AWQ+GPTQ, stored divisors", "W4A16", _wquant(AWQConfig(W4, finish="gptq", fold="store"))),
    ("wquant SmoothQuant α=0.5, stored divisors", "W8A8", _wquant(SmoothQuantConfig(W8, activations=A8, fold="store"))),
    (
        "wquant SmoothQuant α searched, stored divisors",
        "W8A8",
        _wquant(SmoothQuantConfig(W8, activations=A8, search=True, fold="store")),
    ),
]


PEERS = {
    "llmc-awq-w4a16": ("llm-compressor AWQ W4A16_ASYM g128", "W4A16", None),
    "llmc-gptq-w4a16": ("llm-compressor GPTQ W4A16_ASYM g128", "W4A16", None),
    "llmc-rtn-w4a16": ("llm-compressor RTN W4A16_ASYM g128", "W4A16", None),
    "llmc-smoothquant-w8a8": ("llm-compressor SmoothQuant α=0.5 + W8A8", "W8A8", A8),
}


def _peer_bits(name: str, model: nn.Module) -> tuple[int, int]:
    """Stored bits of the Linear weights as compressed-tensors' pack-quantized checkpoint holds them."""
    total = numel = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            rows, cols = module.weight.shape
            numel += rows * cols
            if name.endswith("w4a16"):  # 4-bit codes; per group of 128: fp32 scale + 4-bit zero point
                groups = rows * -(-cols // GROUP)
                total += 4 * rows * cols + groups * (32 + 4)
            else:  # int8 codes, one fp32 scale per output channel
                total += 8 * rows * cols + 32 * rows
    return total, numel


def _peer(name: str, folder: Path) -> Build:
    def build(ctx: Any) -> tuple[nn.Module, list[Any]]:
        from safetensors.torch import load_file

        model = copy.deepcopy(ctx.model)
        state = {
            k: v for k, v in load_file(str(folder / f"{name}.safetensors")).items() if not k.startswith("smoothed.")
        }
        model.load_state_dict(state, strict=True)
        acts = PEERS[name][2]
        if acts is not None:  # the scheme's dynamic per-token int8 inputs
            spec = parse_activations(acts)
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    module.register_forward_pre_hook(lambda _m, args, spec=spec: (fake_quantize(args[0], spec),))
        return model, []

    return build


def measure(bench: Bench, label: str, group: str, build: Build, fresh: bool, peer: str | None = None) -> dict:
    cache = CACHE / f"{bench.cache_key}.json"
    rows = json.loads(cache.read_text()) if cache.is_file() and not fresh else {}
    if label in rows:
        print(f"[{bench.ctx.name}] {label}: cached", flush=True)
        return rows[label]
    start = time.perf_counter()
    model, reports = build(bench.ctx)
    seconds = time.perf_counter() - start
    if peer is not None:  # its own oneshot time, measured in its venv
        seconds = json.loads((CACHE / "testbed" / f"{peer}.json").read_text())["seconds"]
        bits, numel = _peer_bits(peer, model)
    else:
        mb = model_bits(model)
        bits, numel = mb.quantized_bits, mb.quantized_params
    act_bits = sorted({r.activation_bits for r in reports if r.activation_bits is not None})
    if peer is not None and PEERS[peer][2] is not None:
        act_bits = [parse_activations(PEERS[peer][2]).bits_per_element(bench.ctx.model.config.hidden_size)]
    with torch.no_grad():
        metrics = bench.evaluate(model)
    row = {"label": label, "group": group, "bits": bits / numel, "act_bits": act_bits, "metrics": metrics,
           "seconds": seconds, "load": os.getloadavg()[0]}  # fmt: skip
    print(f"[{bench.ctx.name}] {row}", flush=True)
    rows = json.loads(cache.read_text()) if cache.is_file() else {}
    rows[label] = row
    CACHE.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(rows, indent=1))
    return row


def table(name: str, rows: list[dict], causal: bool) -> str:
    cols = "KL | top-10 KL | perplexity | top-1 agree" if causal else "mean cos | min cos | NN agree"
    head = f"| group | system | bits/weight | bits/activation | {cols} | s |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if causal else "---:|")]
    for r in rows:
        m = r["metrics"]
        acts = ", ".join(f"{b:.4g}" for b in r["act_bits"]) or "16/32 (float)"
        label = f"**{r['label']}**" if r["label"].startswith("llm-compressor") else r["label"]
        if causal:
            vals = f"{m['kl']:.5f} | {m['top10_kl']:.5f} | {m['ppl']:.4f} | {m['top1_agree']:.4f}"
        else:
            vals = f"{m['mean_cos']:.5f} | {m['min_cos']:.4f} | {m['nn_agree']:.3f}"
        lines.append(f"| {r['group']} | {label} | {r['bits']:.4f} | {acts} | {vals} | {r['seconds']:.0f} |")
    return f"### {name}\n\n" + "\n".join(lines)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()).abs() / b.double().abs().clamp(min=1e-12)).max())


def _match_alpha(target: torch.Tensor, candidates: list[tuple[str, torch.Tensor]]) -> tuple[str, float]:
    """The candidate (α label, scale) closest to `target` and its max relative difference."""
    best = min(candidates, key=lambda c: _rel(c[1], target))
    return best[0], _rel(best[1], target)


def reference_check(bench: Bench, folder: Path) -> str:
    """Smoothing scales of llm-compressor (read back from the weights it rewrote) beside wquant's, on the same
    calibration windows: SmoothQuant on every layer, AWQ on block 0 (whose inputs no quantization has touched)."""
    from safetensors.torch import load_file

    from wquant.algorithms import awq_scales, migration_scales, smoothquant_scales
    from wquant.algorithms.awq import alpha_grid, candidate_scales, weight_magnitude
    from wquant.models.calibration import _run, group_inputs

    base = bench.ctx.model
    batches = bench.ctx.batches()
    lines = []
    paths = [p for p, m in base.named_modules() if isinstance(m, nn.Linear)]
    passes = [(lambda b=b: _run(base, b), None) for b in batches]
    with torch.no_grad():
        groups = {tuple(g): st for g, st in group_inputs(base, paths, passes)}
    params = dict(base.named_parameters())

    def weights(group: tuple[str, ...]) -> list[torch.Tensor]:
        return [params[f"{p}.weight"].detach() for p in group]

    sq_file = folder / "llmc-smoothquant-only.safetensors"
    if sq_file.is_file():
        theirs = load_file(str(sq_file))
        lines += ["SmoothQuant α = 0.5 (`llmc-smoothquant-only`: smoothing, no quantization), scale s = w_norm "
                  "before / after, per layer group; max relative difference over channels:", "",
                  r"| group | vs wquant (paper: max\|X\|, max\|W\|) | vs wquant stats in llm-compressor's "
                  r"definition ((max − min)^α / (2·max\|W\|)^(1−α)) |", "|---|---:|---:|"]  # fmt: skip
        for group, stats in groups.items():
            norm = group[0].rsplit(".", 2)[0] + (".input_layernorm" if "self_attn" in group[0] else
                                                 ".post_attention_layernorm")  # fmt: skip
            key = f"{norm}.weight"
            if key not in params or len(group) < 2:
                continue
            s_lc = params[key].detach() / theirs[key]
            ours = smoothquant_scales(weights(group), stats, SmoothQuantConfig(alpha=0.5)).scales
            low, high = stats.value_range()
            wmax = torch.stack([w.abs().amax(0) for w in weights(group)]).amax(0)
            lc_def = migration_scales(high - low, 2 * wmax, 0.5)
            lines.append(f"| {norm} | {_rel(ours, s_lc):.3g} | {_rel(lc_def, s_lc):.2g} |")
    awq_file = folder / "llmc-awq-w4a16.safetensors"
    if awq_file.is_file():
        theirs = load_file(str(awq_file))
        spec = "int4:unsigned/block128:zeropoint:fp32"  # compressed-tensors' W4A16_ASYM on an fp32 model
        lines += ["", "AWQ (duo scaling, n_grid 20) on block 0, `int4:unsigned/block128:zeropoint:fp32` = W4A16_ASYM "
                  "g128 with fp32 scales. llm-compressor's s is read back from the weights it rewrote; the α it chose "
                  "is the grid point whose scale (computed from wquant's statistics) matches it:", "",
                  "| group (producer) | llm-compressor α | its objective | wquant α | max rel. diff of s |",
                  "|---|---|---|---|---:|"]  # fmt: skip
        cfg = AWQConfig(spec)
        for group, stats in groups.items():
            if not group[0].startswith("model.layers.0."):
                continue
            first = group[0]
            if first.endswith("q_proj"):
                producer, s_lc = "input_layernorm", params["model.layers.0.input_layernorm.weight"].detach() / theirs[
                    "model.layers.0.input_layernorm.weight"]  # fmt: skip
                objective = "self_attn output"
            elif first.endswith("gate_proj"):
                producer = "post_attention_layernorm"
                s_lc = params["model.layers.0.post_attention_layernorm.weight"].detach() / theirs[
                    "model.layers.0.post_attention_layernorm.weight"]  # fmt: skip
                objective = "mlp output"
            else:
                producer = "v_proj" if first.endswith("o_proj") else "up_proj"
                after = theirs[f"smoothed.{first}.weight"]
                s_lc = (after / params[f"{first}.weight"].detach()).median(dim=0).values
                objective = f"{first.rsplit('.', 1)[1]} output"
            w_mean = weight_magnitude(weights(group), cfg.spec)
            grid = [(f"{'duo ' if d else ''}{a:.3f}", candidate_scales(stats.abs_mean(), w_mean if d else None, a))
                    for a, d in alpha_grid(cfg.grid, cfg.duo_scaling)]  # fmt: skip
            their_alpha, fit = _match_alpha(s_lc, grid)
            ours = awq_scales(weights(group), stats, cfg)
            our_alpha, _ = _match_alpha(ours.scales, grid)
            lines.append(f"| {producer} → {', '.join(p.rsplit('.', 1)[1] for p in group)} | {their_alpha} (fit "
                         f"{fit:.1g}) | {objective} | {our_alpha} | {_rel(ours.scales, s_lc):.3g} |")  # fmt: skip
    return "\n".join(lines)


def prepare(bench: Bench) -> Path:
    """Write the testbed's calibration windows and model folder for llm-compressor's venv."""
    from safetensors.torch import save_file

    folder = CACHE / "testbed"
    folder.mkdir(parents=True, exist_ok=True)
    ids = torch.cat([b if isinstance(b, torch.Tensor) else b["input_ids"] for b in bench.ctx.batches()])
    save_file({"input_ids": ids.contiguous()}, str(folder / "calib.safetensors"))
    from wquant.evaluate import cached_testbed

    model_dir = cached_testbed(Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt")
    (folder / "request.json").write_text(json.dumps({"model": str(model_dir), "group": GROUP}))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true", help="only write the peer venv's calibration windows")
    parser.add_argument("--models", nargs="+", default=["testbed", "minilm"])
    parser.add_argument("--paragraphs", type=int, default=300)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--only", nargs="*", default=None, help="labels (substrings) to measure")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sections = []
    for name in args.models:
        bench, info = testbed_bench(128, False) if name == "testbed" else minilm_bench(args.paragraphs, 128, False)
        bench.cache_key = "act-" + bench.cache_key
        if name == "testbed":
            folder = prepare(bench)
            if args.prepare:
                print(f"wrote {folder}; now run benchmarks/llmcompressor_models.py {folder} in llm-compressor's venv")
                return
        rows = []
        for label, group, build in systems() + (STORED if name == "minilm" else []):
            if args.only is None or any(o in label for o in args.only):
                rows.append(measure(bench, label, group, build, args.fresh))
        if name == "testbed":
            for peer, (label, group, _acts) in PEERS.items():
                if (folder / f"{peer}.safetensors").is_file() and (
                    args.only is None or any(o in label for o in args.only)
                ):
                    rows.append(measure(bench, label, group, _peer(peer, folder), args.fresh, peer))
        order = {"W4A16": 0, "W4A8": 1, "W8A8": 2}
        rows.sort(key=lambda r: (order[r["group"]], r["bits"], r["label"]))
        if name == "testbed":
            title = (f"Causal testbed: every Linear incl. lm_head, held-out {info['heldout_chars']:,} chars, window "
                     f"128; calibration {info['calib_windows']} windows of 128 from the first 90 %")  # fmt: skip
        else:
            title = (f"MiniLM: all 37 Linear layers, {info['paragraphs']} WikiText-2 test paragraphs; calibration "
                     f"{info['calib_texts']} WikiText-2 valid paragraphs")  # fmt: skip
        sections.append(table(title, rows, name == "testbed"))
        if name == "testbed":
            sections.append("### Smoothing scales beside llm-compressor (same calibration windows)\n\n"
                            + reference_check(bench, folder))  # fmt: skip
    body = (f"`python benchmarks/activations.py --write`: {machine_line()}, torch {torch.__version__}, 1 thread.\n\n"
            + "\n\n".join(sections))  # fmt: skip
    print(body)
    if args.write:
        replace_section(SECTION, body)


if __name__ == "__main__":
    main()
