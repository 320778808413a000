"""Whole-model benchmark: wquant beside bitsandbytes, hqq, torchao and optimum-quanto on MiniLM and the causal testbed.

    nice -n 10 .venv/bin/python benchmarks/models.py --paragraphs 300   # full run, writes BENCHMARKS.md + figure
    .venv/bin/python benchmarks/models.py --quick                       # smoke: one system per family, no writes
    .venv/bin/python benchmarks/models.py --only 'GPTQ|bnb' --no-write  # a subset (regex on the system label)

Models. all-MiniLM-L6-v2 with all 37 Linear layers quantized (embeddings and LayerNorms stay fp32): mean / min
cosine of sentence embeddings to fp32 and nearest-neighbour agreement on WikiText-2 raw test paragraphs
(distortion = 1 − mean cosine). The causal testbed (character-level Llama trained on Tiny Shakespeare, cached in
~/.cache/wquant/testbed) with all 29 Linear layers incl. lm_head: KL(fp32 ‖ quantized) per character and
perplexity on its held-out 10 % (distortion = KL).

Calibration never touches the evaluation text: MiniLM calibrates (GPTQ, NUPES, Fisher) on paragraphs of
WikiText-2 *valid* (the tokenised file, a different split), the testbed on the first 90 % of Tiny Shakespeare (its
training part; the held-out 10 % is the evaluation text).

Systems. Peers at their defaults through their model-level entry points: bitsandbytes `Linear4bit` (NF4 and FP4,
block 64; its constructor's default `compress_statistics=True`, i.e. double quantization, and NF4 without it,
which is `BitsAndBytesConfig`'s default), hqq `HQQLinear` (4/3/2 bit, group 64), torchao
`quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int<b>, granularity=PerGroup(64)))` (symmetric, its
default mapping), optimum-quanto `quantize(model, weights=qint4 / qint2); freeze(model)`. wquant: RTN specs
(int scale+zero group 64/128, NF4, entropy-coded uniform `uniform@<bits>/tensor:rms:bf16+coded`), GPTQ, HQQ
(data-free) and NUPES (`wquant.algorithms`, sequential over the model), GPTQ on the entropy-coded uniform grid with a
fixed step in RMS units (`uniform<step>/...+coded`: its bits follow from the step in one solve; a `uniform@<bits>`
budget would re-solve 2-4 times to land on it), Fisher bit allocation to a budget (`wquant.allocation`:
estimate_fisher → measure_candidates → allocate → `quantize_(model, plan.quantize_config())`, the functions
`advise` and `wquant study` compose), and the Fisher plan quantized with GPTQ instead of RTN. Data-driven
algorithms run one `quantize_` pass over the whole model in forward order, q/k/v sharing one Hessian
(`sequential`).

Bits rule (the x axis, "bits/weight"): all-in stored bits of the Linear weights divided by their element count,
the same tensors for every system. wquant: `QuantizedTensor.bits()` through `wquant.models.model_bits` (codes,
scales, zero offsets, tables, entropy-coded payload). Peers, from the tensors the quantized module keeps: the codes
as the peer packs them (bnb 2 per uint8 = 4 bits; hqq 4 bit 2 per uint8, 3 bit 10 per int32 = 3.2 bits, 2 bit 4 per
uint8; quanto 2 resp. 4 per uint8; torchao's default layout holds each code in an int8, counted at its nominal
b bits as torchao's packed layouts store it) plus every weight-dependent side tensor at its stored dtype: bnb absmax
(fp32 per block, or uint8 per block + fp32 per 256 blocks + one fp32 offset with double quantization), hqq scale and
zero per group at fp16 (`HQQLinear` casts them to its compute dtype, float16 by default; the run here computes in
fp32 and rounds them through fp16), torchao fp32 scale + int8 zero point per group (stored even for the symmetric
mapping), quanto scale + shift per group at the weight dtype (fp32; per output channel when in_features ≤ 128,
quanto's rule). Library constants (bnb's 16-entry NF4/FP4 table and 256-entry nested table) and shape metadata are
not counted, for anyone; bnb stores them per tensor (+8,704 bits per layer: +0.03 bits/weight on MiniLM, +0.3 on
the testbed), so the peers' counts are, if anything, generous. Biases, embeddings and norms are fp32 for every
system; "model bits/param" adds them (every distinct parameter at its dtype width, as `model_bits` counts).

Target check: for every peer point, wquant's bits at the peer's distortion are read off wquant's lower envelope
(its Pareto-optimal points, log distortion linear in bits between them, `wquant.allocation.bits_at_distortion`);
bits saved = peer bits − wquant bits. A peer point outside the envelope's distortion range gets a bound, never an
extrapolation (see `Saving`). The best peer is the peer point with the smallest saving; the target is "≥ 0.25
bit/weight saved against it" on both models. Times are wall-clock on a shared machine (±2×).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import machine_line, replace_section  # noqa: E402
from torch import nn  # noqa: E402

from wquant.data import read_paragraphs, read_text  # noqa: E402
from wquant.evaluate import (  # noqa: E402
    cached_testbed,
    compare_causal,
    embed_texts,
    embedding_fidelity,
    heldout_text,
)
from wquant.models import QuantizeConfig, load_pretrained, model_bits, quantize_  # noqa: E402
from wquant.models.sites import set_submodule  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
WIKITEXT = DATA / "wikitext-2-raw-test.txt"
WIKI_VALID = DATA / "wikitext-2-tokens-valid.txt"
SHAKESPEARE = DATA / "tinyshakespeare.txt"
FIGURE = ROOT / "benchmarks" / "figures" / "distortion_vs_bits_models.png"
CACHE = Path("~/.cache/wquant/bench-models").expanduser()
CACHE_VERSION = 1
SECTION = "Models"
FISHER_KEY = "__fisher_seconds__"  # cache entry: Fisher estimate + candidate measurement times
TARGET_SAVING = 0.25
WINDOW = 128  # testbed evaluation and calibration window (characters)


# ----------------------------------------------------------------------------------------------- context


@dataclass
class Context:
    """One model under test: the fp32 reference, its tokenizer, calibration material (built lazily, once)."""

    name: str  # "minilm" or "testbed"
    model: nn.Module
    tokenizer: Any
    task: str
    max_length: int
    make_batches: Callable[[], list[Any]]
    fisher_text: str
    fisher_windows: int
    _batches: list[Any] | None = None
    _fisher: Any = None
    _tables: dict[tuple[str, ...], Any] = field(default_factory=dict)
    fisher_s: dict[str, float] = field(default_factory=dict)
    note: str = ""  # set by a builder, read (and cleared) by Bench.run

    def batches(self) -> list[Any]:
        if self._batches is None:
            self._batches = self.make_batches()
        return self._batches

    def candidate_table(self, formats: tuple[str, ...], bits: tuple[float, ...]) -> Any:
        """Fisher estimate and measured candidates (advise's first two steps), Linear weights only, once per set."""
        key = (*formats, *map(str, bits))
        if key not in self._tables:
            from wquant.allocation import AdviseConfig, estimate_fisher, measure_candidates

            start = time.perf_counter()
            base = AdviseConfig(budget=4.0, formats=formats, bits=bits)
            fisher_config = replace(
                base.fisher,
                targets=("linear",),
                window=min(base.fisher.window, self.max_length),
                max_windows=self.fisher_windows,
                min_tokens=min(base.fisher.min_tokens, 256),
            )
            if self._fisher is None:
                self._fisher = estimate_fisher(self.model, self.tokenizer, self.fisher_text, self.task, fisher_config)
            self._tables[key] = measure_candidates(self.model, self._fisher, formats, bits, targets=("linear",))
            label = f"`{' '.join(formats)}` × bits {','.join(f'{b:g}' for b in bits)}"
            self.fisher_s[label] = time.perf_counter() - start
            print(f"[{self.name}] Fisher + candidates {label}: {self.fisher_s[label]:.1f} s", flush=True)
        return self._tables[key]

    def linear_budget_plan(self, bits_per_weight: float, formats: tuple[str, ...], bits: tuple[float, ...]) -> Any:
        """The Fisher plan whose Linear weights average at most `bits_per_weight` (converted to the all-in
        model-level budget `allocate` takes: the fixed fp32 parameters plus that many bits per Linear weight)."""
        from wquant.allocation import allocate

        table = self.candidate_table(formats, bits)
        n = sum(t.numel for t in table.tensors)
        budget = (table.fixed_bits + bits_per_weight * n) / table.params
        plan = allocate(table, budget)
        counts: dict[str, int] = {}
        for t in plan.tensors:  # coded specs carry a fitted step: shown as their bits/weight, to the half bit
            name = f"coded ≈{round(t.bits_per_param * 2) / 2:g} bits" if "+coded" in t.spec else t.spec
            counts[name] = counts.get(name, 0) + 1
        self.note = "plan: " + ", ".join(f"{n}× {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        return plan


def _linear_paths(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _linear_weight_numel(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def _replace_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    for path in _linear_paths(model):
        set_submodule(model, path, make(model.get_submodule(path)))
    return model


# ----------------------------------------------------------------------------------------------- peers


def _bits(t: torch.Tensor) -> int:
    return t.numel() * t.element_size() * 8


def _bnb(quant_type: str, double_quant: bool) -> Callable[[Context], nn.Module]:
    def make(linear: nn.Linear) -> nn.Module:
        import bitsandbytes as bnb

        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                  compute_dtype=torch.float32, compress_statistics=double_quant,
                                  quant_type=quant_type)  # fmt: skip
        layer.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type=quant_type,
                                         blocksize=64, compress_statistics=double_quant)  # fmt: skip
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
        return layer.to("cpu")  # quantizes

    return lambda ctx: _replace_linears(copy.deepcopy(ctx.model), make)


def _hqq(nbits: int) -> Callable[[Context], nn.Module]:
    def make(linear: nn.Linear) -> nn.Module:
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

        config = BaseQuantizeConfig(nbits=nbits, group_size=64)
        layer = HQQLinear(copy.deepcopy(linear), quant_config=config, compute_dtype=torch.float32, device="cpu")
        for key in ("scale", "zero"):  # HQQLinear's default compute dtype float16 stores them in fp16
            layer.meta[key] = layer.meta[key].half().float()
        return layer

    return lambda ctx: _replace_linears(copy.deepcopy(ctx.model), make)


def _torchao(dtype: torch.dtype) -> Callable[[Context], nn.Module]:
    def build(ctx: Context) -> nn.Module:
        from torchao.quantization import IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup

        model = copy.deepcopy(ctx.model)
        quantize_(model, IntxWeightOnlyConfig(weight_dtype=dtype, granularity=PerGroup(64)))
        return model

    return build


def _quanto(qtype: str) -> Callable[[Context], nn.Module]:
    def build(ctx: Context) -> nn.Module:
        from optimum import quanto

        model = copy.deepcopy(ctx.model)
        quanto.quantize(model, weights=getattr(quanto, qtype))
        quanto.freeze(model)
        for module in model.modules():  # wquant evaluates under torch.inference_mode, where quanto's weight
            if type(module).__name__.startswith("QLinear"):  # subclass cannot take views: leave it per layer
                module.forward = _outside_inference_mode(module.forward)
        return model

    return build


def _outside_inference_mode(forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(False), torch.no_grad():
            return forward(*args, **kwargs)

    return run


def peer_weight_bits(model: nn.Module) -> tuple[int, int]:
    """(stored bits, elements) of the quantized Linear weights of a peer-quantized model (module docstring rule).

    Raises RuntimeError when a Linear weight is left unquantized or unrecognised, so no peer row is ever
    counted at fp32 by accident."""
    total = numel = 0
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind == "Linear4bit":
            state = module.weight.quant_state
            bits = _bits(module.weight.data) + _bits(state.absmax)
            if state.nested:
                bits += _bits(state.state2.absmax) + 32  # nested fp32 absmax per 256 blocks + fp32 offset
            n = int(torch.Size(state.shape).numel())
        elif kind == "HQQLinear":
            n = int(torch.Size(module.meta["shape"]).numel())
            bits = _bits(module.W_q) + 16 * (module.meta["scale"].numel() + module.meta["zero"].numel())
        elif isinstance(module, nn.Linear) or kind.startswith("QLinear"):
            w = module.weight
            wkind = type(w).__name__
            if wkind == "IntxUnpackedToInt8Tensor":  # torchao
                b = int(str(w.target_dtype).removeprefix("torch.int"))
                bits, n = w.qdata.numel() * b + _bits(w.scale) + _bits(w.zero_point), w.qdata.numel()
            elif wkind == "WeightQBitsTensor":  # quanto qint2/qint4: packed uint8 + scale + shift
                bits, n = _bits(w._data._data) + _bits(w._scale) + _bits(w._shift), w.numel()
            elif wkind == "WeightQBytesTensor":  # quanto qint8
                bits, n = _bits(w._data) + _bits(w._scale), w.numel()
            else:
                raise RuntimeError(f"{name}: Linear weight of type {wkind} is not a recognised peer format")
        else:
            continue
        total, numel = total + bits, numel + n
    return total, numel


# ----------------------------------------------------------------------------------------------- wquant


def _rtn(spec: str) -> Callable[[Context], nn.Module]:
    return lambda ctx: sequential(copy.deepcopy(ctx.model), spec, None)


def sequential(model: nn.Module, config: Any, batches: list[Any] | None) -> nn.Module:
    """One `quantize_` call: every Linear layer in forward order (the block-wise calibration walk), q/k/v (and
    gate/up) sharing a Hessian; embeddings stay as they are (not a default target)."""
    quantize_(model, QuantizeConfig(config, targets=("linear",)) if not isinstance(config, dict) else config,
              calibration=batches)  # fmt: skip
    return model


def _algorithm(make_config: Callable[[], Any]) -> Callable[[Context], nn.Module]:
    def build(ctx: Context) -> nn.Module:
        config = make_config()
        return sequential(copy.deepcopy(ctx.model), config, ctx.batches())

    return build


def _gptq(spec: str) -> Callable[[Context], nn.Module]:
    from wquant.algorithms import GPTQConfig

    return _algorithm(lambda: GPTQConfig(spec))


def _hqq_wquant(spec: str) -> Callable[[Context], nn.Module]:
    from wquant.algorithms import HQQConfig

    return lambda ctx: sequential(copy.deepcopy(ctx.model), HQQConfig(spec), None)  # data-free


def _nupes(bits: int) -> Callable[[Context], nn.Module]:
    from wquant.algorithms import NUPESConfig

    # block-64 bf16 absmax scales (b + 0.25 bits/weight) and 30 STE steps, as in docs/algorithms.md's MiniLM run
    return _algorithm(lambda: NUPESConfig(bits=bits, scaling="block64:absmax:bf16", steps=30))


INT_CANDIDATES = (("int{b}/block64:absmax:bf16",), (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0))  # advise's defaults
CODED_CANDIDATES = (("uniform@{b}/tensor:rms:bf16+coded",), (2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0))


def _fisher(bits_per_weight: float, candidates: tuple[tuple[str, ...], tuple[float, ...]]) -> Any:
    def build(ctx: Context) -> nn.Module:
        plan = ctx.linear_budget_plan(bits_per_weight, *candidates)
        model = copy.deepcopy(ctx.model)
        quantize_(model, plan.quantize_config())
        plan.check_applied(model)
        return model

    return build


def _fisher_gptq(bits_per_weight: float) -> Callable[[Context], nn.Module]:
    def build(ctx: Context) -> nn.Module:
        from wquant.algorithms import GPTQConfig

        plan = ctx.linear_budget_plan(bits_per_weight, *INT_CANDIDATES)
        model = copy.deepcopy(ctx.model)
        quantize_(model, plan.quantize_config(GPTQConfig(INT_CANDIDATES[0][0].format(b=4))), calibration=ctx.batches())
        plan.check_applied(model)
        return model

    return build


# ----------------------------------------------------------------------------------------------- systems


@dataclass(frozen=True)
class System:
    label: str
    family: str
    build: Callable[[Context], nn.Module]
    library: str = "wquant"  # a peer's import name
    quick: bool = False  # part of the --quick smoke run
    prepare: tuple[tuple[str, ...], tuple[float, ...]] | None = None  # Fisher candidates, measured before timing

    @property
    def peer(self) -> bool:
        return self.library != "wquant"


def systems() -> list[System]:
    s: list[System] = []
    for spec, quick in [("int2:unsigned/block64:minmax:bf16", False), ("int3:unsigned/block128:minmax:bf16", False),
                        ("int3:unsigned/block64:minmax:bf16", False), ("int4:unsigned/block128:minmax:bf16", False),
                        ("int4:unsigned/block64:minmax:bf16", True), ("int5:unsigned/block128:minmax:bf16", False),
                        ("nf4", False), ("nf4/block128:absmax:bf16", False)]:  # fmt: skip
        s.append(System(f"wquant RTN {spec}", "wquant RTN", _rtn(spec), quick=quick))
    for bits in (2.0, 2.5, 3.0, 3.5, 4.0, 4.5):
        spec = f"uniform@{bits:g}/tensor:rms:bf16+coded"
        s.append(System(f"wquant RTN {spec}", "wquant RTN coded", _rtn(spec), quick=bits == 3.0))
    for spec, quick in [("int2:unsigned/block64:minmax:bf16", False), ("int3:unsigned/block128:minmax:bf16", True),
                        ("int3:unsigned/block64:minmax:bf16", False), ("int4:unsigned/channel:minmax:bf16", False),
                        ("int4:unsigned/block128:minmax:bf16", False),
                        ("nf4/block128:absmax:bf16", False)]:  # fmt: skip
        s.append(System(f"wquant GPTQ {spec}", "wquant GPTQ", _gptq(spec), quick=quick))
    for step, quick in [(0.2, False), (0.28, False), (0.4, False), (0.56, True), (0.8, False), (1.1, False),
                        (1.6, False)]:  # fmt: skip  # fixed step: bits follow from it
        spec = f"uniform{step:g}/tensor:rms:bf16+coded"
        s.append(System(f"wquant GPTQ {spec}", "wquant GPTQ coded", _gptq(spec), quick=quick))
    for spec in ("int3:unsigned/block128:minmax:bf16", "int4:unsigned/block128:minmax:bf16"):
        s.append(System(f"wquant HQQ (data-free) {spec}", "wquant HQQ", _hqq_wquant(spec)))
    for bits in (3, 4):
        s.append(System(f"wquant NUPES pow:{bits}/block64:absmax:bf16", "wquant NUPES", _nupes(bits), quick=bits == 3))
    for bits in (3.0, 3.5, 4.0, 4.5):
        label = f"wquant Fisher alloc ≤ {bits:g} bits/weight (int2-8 absmax g64)"
        s.append(System(label, "wquant Fisher", _fisher(bits, INT_CANDIDATES), prepare=INT_CANDIDATES,
                        quick=bits == 3.5))  # fmt: skip
    for bits in (2.5, 3.0, 3.5, 4.0):
        label = f"wquant Fisher alloc ≤ {bits:g} bits/weight (coded uniform 2-6)"
        s.append(System(label, "wquant Fisher coded", _fisher(bits, CODED_CANDIDATES), prepare=CODED_CANDIDATES,
                        quick=bits == 3.0))  # fmt: skip
    for bits in (3.0, 3.5, 4.0):
        label = f"wquant Fisher alloc + GPTQ ≤ {bits:g} bits/weight (int2-8 absmax g64)"
        s.append(System(label, "wquant Fisher+GPTQ", _fisher_gptq(bits), prepare=INT_CANDIDATES,
                        quick=bits == 3.5))  # fmt: skip
    s += [
        System("bnb Linear4bit NF4 b64 +DQ (Linear4bit default)", "bitsandbytes", _bnb("nf4", True), "bitsandbytes",
               quick=True),
        System("bnb Linear4bit NF4 b64 (BitsAndBytesConfig default)", "bitsandbytes", _bnb("nf4", False),
               "bitsandbytes"),
        System("bnb Linear4bit FP4 b64 +DQ", "bitsandbytes", _bnb("fp4", True), "bitsandbytes"),
        System("hqq HQQLinear 4b g64", "hqq", _hqq(4), "hqq", quick=True),
        System("hqq HQQLinear 3b g64", "hqq", _hqq(3), "hqq"),
        System("hqq HQQLinear 2b g64", "hqq", _hqq(2), "hqq"),
        System("torchao IntxWeightOnly int4 g64", "torchao", _torchao(torch.int4), "torchao", quick=True),
        System("torchao IntxWeightOnly int3 g64", "torchao", _torchao(torch.int3), "torchao"),
        System("torchao IntxWeightOnly int2 g64", "torchao", _torchao(torch.int2), "torchao"),
        System("quanto qint4 (g128)", "quanto", _quanto("qint4"), "optimum.quanto", quick=True),
        System("quanto qint2 (g128)", "quanto", _quanto("qint2"), "optimum.quanto"),
    ]  # fmt: skip
    return s


def _import_error(library: str) -> str | None:
    try:
        __import__(library)
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip this peer"
        return f"{type(exc).__name__}: {exc}"
    return None


# ----------------------------------------------------------------------------------------------- measuring


@dataclass
class Row:
    label: str
    family: str
    peer: bool
    bits_per_weight: float  # all-in bits per Linear weight element
    model_bits_per_param: float  # every parameter, unquantized ones at their dtype width
    distortion: float
    metrics: dict[str, float]
    quantize_s: float
    eval_s: float
    note: str = ""
    load: float | None = None  # 1-minute load average when the row was measured (the machine is shared)


@dataclass
class Bench:
    """Measures systems on one model; rows are cached on disk (per model, text size and label) so a run resumes."""

    ctx: Context
    evaluate: Callable[[nn.Module], dict[str, float]]
    distortion_key: Callable[[dict[str, float]], float]
    cache_key: str
    fresh: bool
    rows: list[Row] = field(default_factory=list)

    def _cache_file(self) -> Path:
        return CACHE / f"{self.cache_key}.json"

    def _cached(self, *, stored: bool = False) -> dict[str, Any]:
        """Cached rows (none under --fresh, unless `stored`: what the file holds, for writing back)."""
        path = self._cache_file()
        if (self.fresh and not stored) or not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}

    def _store(self, row: Row) -> None:
        self._store_extra(row.label, asdict(row))

    def _store_extra(self, key: str, value: Any) -> None:
        data = self._cached(stored=True)
        data[key] = value
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = self._cache_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self._cache_file())

    def run(self, system: System, index: int, count: int) -> Row:
        stored_fisher = self._cached().get(FISHER_KEY, {})
        self.ctx.fisher_s = {**stored_fisher, **self.ctx.fisher_s}
        cached = self._cached().get(system.label)
        if cached is not None:
            row = Row(**cached)
            print(f"[{self.ctx.name} {index}/{count}] {system.label}: cached, {row.bits_per_weight:.4f} bits/weight, "
                  f"distortion {row.distortion:.5g}", flush=True)  # fmt: skip
            self.rows.append(row)
            return row
        if system.prepare is not None:  # the Fisher estimate and candidate table are shared by every budget
            self.ctx.candidate_table(*system.prepare)
            self._store_extra(FISHER_KEY, self.ctx.fisher_s)
        self.ctx.note = ""
        start = time.perf_counter()
        model = system.build(self.ctx)
        quantize_s = time.perf_counter() - start
        note = self.ctx.note
        base_bits = model_bits(self.ctx.model)
        n_linear = _linear_weight_numel(self.ctx.model)
        if system.peer:
            bits, numel = peer_weight_bits(model)
            if numel != n_linear:
                raise RuntimeError(f"{system.label}: {numel} quantized Linear weights, the model has {n_linear}")
            model_bits_pp = (base_bits.bits - 32 * n_linear + bits) / base_bits.params
        else:
            mb = model_bits(model)
            bits, numel = mb.quantized_bits, mb.quantized_params
            if numel != n_linear:
                raise RuntimeError(f"{system.label}: {numel} quantized weights, the model has {n_linear} Linear")
            model_bits_pp = mb.bits_per_param
        start = time.perf_counter()
        with torch.no_grad():  # not inference_mode: quanto's forward sets version counters
            metrics = self.evaluate(model)
        eval_s = time.perf_counter() - start
        row = Row(system.label, system.family, system.peer, bits / numel, model_bits_pp,
                  self.distortion_key(metrics), metrics, quantize_s, eval_s, note, os.getloadavg()[0])  # fmt: skip
        shown = " ".join(f"{k} {v:.5g}" for k, v in metrics.items())
        print(f"[{self.ctx.name} {index}/{count}] {system.label}: {row.bits_per_weight:.4f} bits/weight "
              f"(model {model_bits_pp:.3f}) {shown} | quantize {quantize_s:.1f} s, eval {eval_s:.1f} s {note}",
              flush=True)  # fmt: skip
        self.rows.append(row)
        self._store(row)
        return row


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, *parts], default=str).encode()).hexdigest()[:12]


def minilm_bench(paragraphs: int, calib_texts: int, fresh: bool) -> tuple[Bench, dict[str, Any]]:
    texts = read_paragraphs(WIKITEXT, limit=paragraphs)
    loaded = load_pretrained("minilm")
    calibration = read_paragraphs(WIKI_VALID, limit=calib_texts)
    reference: list[torch.Tensor] = []  # fp32 embeddings, computed once on first use

    def evaluate(model: nn.Module) -> dict[str, float]:
        if not reference:
            reference.append(embed_texts(loaded.model, loaded.tokenizer, texts, max_length=loaded.max_length))
        emb = embed_texts(model, loaded.tokenizer, texts, max_length=loaded.max_length)
        fid = embedding_fidelity(reference[0], emb, bits_per_param=0.0, reference_bits_per_param=32.0)
        return {"mean_cos": fid.mean_cosine, "min_cos": fid.min_cosine, "nn_agree": fid.neighbour_agreement}

    def make_batches() -> list[Any]:
        from wquant.data import sentence_batches

        return sentence_batches(loaded.tokenizer, calibration, max_length=128)

    ctx = Context("minilm", loaded.model, loaded.tokenizer, loaded.task, loaded.max_length, make_batches,
                  "\n".join(calibration), len(calibration))  # fmt: skip
    tokens = sum(min(len(ids), loaded.max_length) for ids in loaded.tokenizer(texts)["input_ids"])
    info = {"paragraphs": len(texts), "tokens": tokens, "max_length": loaded.max_length,
            "calib_texts": len(calibration), "linear_weights": _linear_weight_numel(loaded.model),
            "params": model_bits(loaded.model).params}  # fmt: skip
    key = f"minilm-{_digest(paragraphs, calib_texts)}"
    return Bench(ctx, evaluate, lambda m: 1.0 - m["mean_cos"], key, fresh), info


def testbed_bench(calib_windows: int, fresh: bool) -> tuple[Bench, dict[str, Any]]:
    folder = cached_testbed(SHAKESPEARE, progress=True)
    loaded = load_pretrained(folder)
    heldout = heldout_text(folder, SHAKESPEARE)
    full = read_text(SHAKESPEARE)
    train = full[: len(full) - len(heldout)]
    reference_ppl: list[float] = []

    def evaluate(model: nn.Module) -> dict[str, float]:
        result = compare_causal(loaded.model, model, loaded.tokenizer, heldout, window=WINDOW)
        reference_ppl[:] = [result.reference.perplexity]
        return {"kl": result.kl, "top10_kl": result.top_k_kl, "ppl": result.quantized.perplexity,
                "top1_agree": result.top1_agreement}  # fmt: skip

    def make_batches() -> list[Any]:
        from wquant.data import calibration_windows

        return calibration_windows(loaded.tokenizer, train, nsamples=calib_windows, seqlen=WINDOW, seed=0)

    ctx = Context("testbed", loaded.model, loaded.tokenizer, loaded.task, WINDOW, make_batches, train,
                  calib_windows)  # fmt: skip
    info = {"heldout_chars": len(heldout), "calib_windows": calib_windows, "folder": folder.name,
            "linear_weights": _linear_weight_numel(loaded.model), "params": model_bits(loaded.model).params,
            "reference_ppl": reference_ppl}  # fmt: skip
    key = f"testbed-{folder.name}-{_digest(calib_windows)}"
    return Bench(ctx, evaluate, lambda m: m["kl"], key, fresh), info


# ----------------------------------------------------------------------------------------------- analysis


def envelope(rows: list[Row]) -> list[Row]:
    """wquant's Pareto-optimal rows: sorted by bits, each with lower distortion than every cheaper one."""
    out: list[Row] = []
    for r in sorted((r for r in rows if not r.peer and r.distortion > 0), key=lambda r: r.bits_per_weight):
        if not out or r.distortion < out[-1].distortion:
            out.append(r)
    return out


@dataclass(frozen=True)
class Saving:
    """wquant's bits at a peer point's distortion. Inside the envelope's distortion range: interpolated ("="). A
    peer more distorted than wquant's cheapest envelope point: wquant needs at most that point's bits, so the saving
    is a lower bound (">="); a peer less distorted than wquant's best point: an upper bound ("<="). Never extrapolated.
    """

    peer: Row
    wquant_bits: float
    kind: str  # "=", ">=" (saving at least), "<=" (saving at most)
    nearest: Row  # the wquant row nearest in bits

    @property
    def saved(self) -> float:
        return self.peer.bits_per_weight - self.wquant_bits


def savings(rows: list[Row]) -> list[Saving]:
    from wquant.allocation import bits_at_distortion

    env = envelope(rows)
    if len(env) < 2:
        return []
    points = [(r.bits_per_weight, r.distortion) for r in env]
    wq = [r for r in rows if not r.peer]
    out = []
    for p in sorted((r for r in rows if r.peer), key=lambda r: r.bits_per_weight):
        nearest = min(wq, key=lambda r: (abs(r.bits_per_weight - p.bits_per_weight), r.distortion))
        if p.distortion > env[0].distortion:
            out.append(Saving(p, env[0].bits_per_weight, ">=", nearest))
        elif p.distortion < env[-1].distortion:
            out.append(Saving(p, env[-1].bits_per_weight, "<=", nearest))
        else:
            out.append(Saving(p, bits_at_distortion(points, p.distortion), "=", nearest))
    return out


SUBSETS = [  # wquant restricted to what a user without calibration data, or without entropy coding, can run
    ("data-free wquant only (RTN, coded RTN, HQQ)", ("wquant RTN", "wquant RTN coded", "wquant HQQ")),
    ("data-free fixed-rate wquant only (RTN, HQQ)", ("wquant RTN", "wquant HQQ")),
    ("fixed-rate wquant only (RTN, HQQ, GPTQ, NUPES, Fisher)", ("wquant RTN", "wquant HQQ", "wquant GPTQ",
                                                               "wquant NUPES", "wquant Fisher", "wquant Fisher+GPTQ")),
]  # fmt: skip


def _subset_saving(rows: list[Row], families: tuple[str, ...]) -> str:
    """The smallest saving against any peer with wquant restricted to `families`, and the smallest interpolated one."""
    found = savings([r for r in rows if r.peer or r.family in families])
    if not found:
        return "no peer rows"
    worst = min(found, key=lambda f: f.saved)
    exact = [f for f in found if f.kind == "="]
    bound = {">=": "≥ ", "<=": "≤ "}.get(worst.kind, "")
    line = f"smallest saving {bound}{worst.saved:+.3f} bit/weight ({worst.peer.label})"
    if exact and (tight := min(exact, key=lambda f: f.saved)) is not worst:
        line += f"; smallest interpolated {tight.saved:+.3f} ({tight.peer.label})"
    return line


def best_peer(found: list[Saving]) -> Saving | None:
    return min(found, key=lambda s: s.saved) if found else None


# ----------------------------------------------------------------------------------------------- output


def figure(panels: list[tuple[str, str, list[Row]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"wquant RTN": ("tab:blue", "o"), "wquant RTN coded": ("tab:cyan", "D"), "wquant GPTQ": ("tab:green", "s"),
              "wquant GPTQ coded": ("darkgreen", "h"), "wquant HQQ": ("tab:blue", "d"),
              "wquant NUPES": ("tab:olive", "^"), "wquant Fisher": ("tab:purple", "P"),
              "wquant Fisher coded": ("tab:purple", "p"),
              "wquant Fisher+GPTQ": ("tab:pink", "*"), "bitsandbytes": ("tab:red", "X"), "hqq": ("tab:orange", "v"),
              "torchao": ("tab:brown", "<"), "quanto": ("tab:gray", ">")}  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.2), squeeze=False)
    for ax, (title, ylabel, rows) in zip(axes[0], panels, strict=True):
        env = envelope(rows)
        if env:
            ax.plot([r.bits_per_weight for r in env], [r.distortion for r in env], "-", color="black", lw=1,
                    alpha=0.6, label="wquant lower envelope", zorder=1)  # fmt: skip
        for family, (color, marker) in styles.items():
            pts = [r for r in rows if r.family == family and r.distortion > 0]
            if pts:
                ax.scatter([r.bits_per_weight for r in pts], [r.distortion for r in pts], color=color, marker=marker,
                           s=70 if family in ("wquant Fisher+GPTQ",) else 45, label=family, zorder=3,
                           edgecolors="none" if family.startswith("wquant") else "black",
                           linewidths=0.5)  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("all-in bits per Linear weight (codes + scales + zeros as stored)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(rows: list[Row], metrics: list[tuple[str, str, int]]) -> str:
    head = ["system", "bits/weight", "model bits/param", *[m[1] for m in metrics], "quantize s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r.bits_per_weight, r.distortion)):
        vals = [f"{r.metrics[m]:.{digits}f}" if m in r.metrics else "" for m, _, digits in metrics]
        name = f"**{r.label}**" if r.peer else r.label
        lines.append("| " + " | ".join([name, f"{r.bits_per_weight:.4f}", f"{r.model_bits_per_param:.3f}", *vals,
                                        f"{r.quantize_s:.1f}"]) + " |")  # fmt: skip
    return "\n".join(lines)


def _savings_table(found: list[Saving], fmt: str) -> str:
    head = ["peer", "bits/weight", "distortion", "wquant bits at that distortion", "bits saved",
            "nearest-bits wquant point (distortion)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in found:
        wq = {"=": f"{s.wquant_bits:.3f}", ">=": f"≤ {s.wquant_bits:.3f} (its cheapest point is less distorted)",
              "<=": f"> {s.wquant_bits:.3f} (less distorted than all of wquant's points)"}[s.kind]  # fmt: skip
        saved = {"=": "", ">=": "≥ ", "<=": "≤ "}[s.kind] + f"{s.saved:+.3f}"
        near = f"{s.nearest.label} at {s.nearest.bits_per_weight:.3f} ({s.nearest.distortion:{fmt}})"
        lines.append(f"| {s.peer.label} | {s.peer.bits_per_weight:.4f} | {s.peer.distortion:{fmt}} | {wq} | "
                     f"{saved} | {near} |")  # fmt: skip
    return "\n".join(lines)


def _verdict(name: str, found: list[Saving]) -> tuple[str, bool | None]:
    best = best_peer(found)
    if best is None:
        return f"{name}: no peer point measured, target not checked.", None
    if best.kind == "=":
        met: bool | None = best.saved >= TARGET_SAVING
        how = f"wquant reaches that distortion at {best.wquant_bits:.3f} → **{best.saved:+.3f} bit/weight saved"
    elif best.kind == ">=":
        met = True if best.saved >= TARGET_SAVING else None
        how = (
            f"wquant's cheapest point ({best.wquant_bits:.3f}) is already less distorted → **at least "
            f"{best.saved:+.3f} bit/weight saved"
        )
    else:
        met = False if best.saved < TARGET_SAVING else None
        how = f"no wquant point is as little distorted → **at most {best.saved:+.3f} bit/weight saved"
    verdict = {True: "met", False: "missed", None: "not shown by these points"}[met]
    return (
        f"{name}: best peer (smallest saving) {best.peer.label} ({best.peer.bits_per_weight:.3f} bits/weight, "
        f"distortion {best.peer.distortion:.4g}); {how}, target ≥ {TARGET_SAVING} {verdict}**."
    ), met


def section(args: argparse.Namespace, load: tuple[str, str], minilm: tuple[Bench, dict] | None,
            testbed: tuple[Bench, dict] | None, notes: list[str]) -> str:  # fmt: skip
    from importlib.metadata import version

    def ver(dist: str) -> str:
        try:
            return version(dist)
        except Exception:  # noqa: BLE001
            return "absent"

    peers = ", ".join(f"{d} {ver(d)}" for d in ("bitsandbytes", "hqq", "torchao", "optimum-quanto"))
    rel = FIGURE.relative_to(ROOT)
    rows = [r for item in (minilm, testbed) if item for r in item[0].rows]
    loads = [r.load for r in rows if r.load is not None]
    spread = f"load avg {min(loads):.1f}–{max(loads):.1f} while the rows were measured" if loads else "load unknown"
    if len(loads) < len(rows):
        spread += f" ({len(rows) - len(loads)} cached rows without a record)"
    parts = [
        f"`benchmarks/models.py --paragraphs {args.paragraphs}` (`make bench-models`), {platform.machine()} CPU, "
        f"torch {torch.__version__}, {args.threads} torch thread(s), run under `nice -n 10` on a 2-core machine shared "
        f"with other workers ({spread}; {load[0]} at the start of the writing run, {load[1]} at its end), so times "
        "are ±2×. One thread because with two, OpenMP spin-waits on the loaded machine made the testbed evaluation "
        f"~20× slower. Peers: {peers}.",
        "",
        "**Bits/weight** is the all-in stored size of the quantized Linear weights (codes + scales + zeros + tables "
        "as each library stores them; the rule, per library, is in the script's docstring) over their element "
        "count, the same tensors for every system; model bits/param adds the fp32 embeddings, biases and norms. "
        "Peer rows are bold. Calibration (GPTQ, NUPES, Fisher) never sees the evaluation text: MiniLM calibrates "
        "on WikiText-2 *valid* paragraphs, the testbed on the first 90 % of Tiny Shakespeare.",
        "",
        f"![distortion vs bits]({rel})",
    ]
    verdicts: list[str] = []
    for name, item, metrics, fmt, what in [
        ("MiniLM", minilm, [("mean_cos", "mean cos", 5), ("min_cos", "min cos", 4), ("nn_agree", "NN agree", 3)],
         ".4f", "1 − mean cos"),
        ("testbed", testbed, [("kl", "KL nats/char", 5), ("top10_kl", "top-10 KL", 5), ("ppl", "ppl", 4),
                              ("top1_agree", "top-1 agree", 4)], ".5f", "KL"),
    ]:  # fmt: skip
        if item is None:
            continue
        bench, info = item
        if name == "MiniLM":
            parts += ["", f"### all-MiniLM-L6-v2: all 37 Linear layers ({info['linear_weights']:,} of "
                      f"{info['params']:,} params), {info['paragraphs']} WikiText-2 test paragraphs "
                      f"({info['tokens']:,} tokens, max length {info['max_length']}); calibration "
                      f"{info['calib_texts']} WikiText-2 valid "
                      "paragraphs (max length 128)"]  # fmt: skip
        else:
            ref = info["reference_ppl"][0] if info["reference_ppl"] else float("nan")
            parts += ["", f"### Causal testbed: char-level Llama, all 29 Linear layers incl. lm_head "
                      f"({info['linear_weights']:,} of {info['params']:,} params), held-out "
                      f"{info['heldout_chars']:,} chars of Tiny Shakespeare (window {WINDOW}, fp32 perplexity "
                      f"{ref:.4f}); calibration {info['calib_windows']} windows of {WINDOW} from the first "
                      "90 %"]  # fmt: skip
        found = savings(bench.rows)
        verdict, _ = _verdict(name, found)
        verdicts.append(verdict)
        verdicts += [f"{name}, {label}: {_subset_saving(bench.rows, families)}" for label, families in SUBSETS]
        planned = [f"- {r.label}: {r.note}" for r in sorted(bench.rows, key=lambda r: r.label) if r.note]
        fisher = [f"{k}: {v:.0f} s" for k, v in bench.ctx.fisher_s.items()]
        parts += ["", _table(bench.rows, metrics), "", "Fisher plans (format per Linear layer):", *planned]
        if fisher:
            parts += ["", "Fisher estimate + candidate measurement (once per candidate set, not in quantize s): "
                      + "; ".join(fisher)]  # fmt: skip
        parts += ["",
                  f"Bits saved at equal distortion ({what}) against each peer point, read off wquant's lower "
                  "envelope:", "", _savings_table(found, fmt), "", verdict]  # fmt: skip
    parts += ["", "### Target: at equal distortion, wquant needs ≥ 0.25 bit/weight fewer than the best peer", "",
              *[f"- {v}" for v in verdicts]]  # fmt: skip
    if notes:
        parts += ["", "Notes:", *[f"- {n}" for n in notes]]
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paragraphs", type=int, default=300, help="WikiText-2 test paragraphs for MiniLM")
    parser.add_argument("--calib-texts", type=int, default=128, help="WikiText-2 valid paragraphs (MiniLM calibration)")
    parser.add_argument("--calib-windows", type=int, default=128, help="testbed calibration windows of 128 chars")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see the section text)")
    parser.add_argument("--quick", action="store_true", help="smoke run: few systems, small texts, writes nothing")
    parser.add_argument("--only", default=None, help="regex: run only systems whose label matches (no writes)")
    parser.add_argument("--fresh", action="store_true", help=f"ignore rows cached in {CACHE}")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md and the figure")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-causal", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.paragraphs, args.calib_texts, args.calib_windows = 40, 48, 32
    torch.set_num_threads(args.threads)
    load_start = machine_line()
    chosen = [s for s in systems() if s.quick or not args.quick]
    chosen = [s for s in chosen if args.only is None or re.search(args.only, s.label)]
    notes: list[str] = []
    missing = {s.library: why for s in chosen if s.peer and (why := _import_error(s.library)) is not None}
    for library, why in missing.items():
        notes.append(f"{library} rows skipped: not importable ({why}); install the `bench` extra")
    chosen = [s for s in chosen if s.library not in missing]
    fresh = args.fresh or args.quick

    def run_all(bench: Bench) -> None:
        for i, system in enumerate(chosen, 1):
            try:
                bench.run(system, i, len(chosen))
            except Exception as exc:  # noqa: BLE001 - a failing system is reported, the others still run
                msg = f"{bench.ctx.name}: {system.label} failed: {type(exc).__name__}: {str(exc)[:300]}"
                print(msg, flush=True)
                notes.append(msg)

    minilm = testbed = None
    if not args.skip_minilm:
        if WIKITEXT.is_file() and WIKI_VALID.is_file():
            minilm = minilm_bench(args.paragraphs, args.calib_texts, fresh)
            run_all(minilm[0])
        else:
            notes.append(f"MiniLM skipped: {WIKITEXT} or {WIKI_VALID} is missing")
    if not args.skip_causal:
        if SHAKESPEARE.is_file():
            testbed = testbed_bench(args.calib_windows, fresh)
            run_all(testbed[0])
        else:
            notes.append(f"testbed skipped: {SHAKESPEARE} is missing")
    load = (load_start.rsplit(", ", 1)[-1], machine_line().rsplit(", ", 1)[-1])
    text = section(args, load, minilm, testbed, notes)
    print(text)
    panels = []
    if minilm:
        panels.append((f"all-MiniLM-L6-v2, {args.paragraphs} WikiText-2 paragraphs", "1 − mean cosine to fp32",
                       minilm[0].rows))  # fmt: skip
    if testbed:
        panels.append(("causal testbed, held-out Tiny Shakespeare", "KL(fp32 ‖ quantized), nats/char",
                       testbed[0].rows))  # fmt: skip
    writes = not (args.no_write or args.quick or args.only)
    if panels:
        path = FIGURE if writes else Path("/tmp/distortion_vs_bits_models.png")
        figure(panels, path)
        print(f"figure: {path}")
    if writes:
        replace_section(SECTION, text)


if __name__ == "__main__":
    main()
