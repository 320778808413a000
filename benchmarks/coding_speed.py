"""Speed of wquant's entropy-coding container against constriction's bare ANS on the same codes.

A 4096×4096 tensor of 4-bit codes from a quantized N(0,1) (a realistic, skewed distribution) is encoded
and decoded; our overhead over the raw coder is the histogram, the stored table, the container and the
crc32. Prints a markdown table and, with --write, replaces the "## Entropy coding" section of
BENCHMARKS.md (other sections are left as they are).

    python benchmarks/coding_speed.py [--repeats 7] [--write]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import constriction
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, median_time, replace_section  # noqa: E402

from wquant.formats.coding import coded_size, decode_codes, encode_codes  # noqa: E402

SECTION = "Entropy coding"
TARGET_ENCODE_MSYM_S = 50.0


def four_bit_gaussian_codes(side: int = 4096, seed: int = 0) -> np.ndarray:
    """Round N(0,1)/step to 16 levels −8…7, step near the MSE-optimal uniform 4-bit one (0.335)."""
    x = np.random.default_rng(seed).standard_normal((side, side))
    return np.clip(np.round(x / 0.335), -8, 7).astype(np.int8)


def raw_constriction(codes: np.ndarray) -> tuple[Callable[[], object], Callable[[], object], int]:
    """Bare ANS with a model precomputed outside the timed region: the coder's own ceiling."""
    symbols = (codes.reshape(-1).astype(np.int32) + 8).astype(np.int32)
    counts = np.bincount(symbols, minlength=16).astype(np.float64)
    model = constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols, model)
    words = coder.get_compressed()

    def encode() -> object:
        ans = constriction.stream.stack.AnsCoder()
        ans.encode_reverse(symbols, model)
        return ans.get_compressed()

    def decode() -> object:
        return constriction.stream.stack.AnsCoder(words).decode(model, symbols.size)

    return encode, decode, 32 * words.size


def run(repeats: int) -> tuple[list[tuple[str, float, float, float]], dict[str, float]]:
    codes = four_bit_gaussian_codes()
    n = codes.size
    data = encode_codes(codes)
    assert np.array_equal(decode_codes(data), codes), "round trip failed"
    size = coded_size(data)
    _, counts = np.unique(codes, return_counts=True)
    entropy_bits = float(-(counts * np.log2(counts / n)).sum())

    raw_encode, raw_decode, raw_bits = raw_constriction(codes)
    ours_enc = median_time(lambda: encode_codes(codes), repeats)
    ours_dec = median_time(lambda: decode_codes(data), repeats)
    raw_enc = median_time(raw_encode, repeats)
    raw_dec = median_time(raw_decode, repeats)
    rows = [
        ("encode", n / ours_enc[0] / 1e6, n / raw_enc[0] / 1e6, raw_enc[0] / ours_enc[0]),
        ("decode", n / ours_dec[0] / 1e6, n / raw_dec[0] / 1e6, raw_dec[0] / ours_dec[0]),
    ]
    sizes = {
        "n": n,
        "entropy_bps": entropy_bits / n,
        "payload_bps": size.payload_bits / n,
        "total_bps": size.total_bits / n,
        "raw_bps": raw_bits / n,
        "table_bits": size.table_bits,
        "overhead_bits": size.header_bits + size.padding_bits + size.checksum_bits,
    }
    return rows, sizes


def markdown(rows: list[tuple[str, float, float, float]], sizes: dict[str, float], repeats: int) -> str:
    env = f"{machine_line()}, numpy {np.__version__}, constriction {version('constriction')}"
    lines = [
        f"`python benchmarks/coding_speed.py --write` on {env}. 4096×4096 int8 codes of a quantized N(0,1) "
        f"(16 levels, step 0.335), median of {repeats} repeats. Target: encode ≥ {TARGET_ENCODE_MSYM_S:g} "
        "M symbols/s. *raw* = constriction's AnsCoder alone with a precomputed model; *ours* adds the "
        "histogram, count quantization, table, container and crc32.",
        "",
        "| operation | ours M sym/s | raw constriction M sym/s | ratio ours/raw |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {op} | {ours:.1f} | {raw:.1f} | {ratio:.2f} |" for op, ours, raw, ratio in rows]
    lines += [
        "",
        "| size (bits/symbol) | value |",
        "|---|---:|",
        f"| empirical entropy H(p̂) | {sizes['entropy_bps']:.5f} |",
        f"| ANS payload | {sizes['payload_bps']:.5f} |",
        f"| whole container (payload + {sizes['table_bits']} table bits + "
        f"{sizes['overhead_bits']} header/padding/crc bits) | {sizes['total_bps']:.5f} |",
        f"| raw constriction payload | {sizes['raw_bps']:.5f} |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    args = parser.parse_args()
    rows, sizes = run(max(5, args.repeats))
    section = markdown(rows, sizes, max(5, args.repeats))
    print(section)
    if args.write:
        replace_section(SECTION, section)


if __name__ == "__main__":
    main()
