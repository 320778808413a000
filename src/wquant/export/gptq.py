"""`--to gptq`: a Hugging Face folder in the GPTQ v1 checkpoint layout (AutoGPTQ/GPTQModel, transformers, vLLM).

Carries exactly: 2-, 4- or 8-bit integer weights with fp16 scales per group of G inputs (or per output
channel: group_size −1), symmetric (wquant `int<b>:asym` with a scale-only rule: zero 2^(b−1)) or with integer
zero points (`int<b>:unsigned/...:zeropoint:fp16`, e.g. the `gptq-int4-g128` preset). Layout: `qweight` int32
(in·b/32, out) packed along the input dim (value t of a word at bits b·t); `qzeros` int32 (groups, out·b/32)
holding zero − 1 (the v1 convention); `scales` fp16 (groups, out); `g_idx` int32 (in) = i // G. A zero point of
0 has no v1 form (it would be stored as −1 and read back as 2^b), so such a tensor is refused. Layers whose
scheme differs from the most common one are listed in quantize_config's `dynamic` overrides (GPTQModel),
unquantized ones as `-:` exclusions.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from wquant.errors import SpecError
from wquant.export import ExportedTensor, ExportReport, Source, register_exporter
from wquant.export.hf_common import (
    IntScheme,
    check_scheme,
    float_state,
    int_fields,
    linear_weights,
    unquantized_linears,
    write_folder,
)
from wquant.formats import QuantizedTensor

EXPORTABLE = ("int<b>:asym/block<G>|channel:{absmax,signmax,span,rms}:fp16 (sym), "
              "int<b>:unsigned/block<G>|channel:zeropoint:fp16 (e.g. gptq-int4-g128), b = 2, 4, 8")  # fmt: skip


def _accepts(scheme: IntScheme) -> bool:
    return scheme.bits in (2, 4, 8) and scheme.scale_dtype == torch.float16


def _pack_columns(values: np.ndarray, bits: int) -> np.ndarray:
    """(n, m) unsigned b-bit values → (n·b/32, m) int32: rows packed 32/b to a word, row t of a word at bits b·t."""
    per = 32 // bits
    n, m = values.shape
    words = values.astype(np.uint64).reshape(n // per, per, m) << (bits * np.arange(per, dtype=np.uint64))[:, None]
    return words.sum(axis=1).astype(np.uint32).view(np.int32)


def gptq_tensors(q: QuantizedTensor, scheme: IntScheme, name: str) -> dict[str, torch.Tensor]:
    fields = int_fields(q, scheme)
    half, mask = 2 ** (scheme.bits - 1), 2**scheme.bits - 1
    rows, cols = fields.q.shape
    per = 32 // scheme.bits
    if cols % per or rows % per:
        raise SpecError(f"{name}: GPTQ packs {per} values per int32; shape {tuple(q.shape)} does not divide")
    zero = torch.full_like(fields.scale, half, dtype=torch.int32) if fields.zero is None else fields.zero + half
    if bool((zero == 0).any()):
        g = int((zero == 0).nonzero()[0, 1])
        raise SpecError(f"{name}: a zero point of 0 (group {g}) has no GPTQ v1 form (v1 stores zero − 1); export "
                        "with --to compressed-tensors, or quantize symmetric")  # fmt: skip
    group = scheme.group_size or cols
    qweight = _pack_columns((fields.q + half).numpy().T, scheme.bits)  # (in·b/32, out)
    qzeros = _pack_columns(((zero - 1) & mask).numpy(), scheme.bits).T  # pack along out: (groups, out·b/32)
    return {
        "qweight": torch.from_numpy(qweight.copy()),
        "qzeros": torch.from_numpy(np.ascontiguousarray(qzeros)),
        "scales": fields.scale.T.contiguous().to(torch.float16),
        "g_idx": torch.arange(cols, dtype=torch.int32) // group,
    }


def _scheme_config(scheme: IntScheme) -> dict[str, object]:
    return {"bits": scheme.bits, "group_size": scheme.group_size or -1, "sym": scheme.symmetric}


def write_gptq(source: Source, out: Path, *, force: bool = False) -> ExportReport:
    """Write `source` as a GPTQ v1 folder at `out` (see the module docstring)."""
    model = source.model
    quantized = linear_weights(model)
    if not quantized:
        raise SpecError("the model has no quantized Linear layer to export as GPTQ")
    tensors = float_state(model)
    schemes: dict[str, IntScheme] = {}
    exported: list[ExportedTensor] = []
    for path, q in quantized.items():
        scheme = check_scheme(q, f"{path}.weight", _accepts, EXPORTABLE)
        schemes[path] = scheme
        fields = gptq_tensors(q, scheme, f"{path}.weight")
        for field, value in fields.items():
            tensors[f"{path}.{field}"] = value
        kind = f"gptq int{scheme.bits} g{scheme.group_size or -1}{' sym' if scheme.symmetric else ''}"
        exported.append(ExportedTensor(f"{path}.weight", kind, q.shape, sum(v.nbytes for v in fields.values())))
    base = Counter(s.key for s in schemes.values()).most_common(1)[0][0]
    base_scheme = next(s for s in schemes.values() if s.key == base)
    dynamic: dict[str, dict[str, object]] = {
        f"+:^{re.escape(p)}$": _scheme_config(s) for p, s in schemes.items() if s.key != base
    }
    dynamic |= {f"-:^{re.escape(p)}$": {} for p in unquantized_linears(model) if p not in quantized}
    config: dict[str, object] = {
        **_scheme_config(base_scheme), "desc_act": False, "static_groups": False, "true_sequential": True,
        "quant_method": "gptq", "checkpoint_format": "gptq", "quantizer": ["wquant"],
    }  # fmt: skip
    if dynamic:
        config["dynamic"] = dynamic
    write_folder(source, out, tensors, config, {"quantize_config.json": json.dumps(config, indent=1)}, force)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return ExportReport(out, "gptq", tuple(exported), size)


SUMMARY = "Hugging Face folder, GPTQ v1 layout + quantize_config.json (2/4/8-bit, fp16 scales)"
register_exporter("gptq", write_gptq, output="folder", summary=SUMMARY)
