"""Save and load quantized models: safetensors + a self-checked JSON manifest, no pickle, no remote code.

Layout of a saved folder:
    wquant-model.safetensors   the model's state dict: every parameter and buffer, quantized weights as the
                               packed uint8 fields of their PackedWeight (`<module>.qweight.codes`, ...)
    wquant-manifest.json       {"body": {...}, "sha256": sha256 of the body's canonical JSON}
    tokenizer files            when a tokenizer is given (plain JSON/text, loaded by transformers)

The body records each packed weight's layout (format spec, shape, dtype, bits), which modules use it (and the
activation spec of a module that quantizes its input; a static activation scale is a stored parameter),
dtype/shape/sha256 of every stored tensor, the sha256 of the whole safetensors file, tied names, the base
model's config, the wquant version and the format version. Loading checks all of it before building
anything, so a flipped byte, a truncated file or a different format version is refused with CorruptDataError.
Each file is written to a temporary name and moved into place with os.replace; the manifest goes last and
commits the save.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import wquant
from wquant.errors import CorruptDataError, ParameterError, WquantError
from wquant.formats import QuantizedTensor, parse_spec
from wquant.formats.quantized import FIELDS
from wquant.io import atomic_write, check_output_folder, file_mode, replace_folder, staging_folder
from wquant.models.activations import InputQuantizer
from wquant.models.bits import model_bits
from wquant.models.hf import check_fits_in_memory
from wquant.models.layers import PackedWeight, QuantizedEmbedding, QuantizedLinear, packed_weights, quantized_modules
from wquant.models.sites import set_submodule

FORMAT_NAME = "wquant-quantized-model"
FORMAT_VERSION = 2  # 2: packed state dict (1: one to_bytes() stream per quantized weight)
MANIFEST_FILE = "wquant-manifest.json"
TENSORS_FILE = "wquant-model.safetensors"
_MAX_MANIFEST_BYTES = 256 * 2**20
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool,
)}  # fmt: skip


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensor_sha256(tensor: torch.Tensor) -> str:
    """Hash of a tensor's raw little-endian bytes (dtype-agnostic: viewed as bytes, never converted)."""
    flat = tensor.detach().contiguous().reshape(-1)
    return _sha256(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _save_tokenizer(tokenizer: Any, out: Path) -> None:
    """Write the tokenizer's files beside the model, each moved into place atomically."""
    with tempfile.TemporaryDirectory(prefix=".tokenizer.", dir=out) as staging:
        tokenizer.save_pretrained(staging)
        for file in Path(staging).iterdir():
            if file.is_file():
                os.chmod(file, file_mode())
                os.replace(file, out / file.name)


def _base_config(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    data = config.to_dict()
    if not data.get("architectures"):
        data["architectures"] = [type(model).__name__]
    return json.loads(json.dumps(data, default=str))  # JSON-safe (dtypes etc. become strings)


def save_quantized(
    model: nn.Module, out_dir: str | os.PathLike[str], *, tokenizer: Any = None, force: bool = False
) -> Path:
    """Write `model` (quantized with quantize_, or not) to `out_dir`; returns the folder.

    A non-empty `out_dir` is refused unless `force`; the folder is written whole into a sibling and swapped
    in, so an interrupted save leaves the old folder (or none) and never a mix.
    """
    from safetensors.torch import save_file

    final = check_output_folder(out_dir, force=force)
    out = staging_folder(final)
    for _, weight in packed_weights(model):
        weight.release_kernel()  # kernels: the buffers below are read directly, so the canonical codes go back first
    tensors: dict[str, torch.Tensor] = {}
    packed_path = {id(m): name for name, m in model.named_modules() if isinstance(m, PackedWeight)}
    packed: dict[str, Any] = {}
    for name, weight in packed_weights(model):
        q = weight.quantized
        packed[packed_path[id(weight)]] = {**weight.get_extra_state(), "bits": q.bits(), "name": name}
    modules: dict[str, Any] = {}
    for path, module in quantized_modules(model):
        extra = {"padding_idx": module.padding_idx} if isinstance(module, QuantizedEmbedding) else {}
        quantizer = getattr(module, "input_quant", None)
        if isinstance(quantizer, InputQuantizer):  # its static scale and divisor are stored parameters
            extra["activations"] = None if quantizer.spec is None else quantizer.spec.to_string()
            extra["divisor"] = quantizer.divisor is not None
        modules[path] = {"weight": packed_path[id(module.qweight)], "layout": module.layout, **extra}

    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, tensor in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        if tensor is None:
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype) if tensor.numel() else ("empty", name)  # fmt: skip
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().cpu().contiguous().clone()

    stored = {
        name: {
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "sha256": _tensor_sha256(t),
        }
        for name, t in tensors.items()
    }
    atomic_write(out / TENSORS_FILE, lambda tmp: save_file(tensors, str(tmp)))
    report = model_bits(model)
    body = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "wquant_version": wquant.__version__,
        "torch_version": torch.__version__,
        "model_class": type(model).__name__,
        "base_config": _base_config(model),
        "tensors_file": TENSORS_FILE,
        "tensors_file_sha256": _file_sha256(out / TENSORS_FILE),
        "tensors": stored,
        "packed": packed,
        "modules": modules,
        "aliases": aliases,
        "bits": {"total": report.bits, "params": report.params, "bits_per_param": report.bits_per_param},
    }
    if tokenizer is not None:
        _save_tokenizer(tokenizer, out)
    manifest = {"body": body, "sha256": _sha256(_canonical(body))}
    atomic_write(out / MANIFEST_FILE, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8"))
    replace_folder(out, final)
    return final


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The verified manifest body of a saved folder (refuses a changed, truncated or foreign manifest)."""
    path = Path(folder).expanduser() / MANIFEST_FILE
    if not path.is_file():
        raise ParameterError(f"{path.parent} is not a saved wquant model: it has no {MANIFEST_FILE}")
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise CorruptDataError(f"{path} is larger than {_MAX_MANIFEST_BYTES} bytes; refusing to parse it")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
        body, digest = manifest["body"], manifest["sha256"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CorruptDataError(f"{path} is damaged or truncated ({type(exc).__name__}: {exc})") from None
    if not isinstance(body, dict) or _sha256(_canonical(body)) != digest:
        raise CorruptDataError(f"{path} fails its checksum: the manifest was changed or damaged")
    if body.get("format") != FORMAT_NAME:
        raise CorruptDataError(f"{path} is not a {FORMAT_NAME} manifest (format {body.get('format')!r})")
    if body.get("format_version") == 1:
        raise CorruptDataError(
            f"{path.parent} is a checkpoint of wquant's format version 1 (written by wquant "
            f"{body.get('wquant_version')}, before quantized weights became packed state); this wquant reads "
            f"version {FORMAT_VERSION}. Re-create it from the base model with the same command, e.g. "
            "`wquant quantize MODEL_DIR --format SPEC --out NEW_DIR`"
        )
    if body.get("format_version") != FORMAT_VERSION:
        raise CorruptDataError(
            f"{path} uses format version {body.get('format_version')!r} (written by wquant "
            f"{body.get('wquant_version')}); this wquant {wquant.__version__} reads format version "
            f"{FORMAT_VERSION}"
        )
    return body


def _load_tensors(folder: Path, body: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / body["tensors_file"]
    if not path.is_file():
        raise CorruptDataError(f"{folder}: {body['tensors_file']} is missing")
    if _file_sha256(path) != body["tensors_file_sha256"]:
        raise CorruptDataError(
            f"{path} fails its sha256 check (size {path.stat().st_size} bytes): the file is truncated or changed"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptDataError(f"{path} does not parse as safetensors: {exc}") from None
    expected = body["tensors"]
    if set(tensors) != set(expected):
        raise CorruptDataError(f"{path} holds tensors {sorted(set(tensors) ^ set(expected))[:5]} not in the manifest")
    for name, info in expected.items():
        if _tensor_sha256(tensors[name]) != info["sha256"]:
            raise CorruptDataError(f"{path}: tensor {name} fails its sha256 check")
    return tensors


def _load_bytes(body: dict[str, Any]) -> int:
    """Stored tensors, the largest dequantized weight (rebuilt one at a time), and the model skeleton's own
    parameters (built on the meta device: none)."""
    try:
        stored = sum(
            int(np.prod(i["shape"], dtype=np.int64)) * _DTYPES[i["dtype"]].itemsize for i in body["tensors"].values()
        )
        dequantized = [
            int(np.prod(i["shape"], dtype=np.int64)) * _DTYPES[i["dtype"]].itemsize for i in body["packed"].values()
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptDataError(f"manifest tensor entries are malformed ({type(exc).__name__}: {exc})") from None
    return stored + max(dequantized, default=0)


def _skeleton(body: dict[str, Any], device: str = "meta") -> nn.Module:
    """An empty model of the saved architecture, built from its config by a transformers class (no code)."""
    config = body.get("base_config")
    if not config:
        raise ParameterError(
            f"this checkpoint holds a {body.get('model_class')} without a Hugging Face config; pass the "
            "unloaded module as load_quantized(folder, model=...)"
        )
    if config.get("auto_map"):
        raise ParameterError("the saved config needs custom code (auto_map); wquant never runs remote code")
    import transformers
    from transformers import CONFIG_MAPPING, PreTrainedModel

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ParameterError(f"model_type {model_type!r} is unknown to this transformers version")
    arch = (config.get("architectures") or [body.get("model_class")])[0]
    cls = getattr(transformers, str(arch), None)
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
        raise ParameterError(f"architecture {arch!r} is not a transformers model class; pass model=...")
    cfg = CONFIG_MAPPING[model_type].from_dict({k: v for k, v in config.items() if k != "dtype"})
    with torch.device(device):
        return cls(cfg)


def load_quantized(
    folder: str | os.PathLike[str], *, model: nn.Module | None = None, available_bytes: int | None = None
) -> nn.Module:
    """Rebuild a model saved by save_quantized; outputs are bit-identical to the saved model's.

    `model` is an architecture to fill (any device; its values are replaced). Hugging Face models need none:
    the saved config names a transformers class.
    """
    folder = Path(folder).expanduser()
    body = read_manifest(folder)
    check_fits_in_memory(_load_bytes(body), str(folder), available_bytes=available_bytes)
    tensors = _load_tensors(folder, body)
    if model is not None:
        return _fill(model, body, tensors, folder)
    net = _fill(_skeleton(body), body, dict(tensors), folder)  # meta: no memory or init time spent
    if _has_stray_meta_tensors(net):  # a plain tensor attribute computed at init; build for real instead
        net = _fill(_skeleton(body, "cpu"), body, tensors, folder)
    return net


def _has_stray_meta_tensors(net: nn.Module) -> bool:
    return any(
        isinstance(value, torch.Tensor) and value.is_meta for module in net.modules() for value in vars(module).values()
    )


def _fill(net: nn.Module, body: dict[str, Any], tensors: dict[str, torch.Tensor], folder: Path) -> nn.Module:
    """Swap in the quantized modules and place every stored tensor into `net`."""
    tensors = dict(tensors)
    try:
        holders: dict[str, PackedWeight] = {}
        for key, info in body["packed"].items():
            fields = {f: tensors.pop(f"{key}.{f}") for f in FIELDS if f"{key}.{f}" in tensors}
            q = QuantizedTensor.from_state(fields, parse_spec(info["spec"]), tuple(info["shape"]),
                                           _DTYPES[info["dtype"]])  # fmt: skip
            if q.bits() != info["bits"]:
                raise CorruptDataError(f"{key}: stored {q.bits()} bits, manifest says {info['bits']}")
            holders[key] = PackedWeight(q)
        for path, info in body["modules"].items():
            holder = holders[info["weight"]]
            old = net.get_submodule(path)
            if info["layout"] == "embedding":
                new: nn.Module = QuantizedEmbedding(holder, padding_idx=info.get("padding_idx"))
            else:
                bias = getattr(old, "bias", None)
                new = QuantizedLinear(holder, bias if isinstance(bias, nn.Parameter) else None, layout=info["layout"])
                if "activations" in info:
                    divisor = None
                    if info.get("divisor"):
                        divisor = nn.Parameter(torch.zeros(new.in_features, dtype=torch.float16), requires_grad=False)
                    new.input_quant = InputQuantizer(info["activations"], new.in_features, divisor=divisor)
            set_submodule(net, path, new)
        packed_names = {f"{path}.qweight.{f}" for path in body["modules"] for f in FIELDS}
        aliases = {a: t for a, t in body["aliases"].items() if a not in packed_names}
        _assign(net, tensors, aliases)
    except WquantError:
        raise
    except (KeyError, AttributeError, TypeError, ValueError, RuntimeError) as exc:
        raise CorruptDataError(
            f"{folder}: checkpoint does not match the model architecture ({type(exc).__name__}: {exc})"
        ) from None
    return net.eval()


def _assign(net: nn.Module, tensors: dict[str, torch.Tensor], aliases: dict[str, str]) -> None:
    """Put every stored tensor in place (dtype kept), re-tie aliases, and check nothing is left unset."""
    placed: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        owner_path, _, leaf = name.rpartition(".")
        owner = net.get_submodule(owner_path) if owner_path else net
        if leaf in owner._parameters:
            placed[name] = nn.Parameter(tensor, requires_grad=False)
            owner._parameters[leaf] = placed[name]
        elif leaf in owner._buffers:
            owner._buffers[leaf] = placed[name] = tensor
        else:
            raise CorruptDataError(f"stored tensor {name} has no place in {type(net).__name__}")
    for alias, target in aliases.items():
        owner_path, _, leaf = alias.rpartition(".")
        owner = net.get_submodule(owner_path) if owner_path else net
        store = owner._parameters if leaf in owner._parameters else owner._buffers
        store[leaf] = placed[target]
    missing = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t is not None and t.is_meta]
    if missing:
        raise CorruptDataError(f"checkpoint lacks tensors {missing[:5]} that the architecture needs")


def check_matches_base(quantized: nn.Module, base: nn.Module, folder: str | os.PathLike[str]) -> None:
    """Refuse comparing a checkpoint with a base model it was not made from (shapes would fail mid-evaluation)."""

    def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
        out = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
        for path, module in quantized_modules(model):
            out[f"{path}.weight"] = tuple(module.weight.shape)
        return out

    mine, theirs = shapes(quantized), shapes(base)
    differ = sorted(n for n in mine.keys() | theirs.keys() if mine.get(n) != theirs.get(n))
    if differ:
        name = differ[0]
        raise ParameterError(
            f"{folder} was not made from this model: {len(differ)} weights differ, e.g. {name} is "
            f"{mine.get(name, 'absent')} there and {theirs.get(name, 'absent')} here; quantize this model instead"
        )
