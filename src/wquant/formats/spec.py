"""Format specs: one frozen dataclass per format, a spec string that round-trips, and a JSON form.

Grammar: ELEMENT[/GRANULARITY[:RULE][:SCALE_FORMAT]][/super<S>[:SUPER_FORMAT]][+search][+outliers<ratio>[:<value
format>]][+coded[:g<N>]], e.g. `int4:asym/block64:absmax:bf16`, `nf4/block64:absmax:fp32`,
`e2m1/block32:absmax:e8m0`, `crd-t5:4/tensor:rms+outliers0.001`, and two-level (k-quant) scaling
`int4:unsigned/block32:minmax:u6/super256:fp16` (GGUF Q4_K). A bare name is a preset (`mxfp4`, `nvfp4`,
`nf4`, the GGUF types `q4_0` … `q6_k`, `iq4_xs`, ...) or an element with the default scaling
block64:absmax:bf16.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from wquant.errors import SpecError
from wquant.formats.floats import OCP_FLOATS, float_format
from wquant.formats.grids import (
    NAMED_TABLES,
    CubeRootGrid,
    ElementGrid,
    FloatGrid,
    IntGrid,
    LloydMaxGrid,
    PowerGrid,
    TableGrid,
    UniformGrid,
    _fmt_number,
    sf4_levels,
)
from wquant.formats.scaling import SCALE_RULES, ScaleFormat, Scaling

DEFAULT_SCALING = "block64:absmax:bf16"
#: The format wquant uses when none is named: 4-bit codes with a bf16 scale and zero offset per 64 (4.5 b/w).
DEFAULT_FORMAT = "int4:unsigned/block64:minmax:bf16"
OUTLIER_INDEX_BITS = 32
#: Smallest absmax block a normal or Student-t cube-root grid is defined for: its edge is the expected maximum
#: of a block, √(2·ln(B/π))-like, which is real only for B > π.
CRD_MIN_BLOCK = 4

#: Named formats as their owners define them (bits/param in the comment are all-in).
PRESETS: dict[str, str] = {
    "mxfp4": "e2m1/block32:absmax:e8m0",  # OCP MX FP4, 4.25
    "mxfp4-rceil": "e2m1/block32:absmax:e8m0-rceil",
    "mxfp6": "e2m3/block32:absmax:e8m0",  # 6.25
    "mxfp6-e3m2": "e3m2/block32:absmax:e8m0",
    "mxfp8": "e4m3/block32:absmax:e8m0",  # 8.25
    "mxfp8-e5m2": "e5m2/block32:absmax:e8m0",
    "mxint8": "int8/block32:absmax:e8m0",
    "nvfp4": "e2m1/block16:absmax:e4m3",  # 4.5 (+32 bits per tensor)
    "nf4": "nf4/block64:absmax:fp32",  # QLoRA / bitsandbytes layout, 4.5
    "af4": "af4/block64:absmax:fp32",
    "int4-g128": "int4:unsigned/block128:minmax:bf16",  # scale + real-valued zero offset, 4.25
    "gptq-int4-g128": "int4:unsigned/block128:zeropoint:fp16",  # GPTQ/AWQ checkpoints: fp16 scale, 4-bit zero, 4.15625
    "int8-channel": "int8/channel:absmax:bf16",
    # GGUF (llama.cpp) types: bits/param equal to the bytes a block takes in a GGUF file
    "q4_0": "int4:asym/block32:signmax:fp16",  # 18 B / 32: 4.5
    "q4_1": "int4:unsigned/block32:minmax:fp16",  # 20 B / 32: 5.0
    "q5_0": "int5:asym/block32:signmax:fp16",  # 22 B / 32: 5.5
    "q5_1": "int5:unsigned/block32:minmax:fp16",  # 24 B / 32: 6.0
    "q8_0": "int8/block32:absmax:fp16",  # 34 B / 32: 8.5
    "iq4_nl": "iq4nl/block32:signmax:fp16",  # 18 B / 32: 4.5
    "tq2_0": "int2/block256:absmax:fp16",  # 66 B / 256: 2.0625
    "q2_k": "int2:unsigned/block16:minmax:u4/super256:fp16",  # 84 B / 256: 2.625
    "q3_k": "int3:asym/block16:signmax:i6/super256:fp16",  # 110 B / 256: 3.4375
    "q4_k": "int4:unsigned/block32:minmax:u6/super256:fp16",  # 144 B / 256: 4.5
    "q5_k": "int5:unsigned/block32:minmax:u6/super256:fp16",  # 176 B / 256: 5.5
    "q6_k": "int6:asym/block16:signmax:i8/super256:fp16",  # 210 B / 256: 6.5625
    "iq4_xs": "iq4nl/block32:signmax:i6/super256:fp16",  # 136 B / 256: 4.25
}

#: Presets that are GGUF tensor types (their stored fields are a GGUF block's; wquant.export.gguf_types).
GGUF_PRESETS = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl", "mxfp4", "tq2_0", "q2_k", "q3_k", "q4_k", "q5_k",
                "q6_k", "iq4_xs")  # fmt: skip

#: The GGUF types Fisher allocation chooses from for `--formats gguf` (llama.cpp's ladder, Q2_K … Q8_0).
GGUF_LADDER = ("q2_k", "q3_k", "iq4_xs", "q4_k", "q5_k", "q6_k", "q8_0")

#: What llama.cpp stores a tensor as when its rows do not hold whole blocks of the asked type.
FALLBACKS: dict[str, str] = {
    "q2_k": "iq4_nl", "q3_k": "iq4_nl", "iq4_xs": "iq4_nl", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0",
    "tq2_0": "q4_0",
}  # fmt: skip

ELEMENT_FORMS = (
    "int<b>[:asym|:half|:unsigned]",
    "uint<b>",
    "e<E>m<M> (OCP: e2m1 e2m3 e3m2 e4m3 e5m2; fp4=e2m1, fp8=e4m3)",
    "nf4",
    "af4",
    "sf4",
    "iq4nl (GGUF IQ4_NL levels)",
    "lut:<v1>,<v2>,...",
    "crd-normal:<b>[:asym][:p<power>]",
    "crd-laplace:<b>[:asym]",
    "crd-t<nu>:<b>[:asym]",
    "lloydmax:<b>",
    "pow<a>:<b>[:nearest]",
    "uniform<step>[:mid] or uniform@<bits/param>[:mid] (with +coded)",
)


@dataclass(frozen=True)
class OutlierSpec:
    """Keep the top `ratio` share of |w| exactly-ish: value in `value_format`, flat index in 32 bits."""

    ratio: float
    value_format: ScaleFormat = ScaleFormat("bf16")

    def __post_init__(self) -> None:
        if not (isinstance(self.ratio, int | float) and 0 < self.ratio < 1 and math.isfinite(self.ratio)):
            raise SpecError(f"outlier ratio must be in (0, 1), got {self.ratio!r}")
        if self.value_format.name not in ("fp32", "fp16", "bf16"):
            raise SpecError(f"outlier values are stored as fp32, fp16 or bf16, not {self.value_format.name}")

    def count(self, numel: int) -> int:
        return math.floor(self.ratio * numel)

    @property
    def bits_each(self) -> int:
        return self.value_format.bits + OUTLIER_INDEX_BITS

    @property
    def token(self) -> str:
        suffix = "" if self.value_format.name == "bf16" else f":{self.value_format.name}"
        return f"outliers{_fmt_number(self.ratio)}{suffix}"


@dataclass(frozen=True)
class CodingSpec:
    """Entropy-code the element codes (ANS): one frequency model per tensor, or one per `group_size` codes."""

    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.group_size is not None and not (isinstance(self.group_size, int) and self.group_size >= 1):
            raise SpecError(f"coding group size must be a positive integer, got {self.group_size!r}")

    @property
    def token(self) -> str:
        return "coded" if self.group_size is None else f"coded:g{self.group_size}"


@dataclass(frozen=True)
class FormatSpec:
    """A complete weight format: element grid × scaling × optional sparse outliers × optional entropy coding."""

    element: ElementGrid
    scaling: Scaling = Scaling()
    outliers: OutlierSpec | None = None
    coding: CodingSpec | None = None

    def __post_init__(self) -> None:
        if isinstance(self.element, UniformGrid) and self.element.target_bits is not None and self.coding is None:
            raise SpecError("a bits/param budget (uniform@B) needs entropy coding: add +coded")
        if self.scaling.search and self.element.data_dependent:
            raise SpecError("+search has no effect on fitted grids (Lloyd–Max, uniform): their table adapts; drop it")
        if self.scaling.search and self.scaling.has_offsets:
            raise SpecError(f"+search is defined for absmax, signmax, span and rms scaling; {self.scaling.rule} "
                            "already fits the range")  # fmt: skip
        if self.scaling.rule == "zeropoint" and self.element.data_dependent:
            raise SpecError("a zero point indexes a fixed grid level; fitted grids (Lloyd–Max, uniform) move "
                            "their levels, so use minmax with them")  # fmt: skip
        element, scaling = self.element, self.scaling
        if (isinstance(element, CubeRootGrid) and element.family != "laplace" and scaling.rule in ("absmax", "signmax")
                and scaling.block_size is not None and scaling.block_size < CRD_MIN_BLOCK):  # fmt: skip
            raise SpecError(f"{element.token} with {scaling.rule} blocks sizes its grid by the expected largest of "
                            f"a block, defined from {CRD_MIN_BLOCK} values; use block{CRD_MIN_BLOCK} or more, or "
                            "rms scaling")  # fmt: skip
        if self.scaling.two_level:
            if self.element.data_dependent:
                raise SpecError("two-level scales are fitted to a fixed grid; fitted grids (Lloyd–Max, uniform) "
                                "take single-level scaling")  # fmt: skip
            if self.scaling.search:
                raise SpecError("two-level block scales are already fitted per block (formats.fit); drop +search")
            if self.scaling.rule == "minmax" and self.element.codebook().lo != 0:
                raise SpecError(f"two-level minmax offsets are −dmin·m (m ≥ 0), which needs a grid starting at 0: "
                                f"use int{self.element.bits}:unsigned, not {self.element.token}")  # fmt: skip

    def __str__(self) -> str:
        return self.to_string()

    def to_string(self) -> str:
        out = f"{self.element.token}/{self.scaling.token}"  # two-level scaling adds /super<S>:<format>
        if self.scaling.search:
            out += "+search"
        if self.outliers is not None:
            out += "+" + self.outliers.token
        if self.coding is not None:
            out += "+" + self.coding.token
        return out

    def to_dict(self) -> dict[str, Any]:
        element = dataclasses.asdict(self.element)
        if isinstance(self.element, FloatGrid):
            element = {"name": self.element.token}
        return {
            "element": {"kind": type(self.element).__name__, **element},
            "scaling": {
                "granularity": self.scaling.granularity,
                "block_size": self.scaling.block_size,
                "rule": self.scaling.rule,
                "scale_format": self.scaling.scale_format.name,
                "search": self.scaling.search,
                "super_size": self.scaling.super_size,
                "super_format": self.scaling.super_format.name,
            },
            "outliers": None
            if self.outliers is None
            else {"ratio": self.outliers.ratio, "value_format": self.outliers.value_format.name},
            "coding": None if self.coding is None else {"group_size": self.coding.group_size},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> FormatSpec:
        try:
            element = dict(data["element"])
            kind = element.pop("kind")
            kinds = {
                cls.__name__: cls for cls in (IntGrid, TableGrid, PowerGrid, CubeRootGrid, LloydMaxGrid, UniformGrid)
            }
            if kind == "FloatGrid":
                grid: ElementGrid = FloatGrid(float_format(element["name"]))
            elif kind in kinds:
                if kind == "TableGrid":
                    element["values"] = tuple(element["values"])
                grid = kinds[kind](**element)
            else:
                raise SpecError(f"element kind {kind!r} unknown; valid: FloatGrid, {', '.join(sorted(kinds))}")
            sc = dict(data["scaling"])
            scaling = Scaling(
                sc["granularity"],
                sc["block_size"],
                sc["rule"],
                ScaleFormat(sc["scale_format"]),
                bool(sc["search"]),
                sc.get("super_size"),
                ScaleFormat(sc.get("super_format") or "fp16"),
            )
            out = data.get("outliers")
            outliers = None if out is None else OutlierSpec(float(out["ratio"]), ScaleFormat(out["value_format"]))
            coded = data.get("coding")
            coding = None if coded is None else CodingSpec(coded["group_size"])
        except (KeyError, TypeError) as exc:
            raise SpecError(f"format JSON lacks or garbles a field ({exc}); see FormatSpec.to_dict") from None
        return FormatSpec(grid, scaling, outliers, coding)

    @staticmethod
    def from_json(text: str) -> FormatSpec:
        try:
            return FormatSpec.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise SpecError(f"format JSON does not parse: {exc}") from None


_NUM = r"[0-9]*\.?[0-9]+(?:e-?[0-9]+)?"


def parse_element(token: str) -> ElementGrid:
    """Element grid from its token (see ELEMENT_FORMS)."""
    tok = token.strip().lower()
    parts = tok.split(":")
    head, opts = parts[0], parts[1:]
    try:
        if m := re.fullmatch(r"(u?)int(\d+)", head):
            variant = "unsigned" if m.group(1) else (opts[0] if opts else "sym")
            if len(opts) > (0 if m.group(1) else 1):
                raise SpecError(f"too many options in {token!r}")
            return IntGrid(int(m.group(2)), variant)  # type: ignore[arg-type]
        if head in ("fp4", "fp8") and not opts:
            return FloatGrid(OCP_FLOATS["e2m1" if head == "fp4" else "e4m3"])
        if re.fullmatch(r"u?e\d+m\d+", head) and not opts:
            return FloatGrid(float_format(head))
        if head in NAMED_TABLES and not opts:
            return TableGrid(head, NAMED_TABLES[head])
        if head == "sf4" and not opts:
            return TableGrid("sf4", sf4_levels())
        if head == "lut" and len(opts) == 1:
            return TableGrid("lut", tuple(float(v) for v in opts[0].split(",")))
        if m := re.fullmatch(r"crd-(normal|laplace|t(" + _NUM + "))", head):
            if not opts:
                raise SpecError(f"{token!r} needs a bit width, e.g. {head}:4")
            bits, symmetric, power = int(opts[0]), True, 1 / 3
            for opt in opts[1:]:
                if opt == "asym":
                    symmetric = False
                elif re.fullmatch("p" + _NUM, opt):
                    power = float(opt[1:])
                else:
                    raise SpecError(f"cube-root option {opt!r} unknown; valid: asym, p<power>")
            family = "t" if m.group(2) else m.group(1)
            nu = float(m.group(2)) if m.group(2) else None
            return CubeRootGrid(family, bits, nu, symmetric, power)  # type: ignore[arg-type]
        if head == "lloydmax" and len(opts) == 1:
            return LloydMaxGrid(int(opts[0]))
        if m := re.fullmatch(r"uniform(@?)(" + _NUM + ")", head):
            if len(opts) > 1 or (opts and opts[0] != "mid"):
                raise SpecError(f"uniform grid is written uniform<step>[:mid] or uniform@<bits>[:mid], got {token!r}")
            value = float(m.group(2))
            recon = "mid" if opts else "centroid"
            if m.group(1):
                return UniformGrid(target_bits=value, reconstruction=recon)
            return UniformGrid(step=value, reconstruction=recon)
        if m := re.fullmatch(r"pow(" + _NUM + ")", head):
            if not opts or len(opts) > 2 or (len(opts) == 2 and opts[1] != "nearest"):
                raise SpecError(f"power grid is written pow<a>:<bits>[:nearest], got {token!r}")
            return PowerGrid(int(opts[0]), float(m.group(1)), "nearest" if len(opts) == 2 else "companded")
    except SpecError:
        raise
    except ValueError as exc:
        raise SpecError(f"element {token!r} has a malformed number ({exc})") from None
    raise SpecError(f"element {token!r} unknown; valid forms: {'; '.join(ELEMENT_FORMS)}")


def parse_scaling(token: str, *, search: bool = False) -> Scaling:
    """`block32:absmax:bf16`-style scaling, optionally with a super-block part `/super256:fp16`."""
    main, *rest_parts = token.strip().lower().split("/")
    super_size, super_format = None, "fp16"
    if rest_parts:
        m = re.fullmatch(r"super(\d+)(?::(\w+))?", rest_parts[0].strip())
        if len(rest_parts) > 1 or m is None:
            raise SpecError(f"scaling part {'/'.join(rest_parts)!r} unknown; a super-block is written /super<S>[:fp16]")
        super_size, super_format = int(m.group(1)), m.group(2) or "fp16"
    parts = main.split(":")
    gran, rest = parts[0], parts[1:]
    if gran in ("tensor", "channel"):
        granularity, block = gran, None
    elif m := re.fullmatch(r"block(\d+)", gran):
        granularity, block = "block", int(m.group(1))
    else:
        raise SpecError(f"granularity {gran!r} unknown; valid: tensor, channel, block<B> (e.g. block64)")
    rule, scale_format = "absmax", "bf16"
    for part in rest:
        if part in SCALE_RULES:
            rule = part
        else:
            scale_format = part
    try:
        fmt = ScaleFormat(scale_format)
    except SpecError:
        raise SpecError(
            f"scaling part {scale_format!r} is neither a rule ({', '.join(SCALE_RULES)}) nor a scale format "
            "(fp32, fp16, bf16, e8m0, e8m0-rceil, ExMy such as e4m3, or u<b>/i<b> under a super-block)"
        ) from None
    return Scaling(granularity, block, rule, fmt, search, super_size, ScaleFormat(super_format))  # type: ignore[arg-type]


def parse_spec(text: str | FormatSpec) -> FormatSpec:
    """A `FormatSpec` from its string form (or returned unchanged)."""
    if isinstance(text, FormatSpec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"a format spec must be a non-empty string, got {text!r}")
    raw = text.strip()
    if raw.lower() in PRESETS:
        raw = PRESETS[raw.lower()]
    main, *mods = raw.split("+")
    if main.strip().lower() in PRESETS:  # a preset with modifiers, e.g. q4_0+outliers0.001
        main = PRESETS[main.strip().lower()]
    search, outliers, coding = False, None, None
    for mod in mods:
        mod = mod.strip().lower()
        if mod == "search":
            search = True
        elif m := re.fullmatch(r"coded(?::g(\d+))?", mod):
            coding = CodingSpec(int(m.group(1)) if m.group(1) else None)
        elif m := re.fullmatch(r"outliers(" + _NUM + r")(?::(\w+))?", mod):
            outliers = OutlierSpec(float(m.group(1)), ScaleFormat(m.group(2) or "bf16"))
        else:
            raise SpecError(
                f"modifier +{mod} unknown; valid: +search, +outliers<ratio>[:fp16|bf16|fp32], +coded[:g<N>]"
            )
    element_tok, _, scaling_tok = main.partition("/")  # the scaling keeps any /super<S> part
    element = parse_element(element_tok)
    scaling = parse_scaling(scaling_tok or DEFAULT_SCALING, search=search)
    return FormatSpec(element, scaling, outliers, coding)


def preset_name(spec: FormatSpec | str) -> str | None:
    """The preset whose spec this is (the first listed, e.g. `q4_k`), or None."""
    return _preset_names().get(parse_spec(spec).to_string())


_PRESET_NAMES: dict[str, str] = {}


def _preset_names() -> dict[str, str]:
    if not _PRESET_NAMES:
        for name, text in PRESETS.items():
            _PRESET_NAMES.setdefault(parse_spec(text).to_string(), name)
    return _PRESET_NAMES


def fallback_spec(spec: FormatSpec | str, shape: tuple[int, ...]) -> FormatSpec | None:
    """The format llama.cpp would store `shape` as instead of a two-level preset whose super-block does not
    divide its rows (Q4_K → Q5_0, Q6_K → Q8_0, Q2_K/Q3_K/IQ4_XS → IQ4_NL), or None if there is none."""
    name = preset_name(spec)
    fallback = FALLBACKS.get(name or "")
    if fallback is None:
        return None
    cols = math.prod(shape[1:]) if len(shape) > 1 else (shape[0] if shape else 1)
    block = parse_spec(fallback).scaling.block_size or 1
    return parse_spec(fallback) if cols % block == 0 else None
