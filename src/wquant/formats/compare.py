"""Compare formats on one tensor: all-in bits/param, distortion, and distance to the rate–distortion bound."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wquant.errors import ParameterError, SpecError, TensorError, WquantError
from wquant.formats.quantize import quantize
from wquant.formats.spec import FormatSpec, parse_spec
from wquant.limits import gap_to_bound_bits
from wquant.validation import check_int_range, check_tensor

#: Samples handed to Blahut–Arimoto when the bound has no closed form (0.1 s a point; 2^16 points resolve
#: the empirical R(D) well below the distortions of 2–8 bit formats).
BOUND_SAMPLE_CAP = 2**16


@dataclass(frozen=True)
class FormatReport:
    """One format on one tensor. rel_mse = ‖x̂ − x‖² / ‖x‖²; gap_bits = bits/param − R(D) of the source."""

    spec: str
    bits_per_param: float
    rel_mse: float
    sqnr_db: float
    gap_bits: float


def sample_source(dist: str, n: int, seed: int = 0) -> torch.Tensor:
    """Unit-variance iid samples of 'normal', 'laplace' or 't:ν', shaped (n/1024, 1024) like a weight matrix."""
    n = check_int_range(n, "n", 1024, 2**26)
    rows = n // 1024
    gen = torch.Generator().manual_seed(seed)
    if dist == "normal":
        return torch.randn(rows, 1024, generator=gen)
    uniform = torch.rand(rows, 1024, generator=gen, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    if dist == "laplace":  # inverse CDF: unit variance means scale 1/√2
        centred = uniform - 0.5
        return (-torch.sign(centred) * torch.log1p(-2 * centred.abs()) / math.sqrt(2)).float()
    if m := re.fullmatch(r"t:([0-9.]+)", dist):
        nu = float(m.group(1))
        if nu <= 2:
            raise ParameterError(f"Student-t source needs nu > 2 for unit variance, got {nu}")
        from scipy import stats

        values = stats.t.ppf(uniform.numpy(), nu) * math.sqrt((nu - 2) / nu)
        return torch.from_numpy(values).float()
    raise ParameterError(f"distribution {dist!r} unknown; valid: normal, laplace, t:<nu>, FILE.safetensors:TENSOR")


def load_tensor(ref: str) -> torch.Tensor:
    """'file.safetensors:name' → that tensor (read lazily, nothing else is loaded)."""
    from safetensors import safe_open

    path_str, sep, name = ref.rpartition(":")
    path = Path(path_str)
    if not sep or not path.is_file():
        raise TensorError(f"{ref!r}: expected an existing FILE.safetensors:TENSOR")
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            if name not in names:
                raise TensorError(f"{path} has no tensor {name!r}; it has: {', '.join(names[:20])}")
            return handle.get_tensor(name)
    except WquantError:
        raise
    except (OSError, ValueError) as exc:  # safetensors raises these on a corrupt header
        raise TensorError(f"{path} is not a readable safetensors file ({exc})") from None


def standard_formats(bits: int) -> list[str]:
    """A representative set of formats at `bits` element bits (fixed tables added where they exist)."""
    check_int_range(bits, "bits", 2, 8)
    specs = [
        f"uniform@{bits}/tensor:rms:bf16+coded",
        f"int{bits}/block64:absmax:bf16",
        f"int{bits}:unsigned/block64:minmax:bf16",
        f"int{bits}/channel:absmax:bf16+search",
        f"crd-normal:{bits}/block64:absmax:bf16",
        f"crd-t5:{bits}/tensor:rms:bf16+outliers0.0009765625",
        f"lloydmax:{bits}/tensor:rms:bf16",
        f"pow0.75:{bits}/block64:absmax:bf16",
    ]
    specs += {4: ["nf4", "sf4/block64:absmax:bf16", "mxfp4", "nvfp4"], 6: ["mxfp6"], 8: ["mxfp8", "mxint8"]}.get(
        bits, []
    )
    return specs


def bound_samples(x: torch.Tensor) -> np.ndarray:
    """The values Blahut–Arimoto sees for the tensor's own bound: a seeded 2^16 subsample at unit mean square."""
    flat = x.detach().reshape(-1).double().numpy()
    if flat.size > BOUND_SAMPLE_CAP:
        flat = flat[np.random.default_rng(0).choice(flat.size, BOUND_SAMPLE_CAP, replace=False)]
    return flat / math.sqrt(float(np.mean(flat**2)))


def compare_formats(x: torch.Tensor, specs: list[str | FormatSpec], source: str | None = None) -> list[FormatReport]:
    """Quantize `x` with each spec and measure it against R(D).

    source="normal" uses the Gaussian's closed form at the tensor's variance; any other source (or None)
    uses Blahut–Arimoto on the tensor's own values (a 2^16 subsample), i.e. the empirical law of x.
    """
    x = check_tensor(x, "tensor to compare on")
    if not specs:
        raise SpecError("no formats to compare; pass at least one spec")
    x32 = x.detach().float()
    energy = float(x32.square().sum())
    if energy == 0:
        raise TensorError("the tensor is all zeros; its relative error is undefined")
    bound_source: str | np.ndarray = "normal" if source == "normal" else bound_samples(x32)
    reports = []
    for spec in specs:
        fmt = parse_spec(spec)
        q = quantize(x32, fmt)
        rel = float((q.dequantize() - x32).square().sum()) / energy
        bpp = q.bits_per_param()
        gap = gap_to_bound_bits(bpp, rel, bound_source) if rel > 0 else float("nan")
        sqnr = -10 * math.log10(rel) if rel > 0 else float("inf")
        reports.append(FormatReport(q.spec.to_string(), bpp, rel, sqnr, gap))
    return reports
