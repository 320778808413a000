"""Allocation against uniform plans: bits saved at equal distortion by the plan wquant ships (`wquant advise` /
`wquant study`), against the best uniform plan of the same candidate families, on MiniLM and the causal testbed at
3.0, 3.5 and 4.0 bits/param (all-in, whole model).

    nice -n 10 .venv/bin/python benchmarks/allocation.py --write   # both models, 3 seeds; rewrites its section
    .venv/bin/python benchmarks/allocation.py --seeds 1 --only testbed   # a quick look, no write

Protocol (the building blocks `advise` composes, once per model and seed):
1. Fisher (`estimate_fisher`) on calibration text; candidates (`measure_candidates`) of the study's families — the
   entropy-coded uniform grid (a ladder of fixed steps, 2-7 bits with halves), int g64 absmax 2-7 bits, NF4 and
   MXFP4 as wquant stores them bit-exactly — for every Linear and Embedding weight of ≥ 4096 values; the coded
   grid at exactly each budget's uniform per-tensor bits (`with_budget_candidates`).
2. Per budget: sensitivities measured on calibration text at the budget's per-tensor bits ± 1
   (`measure_sensitivity`), the allocation and the decision against every family's best uniform plan at no more
   bits (`decide`): the shipped plan.
3. Everything is then scored on held-out evaluation text: the shipped plan, the Fisher-proxy allocation (the
   paper's rule, same candidates), and every uniform plan of every family within 1.5 bits/param of the budget.
   "Bits saved" = the bits a uniform family needs to reach the shipped plan's distortion (log distortion linear in
   bits between the family's Pareto points, `bits_at_distortion`) − the shipped plan's bits; against "the best
   uniform plan" it is the smallest over families. "Never loses": the shipped distortion ≤ the best uniform
   plan's at no more bits, and ≤ the uniform curve interpolated at exactly the shipped bits.

Data: MiniLM calibrates on WikiText-2 valid (tokenised) paragraphs and is evaluated on WikiText-2 raw test
paragraphs (distortion 1 − mean cosine of sentence embeddings); the testbed calibrates on the first 90 % of Tiny
Shakespeare and is evaluated on its held-out 10 % (distortion KL per character). Seeds change the Fisher's
sampling and which calibration texts are used; numbers are medians over seeds with the range.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, replace_section  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BUDGETS = (3.0, 3.5, 4.0)
FAMILIES = ("uniform@{b}/tensor:rms:bf16+coded", "int{b}/block64:absmax:bf16", "nf4", "mxfp4")
LADDER = (2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
MIN_NUMEL = 4096
CACHE = Path("~/.cache/wquant/bench-allocation").expanduser()
TARGET = 0.25


def minilm(seed: int, quick: bool) -> dict[str, Any]:
    from wquant.allocation import calibration_texts
    from wquant.data import read_text
    from wquant.models import load_pretrained

    loaded = load_pretrained("minilm")
    calib = calibration_texts(read_text(DATA / "wikitext-2-tokens-valid.txt"), 10_000)
    n = 16 if quick else 48
    calibration = "\n".join(calib[seed * n : (seed + 1) * n])
    held = calibration_texts(read_text(DATA / "wikitext-2-raw-test.txt"), 32 if quick else 128)
    return {"loaded": loaded, "calibration": calibration, "evaluation": held, "window": 128}


def testbed(seed: int, quick: bool) -> dict[str, Any]:
    from wquant.data import read_text
    from wquant.evaluate import cached_testbed
    from wquant.evaluate.testbed import split_text
    from wquant.models import load_pretrained

    path = DATA / "tinyshakespeare.txt"
    loaded = load_pretrained(cached_testbed(path))
    train, held = split_text(read_text(path), 0.9)
    chars = 128 * (32 if quick else 64)
    return {"loaded": loaded, "calibration": train[seed * chars : (seed + 1) * chars + 128], "evaluation": held,
            "window": 128}  # fmt: skip


MODELS = {"MiniLM": minilm, "testbed": testbed}


def run(name: str, seed: int, quick: bool) -> list[dict[str, Any]]:
    from wquant.allocation import (
        AdviseConfig,
        CausalProbe,
        EncoderProbe,
        FisherConfig,
        allocate,
        anchor_levels,
        bits_at_distortion,
        calibration_probe,
        decide,
        distortion_at_bits,
        estimate_fisher,
        measure_candidates,
        measure_plans,
        measure_sensitivity,
        uniform_plan,
        with_budget_candidates,
    )

    setup = MODELS[name](seed, quick)
    loaded, task = setup["loaded"], setup["loaded"].task
    model, tok = loaded.model, loaded.tokenizer
    start = time.perf_counter()
    fisher_config = FisherConfig(seed=seed, window=setup["window"], max_windows=32 if quick else 64)
    config = AdviseConfig(budget=BUDGETS[0], formats=FAMILIES, bits=LADDER, fisher=fisher_config,
                          probe=16 if quick else 32)  # fmt: skip
    fisher = estimate_fisher(model, tok, setup["calibration"], task, fisher_config)
    names = {t.name for t in fisher.tensors if t.numel >= MIN_NUMEL}
    table = measure_candidates(model, fisher, FAMILIES, LADDER, names=names)
    table = with_budget_candidates(model, table, fisher, BUDGETS)
    calib_probe = calibration_probe(model, tok, task, setup["calibration"], config)
    if task == "encoder":
        eval_probe: Any = EncoderProbe(model, tok, setup["evaluation"], max_length=128)
    else:
        eval_probe = CausalProbe(model, tok, setup["evaluation"], window=128, max_windows=32 if quick else 64)
    prepared = time.perf_counter() - start
    shared = set.intersection(*({c.source for c in t.candidates} for t in table.tensors))
    rows = []
    for budget in BUDGETS:
        t0 = time.perf_counter()
        measured = measure_sensitivity(model, table, calib_probe, anchor_levels(table, budget))
        decision = decide(model, measured, calib_probe, budget)
        proxy = allocate(table, budget, "mean")
        uniform = [uniform_plan(table, s) for s in sorted(shared)]
        uniform = [p for p in uniform if abs(p.bits_per_param - budget) <= 1.5]
        plans = [decision.shipped.plan, proxy, *uniform]
        scores = measure_plans(model, plans, eval_probe)
        shipped_d, proxy_d, uniform_d = scores[0], scores[1], scores[2:]
        bits = decision.shipped.plan.bits_per_param
        families: dict[str, list[tuple[float, float]]] = {}
        for p, d in zip(uniform, uniform_d, strict=True):
            families.setdefault(p.tensors[0].family, []).append((p.bits_per_param, d))
        saved, at_bits = {}, {}
        for family, points in families.items():
            front = _front(points)
            if len(front) >= 2:
                saved[family] = bits_at_distortion(front, shipped_d) - bits
                at_bits[family] = distortion_at_bits(front, bits)
        fitting = [(p, d) for p, d in zip(uniform, uniform_d, strict=True) if p.bits_per_param <= budget + 1e-12]
        best_p, best_d = min(fitting, key=lambda x: (x[1], -x[0].bits_per_param))
        rows.append({
            "model": name, "seed": seed, "budget": budget, "shipped": decision.shipped.label, "bits": bits,
            "distortion": shipped_d, "best_uniform": _label(best_p), "best_uniform_bits": best_p.bits_per_param,
            "best_uniform_distortion": best_d, "uniform_at_same_bits": min(at_bits.values()),
            "saved": saved, "saved_vs_best": min(saved.values()), "proxy_bits": proxy.bits_per_param,
            "proxy_distortion": proxy_d, "calibration": {"allocation": decision.allocation.distortion,
                                                         **{c.label: c.distortion for c in decision.uniform}},
            "seconds": time.perf_counter() - t0 + prepared / len(BUDGETS),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    front: list[tuple[float, float]] = []
    for b, d in sorted(points):
        if not front or d < front[-1][1]:
            front.append((b, d))
    return front


def _label(plan: Any) -> str:
    family = plan.tensors[0].family
    if family.startswith("uniform@"):
        return f"coded uniform ≈{plan.bits_per_param:.2f}"
    return plan.tensors[0].spec


def _family(family: str) -> str:
    return {"uniform@{b}/tensor:rms:bf16+coded": "coded", "int{b}/block64:absmax:bf16": "int g64"}.get(family, family)


def _range(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)} … {format(max(values), fmt)})"


def report(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, ""]
    verdicts = []
    for name in MODELS:
        mine = [r for r in rows if r["model"] == name]
        if not mine:
            continue
        metric = "1 − mean cos" if name == "MiniLM" else "KL nats/char"
        lines += [f"### {name} (distortion: {metric}, held-out text)", "",
                  "| budget | shipped | bits/param | distortion | best uniform ≤ budget (distortion) | uniform at the "
                  "same bits | bits saved vs best uniform | vs coded | vs int g64 | Fisher-proxy plan | never loses |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for budget in BUDGETS:
            sel = [r for r in mine if r["budget"] == budget]
            if not sel:
                continue
            never = all(r["distortion"] <= r["best_uniform_distortion"] and r["distortion"] <= r["uniform_at_same_bits"]
                        for r in sel)  # fmt: skip
            shipped = ", ".join(sorted({r["shipped"] for r in sel}))
            fam = {f: [r["saved"][f] for r in sel if f in r["saved"]] for f in FAMILIES[:2]}
            lines.append(
                f"| {budget:g} | {shipped} | {_range([r['bits'] for r in sel], '.4f')} | "
                f"{_range([r['distortion'] for r in sel], '.4g')} | {sel[0]['best_uniform']} "
                f"({_range([r['best_uniform_distortion'] for r in sel], '.4g')}) | "
                f"{_range([r['uniform_at_same_bits'] for r in sel], '.4g')} | "
                f"**{_range([r['saved_vs_best'] for r in sel], '+.2f')}** | "
                + " | ".join(_range(v, "+.2f") if v else "–" for v in fam.values())
                + f" | {_range([r['proxy_distortion'] for r in sel], '.4g')} | {'yes' if never else '**no**'} |"
            )  # fmt: skip
            verdicts.append((name, budget, statistics.median([r["saved_vs_best"] for r in sel]),
                             min(r["saved_vs_best"] for r in sel), never))  # fmt: skip
        seconds = statistics.median([r["seconds"] for r in mine])
        lines += ["", f"Median time per budget and seed (Fisher, candidates and probes shared across the three "
                      f"budgets, counted a third each): {seconds:.0f} s.", ""]  # fmt: skip
    lines += ["### Target: ≥ 0.25 bit/param saved against the best uniform plan on both models, ≥ 0 everywhere", ""]
    for name in MODELS:
        got = [v for v in verdicts if v[0] == name]
        if not got:
            continue
        best = max(v[2] for v in got)
        worst = min(v[3] for v in got)
        lines.append(
            f"- {name}: median saving per budget "
            + ", ".join(f"{b:g}: {m:+.2f}" for _, b, m, _, _ in got)
            + f"; smallest over every budget and seed {worst:+.2f}; "
            + ("**target met**" if best >= TARGET and worst >= 0 else "**target missed**")
            + ("" if all(v[4] for v in got) else "; the shipped plan lost to a uniform plan somewhere (see table)")
        )  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", choices=list(MODELS), action="append")
    parser.add_argument("--quick", action="store_true", help="smaller texts and probes (a smoke run, no write)")
    parser.add_argument("--write", action="store_true", help="rewrite the BENCHMARKS.md section")
    parser.add_argument("--fresh", action="store_true", help="ignore cached rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    CACHE.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(MODELS):
        for seed in range(args.seeds):
            path = CACHE / f"{name}-seed{seed}{'-quick' if args.quick else ''}.json"
            if path.is_file() and not args.fresh:
                rows += json.loads(path.read_text())
                continue
            got = run(name, seed, args.quick)
            path.write_text(json.dumps(got))
            rows += got
    header = (
        f"`python benchmarks/allocation.py --write` ({args.seeds} seed(s), medians with the range over seeds), "
        f"{machine_line()} (load avg {load_start:.1f} at the start), torch {torch.__version__} on 1 thread under "
        "`nice`; the machine is shared, so seconds are ±2×. Budgets are all-in model bits/param; every plan's bits "
        "are the exact stored bits. Protocol in the script's docstring."
    )
    text = report(rows, header)
    print(text)
    if args.write and not args.quick:
        replace_section("Allocation: shipped plan against the best uniform plan", text)


if __name__ == "__main__":
    main()
