"""The one native routine: decode fixed-width packed codes through a per-group table, straight from the bytes.

out[r, c] = levels[code(r, c)] · scale[r, group(c)] (+ offset[r, group(c)]), in float32, with the code read from
the LSB-first bit stream `QuantizedTensor` stores (element i at bit i·width). Codes of at most 4 bits decode
through a 16-entry table scaled once per group (two 8-wide permutes per 16 codes under AVX2), 8-bit codes
through a gather; other widths bit by bit. Each value is one float32 multiply (and one add) of the same operands
the reference multiplies, and the file is built with `-ffp-contract=off`, so the result is bit-identical to
`QuantizedTensor.dequantize()`.

Eager torch cannot fuse unpack → look-up → scale (each op is another pass over the weight: 0.6× bitsandbytes'
dequantize, against 1.3–1.8× for this loop on layer-sized tensors, BENCHMARKS.md), so the C source below is
compiled once with the system C compiler into `~/.cache/wquant/kernels/` and called through ctypes (the GIL is
released during the call; rows are split across `torch.get_num_threads()` threads; outputs of `STREAM_MIN`
values or more are written with streaming stores, which skip the read-for-ownership of lines that would not stay
in cache). It is optional: without a compiler, or with `WQUANT_NATIVE=0`, `library()` is None and the kernels
use their eager torch path, which gives the same bits, slower.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import torch

SOURCE = r"""
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

/* code of element i (bit i*width of the stream); width <= 16, so it spans at most 3 bytes */
static inline uint32_t code_at(const uint8_t* codes, int64_t nbytes, int64_t i, int64_t width, uint32_t mask) {
    int64_t bit = i * width, byte = bit >> 3;
    uint32_t word = codes[byte];
    if (byte + 1 < nbytes) word |= (uint32_t)codes[byte + 1] << 8;
    if (byte + 2 < nbytes) word |= (uint32_t)codes[byte + 2] << 16;
    return (word >> (bit & 7)) & mask;
}

/* rows [r0, r1) of a rows x cols matrix; groups of `block` columns; scale of (r, g) at scales[r*srow + g]
   (srow 0: one scale for all rows); offsets NULL or indexed like scales; levels has 2^width entries */
void wq_decode(const uint8_t* codes, int64_t nbytes, int64_t width, int64_t cols, int64_t r0, int64_t r1,
               int64_t block, const float* levels, const float* scales, const float* offsets, int64_t srow,
               float* out, int64_t stream) {
    const uint32_t mask = (uint32_t)((1u << width) - 1u);
    const int64_t groups = (cols + block - 1) / block;
    const int aligned4 = width == 4 && (cols & 1) == 0;
    for (int64_t r = r0; r < r1; r++) {
        float* o = out + r * cols;
        for (int64_t g = 0; g < groups; g++) {
            const float s = scales[r * srow + g];
            const float z = offsets ? offsets[r * srow + g] : 0.0f;
            const int64_t j0 = g * block, j1 = j0 + block < cols ? j0 + block : cols;
            int64_t j = j0;
            if (width <= 4) {
                float t[16];
                for (uint32_t k = 0; k <= mask; k++) {
                    float v = levels[k] * s;
                    t[k] = offsets ? v + z : v;
                }
                if (aligned4) {
                    const uint8_t* row = codes + r * (cols / 2);
#if defined(__AVX2__)
                    if ((j & 1) == 0 && j + 16 <= j1) {
                        const __m256 tlo = _mm256_loadu_ps(t), thi = _mm256_loadu_ps(t + 8);
                        const __m128i low4 = _mm_set1_epi8(15);
                        for (; j + 16 <= j1; j += 16) {
                            __m128i b = _mm_loadl_epi64((const __m128i*)(row + (j >> 1)));
                            __m128i lo = _mm_and_si128(b, low4);
                            __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
                            __m128i e = _mm_unpacklo_epi8(lo, hi); /* codes j .. j+15 in order */
                            __m256i i0 = _mm256_cvtepu8_epi32(e);
                            __m256i i1 = _mm256_cvtepu8_epi32(_mm_srli_si128(e, 8));
                            __m256 v0 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, i0),
                                                         _mm256_permutevar8x32_ps(thi, i0),
                                                         _mm256_castsi256_ps(_mm256_slli_epi32(i0, 28)));
                            __m256 v1 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, i1),
                                                         _mm256_permutevar8x32_ps(thi, i1),
                                                         _mm256_castsi256_ps(_mm256_slli_epi32(i1, 28)));
                            if (stream && (((uintptr_t)(o + j)) & 31) == 0) {
                                _mm256_stream_ps(o + j, v0); /* bypass the cache: no read-for-ownership */
                                _mm256_stream_ps(o + j + 8, v1);
                            } else {
                                _mm256_storeu_ps(o + j, v0);
                                _mm256_storeu_ps(o + j + 8, v1);
                            }
                        }
                    }
#endif
                    for (; j < j1; j++) {
                        uint8_t b = row[j >> 1];
                        o[j] = t[(j & 1) ? (b >> 4) : (b & 15)];
                    }
                } else {
                    for (; j < j1; j++) o[j] = t[code_at(codes, nbytes, r * cols + j, width, mask)];
                }
            } else if (width == 8) {
                const uint8_t* row = codes + r * cols;
#if defined(__AVX2__)
                const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z);
                for (; j + 8 <= j1; j += 8) {
                    __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(row + j)));
                    __m256 v = _mm256_mul_ps(_mm256_i32gather_ps(levels, idx, 4), vs);
                    _mm256_storeu_ps(o + j, offsets ? _mm256_add_ps(v, vz) : v);
                }
#endif
                for (; j < j1; j++) {
                    float v = levels[row[j]] * s;
                    o[j] = offsets ? v + z : v;
                }
            } else {
                for (; j < j1; j++) {
                    float v = levels[code_at(codes, nbytes, r * cols + j, width, mask)] * s;
                    o[j] = offsets ? v + z : v;
                }
            }
        }
    }
#if defined(__AVX2__)
    if (stream) _mm_sfence(); /* streamed stores visible before the caller reads them */
#endif
}
"""

_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_ARGS = [_PTR, _I64, _I64, _I64, _I64, _I64, _I64, _PTR, _PTR, _PTR, _I64, _PTR, _I64]
#: Elements below which one thread decodes the whole tensor (thread hand-off costs more than it saves).
PARALLEL_MIN = 1 << 18
#: Outputs of at least this many values are written with streaming stores (they would not stay in cache anyway).
STREAM_MIN = 1 << 22
MAX_WIDTH = 16


def _flags() -> list[str]:
    flags = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags.append("-mavx2")  # no -mfma: a fused multiply-add would round differently from the reference
    return flags


def _cache_dir() -> Path:
    base = os.environ.get("WQUANT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "wquant")
    return Path(base) / "kernels"


@cache
def library() -> ctypes.CDLL | None:
    """The compiled decoder (built on first use, then cached on disk), or None when it cannot be had."""
    if os.environ.get("WQUANT_NATIVE", "1") == "0" or sys.byteorder != "little":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None
    flags = _flags()
    key = hashlib.sha256((SOURCE + " ".join(flags) + compiler).encode()).hexdigest()[:16]
    target = _cache_dir() / f"wq_decode-{key}.so"
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                src = Path(tmp) / "wq_decode.c"
                src.write_text(SOURCE)
                built = Path(tmp) / target.name
                subprocess.run([compiler, *flags, str(src), "-o", str(built)], check=True, capture_output=True,
                               timeout=120)  # fmt: skip
                os.replace(built, target)  # atomic: a concurrent build writes the same bytes
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError):
        return None
    lib.wq_decode.argtypes = _ARGS
    lib.wq_decode.restype = None
    return lib


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wquant-decode")


def decode(
    codes: torch.Tensor, width: int, rows: int, cols: int, block: int, levels: torch.Tensor, scales: torch.Tensor,
    offsets: torch.Tensor | None, out: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """Fill `out` (rows × cols float32, contiguous) from packed codes; see the module docstring.

    levels: float32 with 2^width entries; scales/offsets: float32 (rows, groups) or (1, groups) for one shared
    row of scales. The caller guarantees the sizes; `library()` must not be None.
    """
    lib = library()
    assert lib is not None and out.is_contiguous() and out.dtype == torch.float32
    assert levels.numel() == 1 << width and codes.dtype == torch.uint8 and width <= MAX_WIDTH
    codes, levels, scales = codes.contiguous(), levels.contiguous(), scales.contiguous()
    offsets = None if offsets is None else offsets.contiguous()
    srow = 0 if scales.shape[0] == 1 else scales.shape[1]
    args = (codes.data_ptr(), codes.numel(), width, cols)
    stream = int(rows * cols >= STREAM_MIN)
    tail = (block, levels.data_ptr(), scales.data_ptr(), 0 if offsets is None else offsets.data_ptr(), srow,
            out.data_ptr(), stream)  # fmt: skip
    threads = min(torch.get_num_threads(), rows)
    if threads <= 1 or rows * cols < PARALLEL_MIN:
        lib.wq_decode(*args, 0, rows, *tail)
        return out
    bounds = [rows * i // threads for i in range(threads + 1)]
    jobs = [
        _pool(threads).submit(lib.wq_decode, *args, lo, hi, *tail) for lo, hi in zip(bounds, bounds[1:], strict=False)
    ]
    for job in jobs:
        job.result()
    return out
