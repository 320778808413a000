"""Shared by every benchmark script: medians of repeated timings, the machine line, BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from wquant.io import write_atomic

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def median_time(fn: Callable[[], object], repeats: int, *, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of `fn` over `repeats` runs (after `warmup` untimed runs), and all the times."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def machine_line() -> str:
    """What the numbers were measured on, including the load at the time (other processes skew timings)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()}-core {platform.machine()} CPU, Python {platform.python_version()}, load avg {load:.1f}"


def replace_section(title: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Put `## title` + body into BENCHMARKS.md, replacing that section only; atomic (temp file + rename)."""
    header = f"## {title}"
    section = f"{header}\n\n{body.strip()}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == header), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "\n".join(lines[end:])
        new = "\n".join(lines[:start]) + "\n" + section + ("\n" + tail if tail else "")
    write_atomic(path, new.rstrip("\n") + "\n")
