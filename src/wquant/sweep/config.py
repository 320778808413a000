"""Sweep configuration (TOML): which grid to run, validated with messages that list the valid keys."""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wquant.errors import ParameterError, SpecError
from wquant.formats import parse_spec

KINDS = ("formats", "theory", "model")
SWEEP_KEYS = {"kind", "seed", "jobs"}
GRID_KEYS = {
    "formats": {"dist": "normal", "formats": None, "bits": [4], "n": 2**18},
    "theory": {
        "bits": [2],
        "widths": [1.0],
        "alpha": [1.5],
        "sigma": [0.01],
        "lam": [0.0],
        "beta": [20.0],
        "quantizer": ["uniform"],
    },  # fmt: skip
    "model": {"model": ["minilm"], "formats": None, "bits": [4], "texts": 64},
}


@dataclass(frozen=True)
class SweepConfig:
    """kind: 'formats', 'theory' or 'model'; grid: the axes (lists) and scalars of that kind."""

    kind: str
    grid: dict[str, Any]
    seed: int = 0
    jobs: int = 1

    def points(self) -> list[dict[str, Any]]:
        """The cartesian product of the list-valued axes; `{bits}` in a format template takes each bit depth."""
        axes = {k: _as_list(v) for k, v in self.grid.items()}
        if self.kind in ("formats", "model"):
            templates = axes.pop("formats")
            bits = axes.pop("bits")
            axes["spec"] = list(dict.fromkeys(t.format(bits=b) for t in templates for b in bits))
        keys = sorted(axes)
        return [dict(zip(keys, combo, strict=True), kind=self.kind, seed=self.seed)
                for combo in itertools.product(*(axes[k] for k in keys))]  # fmt: skip


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _unknown(found: set[str], valid: set[str], where: str) -> None:
    extra = found - valid
    if extra:
        raise ParameterError(f"unknown key(s) {sorted(extra)} in [{where}]; valid keys: {', '.join(sorted(valid))}")


def parse_sweep_config(data: dict[str, Any]) -> SweepConfig:
    sweep = data.get("sweep")
    if not isinstance(sweep, dict):
        raise ParameterError("the sweep config needs a [sweep] table with kind = " + " | ".join(KINDS))
    _unknown(set(data), {"sweep", *KINDS}, "top level")
    _unknown(set(sweep), SWEEP_KEYS, "sweep")
    kind = sweep.get("kind")
    if kind not in KINDS:
        raise ParameterError(f"[sweep] kind = {kind!r} is not one of: {', '.join(KINDS)}")
    table = data.get(kind, {})
    if not isinstance(table, dict):
        raise ParameterError(f"[{kind}] must be a table of grid keys, got {table!r}")
    _unknown(set(table), set(GRID_KEYS[kind]), kind)
    grid = {**GRID_KEYS[kind], **table}
    for key, value in sorted(table.items()):
        if isinstance(value, list) and not value:
            raise ParameterError(f"[{kind}] {key} is empty, so the grid has no points; give {key} at least one value")
    if kind in ("formats", "model"):
        if not grid["formats"]:
            raise ParameterError(f"[{kind}] needs formats = [...] (spec templates, e.g. 'int{{bits}}/block64')")
        for template in _as_list(grid["formats"]):
            if not isinstance(template, str):
                raise ParameterError(f"[{kind}] formats holds {template!r}; give spec templates as strings")
            for b in _as_list(grid["bits"]):
                try:
                    parse_spec(template.format(bits=b))
                except (SpecError, KeyError, IndexError) as exc:
                    raise ParameterError(f"[{kind}] format {template!r} at bits={b}: {exc}") from None
    seed, jobs = sweep.get("seed", 0), sweep.get("jobs", 1)
    if not isinstance(seed, int) or not isinstance(jobs, int) or jobs < 1:
        raise ParameterError("[sweep] seed must be an integer and jobs a positive integer")
    return SweepConfig(kind, grid, seed, jobs)


def load_sweep_config(path: str | Path) -> SweepConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParameterError(f"sweep config {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ParameterError(f"sweep config {path} is not valid TOML: {exc}") from None
    return parse_sweep_config(data)
