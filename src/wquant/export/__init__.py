"""Exporters: wquant's stored codes and scales written into the files inference engines read.

An exporter is one module that defines `write(source, out, options) -> ExportReport` and calls
`register_exporter(...)`; `wquant export SOURCE --to NAME --out PATH` finds it here. Every exporter writes the
codes and scales wquant chose (never re-quantizing through another library), refuses formats its target
cannot hold exactly (naming the ones it can), and writes atomically.

    from wquant.export import export
    export("q/", "gguf", "model.gguf")             # a folder saved by `wquant quantize` (or a HF folder)
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from wquant.errors import ParameterError, valid_choices


@dataclass(frozen=True)
class Source:
    """What is exported: a model (quantized with wquant, or not), its tokenizer and where it came from."""

    model: nn.Module
    tokenizer: Any
    path: Path
    quantized: bool


@dataclass(frozen=True)
class ExportedTensor:
    name: str  # name in the exported file
    kind: str  # storage type in that file (GGUF type, "int4 pack-quantized", "F32", ...)
    shape: tuple[int, ...]
    bytes: int


@dataclass(frozen=True)
class ExportReport:
    path: Path
    to: str
    tensors: tuple[ExportedTensor, ...]
    file_bytes: int
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> dict[str, int]:
        """Tensor count per storage type."""
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.kind] = out.get(t.kind, 0) + 1
        return out


Writer = Callable[..., ExportReport]


@dataclass(frozen=True)
class Exporter:
    name: str
    write: Writer  # write(source, out, *, force=False, **options) -> ExportReport
    summary: str
    output: str  # "file" or "folder"


EXPORTERS: dict[str, Exporter] = {}
_MODULES = ("wquant.export.gguf", "wquant.export.compressed_tensors", "wquant.export.gptq")


def register_exporter(name: str, write: Writer, *, summary: str, output: str = "file") -> None:
    """Make `wquant export --to NAME` use `write` (one line per exporter)."""
    key = name.strip().lower()
    if key in EXPORTERS:
        raise ValueError(f"exporter {key!r} is registered twice")
    EXPORTERS[key] = Exporter(key, write, summary, output)


def exporters() -> dict[str, Exporter]:
    for module in _MODULES:
        importlib.import_module(module)
    return EXPORTERS


def load_source(source: str | os.PathLike[str] | Source) -> Source:
    """A folder saved by wquant (quantized) or a Hugging Face model folder / 'minilm' (exported unquantized)."""
    if isinstance(source, Source):
        return source
    from wquant.models import MANIFEST_FILE, load_pretrained, load_quantized, load_tokenizer

    path = Path(source).expanduser()
    if (path / MANIFEST_FILE).is_file():
        return Source(load_quantized(path), load_tokenizer(path), path, True)
    loaded = load_pretrained(source)
    return Source(loaded.model, loaded.tokenizer, loaded.path, False)


def export(
    source: str | os.PathLike[str] | Source, to: str, out: str | os.PathLike[str], *, force: bool = False,
    **options: Any,
) -> ExportReport:  # fmt: skip
    """Write `source` (see `load_source`) as `to` at `out`."""
    table = exporters()
    key = to.strip().lower()
    if key not in table:
        raise ParameterError(f"--to {to!r} unknown; choose from {valid_choices(table)}")
    target = Path(out).expanduser()
    if target.exists() and not force and (target.is_file() or any(target.iterdir())):
        raise ParameterError(f"{target} exists; pass --force to replace it")
    return table[key].write(load_source(source), target, force=force, **options)
