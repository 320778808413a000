"""`--to compressed-tensors`: a Hugging Face folder in the compressed-tensors `pack-quantized` layout (vLLM).

Carries exactly: integer weights of 2–8 bits, symmetric (wquant `int<b>:asym` with absmax/signmax/span/rms
scales: w = scale·q) or asymmetric (`int<b>:unsigned` with integer zero points: w = scale·(q − zero)), per
group of G inputs or per output channel, fp16/bf16/fp32 scales; and MXFP4 (`mxfp4`, e8m0 scales per 32) as
`mxfp4-pack-quantized`. Layout (compressed-tensors ≥ 0.20): `weight_packed` int32 (out, ⌈in·b/32⌉), element i
at bits i·b, stored as q + 2^(b−1); `weight_scale` (out, groups); asymmetric `weight_zero_point` packed the same
way along dim 0; `weight_shape`. Layers with different schemes get one config group each (format
"mixed-precision" when their formats differ). Unquantized Linear layers are listed in `ignore`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wquant.errors import SpecError
from wquant.export import ExportedTensor, ExportReport, Source, register_exporter
from wquant.export.hf_common import (
    IntScheme,
    check_scheme,
    float_state,
    int_fields,
    int_scheme,
    linear_weights,
    pack_dense,
    unquantized_linears,
    write_folder,
)
from wquant.formats import QuantizedTensor, parse_spec
from wquant.formats.grouping import nominal_codebook, view_2d

EXPORTABLE = ("int<b>:asym/block<G>|channel:{absmax,signmax,span,rms}:{fp16,bf16,fp32} (symmetric), "
              "int<b>:unsigned/block<G>|channel:zeropoint:{fp16,bf16,fp32} (asymmetric), b = 2..8; mxfp4")  # fmt: skip
_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_DTYPE_NAMES = {torch.float16: "torch.float16", torch.bfloat16: "torch.bfloat16", torch.float32: "torch.float32"}


def _is_mxfp4(q: QuantizedTensor) -> bool:
    from wquant.export.gguf_types import gguf_type_of

    gtype = gguf_type_of(q.spec)
    return gtype is not None and gtype.name == "MXFP4"


def _int_tensors(q: QuantizedTensor, scheme: IntScheme) -> dict[str, torch.Tensor]:
    fields = int_fields(q, scheme)
    half = 2 ** (scheme.bits - 1)
    out = {
        "weight_packed": torch.from_numpy(pack_dense((fields.q + half).numpy(), scheme.bits)),
        "weight_scale": fields.scale.contiguous(),
        "weight_shape": torch.tensor(list(q.shape), dtype=torch.int64),
    }
    if fields.zero is not None:
        out["weight_zero_point"] = torch.from_numpy(pack_dense((fields.zero + half).T.numpy(), scheme.bits).T.copy())
    return out


def _mxfp4_tensors(q: QuantizedTensor) -> dict[str, torch.Tensor]:
    rows, cols = view_2d(q.shape)
    levels = nominal_codebook(q.spec).levels
    magnitude = np.searchsorted(np.array(_E2M1), np.abs(levels))
    nibble = np.where(levels < 0, 8 + magnitude, magnitude)  # E2M1 bit pattern: sign, exponent, mantissa
    codes = nibble[q.codes.numpy().astype(np.int64)].reshape(rows, cols)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)  # element 2i in the low nibble
    scale = np.asarray(q.scale_codes, dtype=np.uint8).reshape(rows, cols // 32)  # e8m0 exponents
    return {"weight_packed": torch.from_numpy(packed), "weight_scale": torch.from_numpy(scale.copy())}


def scheme_args(q: QuantizedTensor, name: str) -> tuple[dict[str, Any], str]:
    """(compressed-tensors `weights` args, format) of one stored weight; refuses what the layout cannot carry."""
    if _is_mxfp4(q):
        if view_2d(q.shape)[1] % 32:
            raise SpecError(f"{name}: rows of {view_2d(q.shape)[1]} values do not hold whole MXFP4 blocks of 32")
        args = {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "group", "group_size": 32,
                "scale_dtype": "torch.uint8"}  # fmt: skip
        return args, "mxfp4-pack-quantized"
    scheme = check_scheme(q, name, lambda s: True, EXPORTABLE)
    args = {
        "num_bits": scheme.bits, "type": "int", "symmetric": scheme.symmetric,
        "strategy": "group" if scheme.group_size else "channel", "group_size": scheme.group_size,
        "dynamic": False, "actorder": None, "scale_dtype": _DTYPE_NAMES[scheme.scale_dtype],
    }  # fmt: skip
    if not scheme.symmetric:
        args["zp_dtype"] = "torch.int8"
    return args, "pack-quantized"


def write_compressed_tensors(source: Source, out: Path, *, force: bool = False) -> ExportReport:
    """Write `source` as a compressed-tensors folder at `out` (see the module docstring)."""
    model = source.model
    quantized = linear_weights(model)
    tensors = float_state(model)
    groups: dict[str, dict[str, Any]] = {}
    exported: list[ExportedTensor] = []
    for path, q in quantized.items():
        args, fmt = scheme_args(q, f"{path}.weight")
        fields = _mxfp4_tensors(q) if fmt == "mxfp4-pack-quantized" else _int_tensors(q, int_scheme(q.spec))  # type: ignore[arg-type]
        for field, value in fields.items():
            tensors[f"{path}.{field}"] = value
        key = repr((sorted(args.items()), fmt))
        group = groups.setdefault(key, {"targets": [], "weights": args, "input_activations": None,
                                        "output_activations": None, "format": fmt})  # fmt: skip
        group["targets"].append(f"re:^{re.escape(path)}$")
        kind = f"{args['type']}{args['num_bits']} {fmt}"
        exported.append(ExportedTensor(f"{path}.weight", kind, q.shape, sum(v.nbytes for v in fields.values())))
    formats = {g["format"] for g in groups.values()}
    config = {
        "quant_method": "compressed-tensors",
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": {f"group_{i}": g for i, g in enumerate(groups.values())},
        "ignore": [p for p in unquantized_linears(model) if p not in quantized],
    }
    write_folder(source, out, tensors, config, {}, force)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    floats = [ExportedTensor(n, str(t.dtype).removeprefix("torch."), tuple(t.shape), t.nbytes)
              for n, t in float_state(model).items()]  # fmt: skip
    return ExportReport(out, "compressed-tensors", tuple(exported + floats), size)


def exportable(spec: str) -> bool:
    """Whether a spec is carried exactly by this exporter (for docs and the CLI)."""
    parsed = parse_spec(spec)
    return int_scheme(parsed) is not None or parsed.to_string() == parse_spec("mxfp4").to_string()


register_exporter("compressed-tensors", write_compressed_tensors, output="folder",
                  summary="Hugging Face folder, compressed-tensors pack-quantized int / mxfp4 (vLLM)")  # fmt: skip
