"""Compare formats on one tensor: all-in bits/param, distortion, and distance to the rate–distortion bound."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wquant.errors import (
    BudgetError,
    CorruptDataError,
    ParameterError,
    ScaleRangeError,
    SpecError,
    TensorError,
    WquantError,
)
from wquant.formats.quantize import quantize
from wquant.formats.rd_bounds import gap_to_bound_bits
from wquant.formats.spec import FormatSpec, parse_spec
from wquant.validation import check_int_range, check_tensor

#: Samples handed to Blahut–Arimoto when the bound has no closed form (0.1 s a point; 2^16 points resolve
#: the empirical R(D) well below the distortions of 2–8 bit formats).
BOUND_SAMPLE_CAP = 2**16
#: Tensors with an RMS beyond 2^±MAGNITUDE_BITS are also quantized at unit RMS, to tell a format whose scales
#: cannot reach them from one that is merely coarse (fp16 scales overflow near 1e5 and lose precision below 1e-5).
MAGNITUDE_BITS = 10


@dataclass(frozen=True)
class FormatReport:
    """One format on one tensor. rel_mse = ‖x̂ − x‖² / ‖x‖²; gap_bits = bits/param − R(D) of the source."""

    spec: str
    bits_per_param: float
    rel_mse: float
    sqnr_db: float
    gap_bits: float
    problem: str = ""  # set when the format cannot represent this tensor; the numbers then show the failure


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
    from safetensors import SafetensorError, safe_open

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
    except OSError as exc:
        raise TensorError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (SafetensorError, ValueError, TypeError) as exc:  # a damaged header or data section
        reason = " ".join(str(exc).split())[:200]
        raise CorruptDataError(
            f"{path} is not a valid safetensors file ({reason}); re-create it from its source"
        ) from None


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
    flat = flat / np.abs(flat).max()  # first to O(1): squares of 1e200 would overflow even float64
    return flat / math.sqrt(float(np.mean(flat**2)))


def relative_error(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """‖x̂ − x‖² / ‖x‖² in float64, both divided by max|x| first: the same value at any magnitude, and NaN
    only when x̂ itself is not finite."""
    ref = x.detach().double().reshape(-1)
    approx = x_hat.detach().double().reshape(-1)
    if not bool(torch.isfinite(approx).all()):
        return float("nan")
    peak = ref.abs().max()
    return float(((approx - ref) / peak).square().sum() / (ref / peak).square().sum())


def unit_scale(x: torch.Tensor) -> float | None:
    """A power of two bringing x to about unit RMS when it is far from it (beyond 2^±MAGNITUDE_BITS), else None.

    Scaling by a power of two is exact, and formats with floating-point scales are then equivariant, so a
    format that does much worse on x than on x·unit_scale(x) cannot cover x's magnitude.
    """
    flat = x.detach().double().reshape(-1)
    peak = float(flat.abs().max())
    rms = peak * math.sqrt(float((flat / peak).square().mean()))
    exponent = round(math.log2(rms))
    return 2.0**-exponent if abs(exponent) > MAGNITUDE_BITS else None


def compare_formats(x: torch.Tensor, specs: list[str | FormatSpec], source: str | None = None) -> list[FormatReport]:
    """Quantize `x` with each spec and measure it against R(D).

    source="normal" uses the Gaussian's closed form at the tensor's variance; any other source (or None)
    uses Blahut–Arimoto on the tensor's own values (a 2^16 subsample), i.e. the empirical law of x.
    """
    x = check_tensor(x, "tensor to compare on")
    if not specs:
        raise SpecError("no formats to compare; pass at least one spec")
    peak = float(x.detach().abs().max())
    if peak == 0:
        raise TensorError("the tensor is all zeros; its relative error is undefined")
    if peak > torch.finfo(torch.float32).max:
        raise TensorError(f"the tensor reaches {peak:.3g}, beyond float32 (formats quantize in float32); rescale it")
    x32 = x.detach().float()
    unit = unit_scale(x32)
    bound_source: str | np.ndarray = "normal" if source == "normal" else bound_samples(x32)
    reports = []
    for spec in specs:
        fmt = parse_spec(spec)
        try:
            q = quantize(x32, fmt)
        except BudgetError as exc:
            if unit is None:
                raise
            nan = float("nan")
            problem = f"cannot meet its budget at this magnitude (max |x| {peak:.3g}): {exc}"
            reports.append(FormatReport(fmt.to_string(), nan, nan, nan, nan, problem))
            continue
        except ScaleRangeError as exc:  # quantize refuses what its scales cannot store; compare names it
            nan = float("nan")
            problem = f"it cannot represent this magnitude (max |x| {peak:.3g}): {exc}"
            reports.append(FormatReport(fmt.to_string(), nan, nan, nan, nan, problem))
            continue
        rel = relative_error(q.dequantize(), x32)
        bpp = q.bits_per_param()
        measured = math.isfinite(rel) and rel > 0
        gap = gap_to_bound_bits(bpp, rel, bound_source) if measured else float("nan")
        sqnr = -10 * math.log10(rel) if measured else float("inf") if rel == 0 else float("nan")
        reports.append(FormatReport(q.spec.to_string(), bpp, rel, sqnr, gap, _range_problem(fmt, x32, rel, unit, peak)))
    return reports


def _range_problem(fmt: FormatSpec, x32: torch.Tensor, rel: float, unit: float | None, peak: float) -> str:
    """Why `fmt` cannot represent x (its reconstruction overflows, or it fails at x's magnitude but not at unit
    scale), or "" when it can. The root cause is the format's scale range, which quantize() does not report."""
    if not math.isfinite(rel):
        return f"its reconstruction overflows to inf/NaN at this magnitude (max |x| {peak:.3g})"
    if unit is None:
        return ""
    reference = relative_error(quantize(x32 * unit, fmt).dequantize(), x32 * unit)
    if rel > 2 * reference + 1e-6:
        return (
            f"it cannot represent this magnitude (max |x| {peak:.3g}; its scales or stored values run out of range): "
            f"relative MSE {rel:.3g} here vs {reference:.3g} on the same tensor scaled by a power of two to unit RMS"
        )
    return ""
