"""The one walker over a model: every distinct weight wquant can quantize, where it is used, in which layout.

A weight is quantizable where an nn.Linear, nn.Embedding or transformers' Conv1D (GPT-2, weight stored
(in, out)) holds it. Tied weights share one Parameter: they form one site listing every module that uses
it, so the weight is quantized once and the tie survives. Conv1D is handled here and only here: `weight()`
gives every site in wquant's (out, in) storage layout. Quantization, Fisher estimation, the study and the
bit accounting all walk a model through `weight_sites`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

#: Module kinds a config can target. "linear" covers nn.Linear and transformers' Conv1D.
TARGET_KINDS = ("linear", "embedding")


def module_kind(module: nn.Module) -> str | None:
    """'linear', 'transposed' (transformers' Conv1D), 'embedding', or None when wquant cannot replace it."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and isinstance(module.weight, torch.Tensor):
        return "transposed"
    return None


def target_of(kind: str) -> str:
    """The target name ("linear" or "embedding") a module kind answers to."""
    return "embedding" if kind == "embedding" else "linear"


@dataclass(frozen=True)
class WeightSite:
    """One distinct quantizable weight.

    path: the first module path using it (named_modules order), which names it (`path.weight`).
    users: every (module path, kind) that uses it; more than one for tied weights.
    foreign: parameter names of other modules (ones wquant cannot replace) that hold the same tensor.
    """

    path: str
    kind: str  # the storage layout: "linear", "transposed" or "embedding"
    users: tuple[tuple[str, str], ...]
    module: nn.Module = field(compare=False, repr=False)
    foreign: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.path}.weight" if self.path else "weight"

    @property
    def targets(self) -> frozenset[str]:
        """The targets every use of the weight answers to (a tied embedding/head needs both)."""
        return frozenset(target_of(kind) for _, kind in self.users)

    def weight(self) -> torch.Tensor:
        """The weight in wquant's storage layout (out, in): Conv1D's (in, out) is transposed."""
        w = self.module.weight.detach()
        return w.t() if self.kind == "transposed" else w


def weight_sites(model: nn.Module, targets: tuple[str, ...] = TARGET_KINDS) -> list[WeightSite]:
    """Distinct quantizable weights whose every use is among `targets`, in module order; a tied weight once."""
    users: dict[int, list[tuple[str, str, nn.Module]]] = {}
    holders: dict[int, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        for pname, param in module.named_parameters(recurse=False):
            holders.setdefault(id(param), []).append(f"{path}.{pname}" if path else pname)
        kind = module_kind(module)
        if kind is not None:
            users.setdefault(id(module.weight), []).append((path, kind, module))
    sites = []
    for weight_id, uses in users.items():
        replaceable = {f"{p}.weight" if p else "weight" for p, _, _ in uses}
        foreign = tuple(sorted(set(holders.get(weight_id, [])) - replaceable))
        path, kind, module = uses[0]
        site = WeightSite(path, kind, tuple((p, k) for p, k, _ in uses), module, foreign)
        if site.targets <= set(targets):
            sites.append(site)
    return sites


def matches(path: str, glob: str) -> bool:
    """A module glob matches the module path or its weight's name (`*` crosses dots, fnmatch)."""
    return fnmatch.fnmatchcase(path, glob) or fnmatch.fnmatchcase(f"{path}.weight", glob)


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at a dotted path (works for ModuleList indices too)."""
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)
