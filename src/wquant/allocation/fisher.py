"""Diagonal Fisher of a model's weight tensors, accumulated per sample with hooks.

Why per sample: the squared *batch* gradient (Σ_s g_s)² mixes samples and shrinks as the batch grows; the
Fisher is an expectation of squared per-sample gradients. For y = x·Wᵀ the gradient of one token's output
is the outer product g_tokᵀ x_tok, so the squared gradient of a sample is (Σ_tok∈s g_tokᵀ x_tok)², one small
matmul per sample and layer. What a sample is depends on the loss:
- causal LMs ("true", "empirical"): every predicted position has its own loss and label, so a sample is one
  token and Σ_tok (g_tok²)ᵀ(x_tok²) is the sum (one matmul per layer call; formats.md A3.3). Cross terms
  between positions vanish in expectation for labels sampled per position, as in the paper.
- encoders ("embedding"): the loss rᵀe of one sentence's pooled embedding has one gradient per sentence, so
  the tokens of a sentence are summed before squaring. Squaring per token instead drops the cross-token terms,
  which mean pooling makes large and coherent: on MiniLM that underestimated the last layer's tensors by up to
  30× against measured distortion and misranked them (the root of the Fisher plan losing to uniform grids).
Embedding rows get the (per-sample summed) output gradient scatter-added by token id.

Losses (what makes it a Fisher of the *output distribution* and so a KL predictor):
- "true": labels sampled from the model's own next-token distribution (Gumbel-max, seeded): the true Fisher,
  whose ½ δᵀFδ is the second-order KL(p_θ ‖ p_θ+δ) per predicted position.
- "empirical": the data's next tokens as labels (the empirical Fisher; can differ where the model is wrong).
- "embedding": encoders without a head. The loss ½‖e(θ+δ) − e(θ)‖² of the unit-norm mean-pooled sentence
  embedding has Gauss–Newton matrix JᵀJ; diag(JᵀJ) = E_r[(∂ rᵀe/∂θ)²] for r ~ N(0, I), so each pass draws a
  seeded random projection per sentence. With unit vectors ½‖Δe‖² = 1 − cos, so ½ δᵀFδ predicts 1 − cosine.

Everything is computed in float32 on a float32 copy when the model is stored in another dtype (bf16 sums of
squares underflow and lose the 2-bit headroom the paper needed), so the caller's model is never changed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from wquant.data import MIN_PARAGRAPH_CHARS, is_heading, token_windows
from wquant.errors import CorruptDataError, ParameterError
from wquant.io import atomic_write
from wquant.models import mean_pooled, module_kind, weight_sites
from wquant.validation import check_int_range

FisherMode = Literal["auto", "true", "empirical", "embedding"]
Task = Literal["causal-lm", "encoder"]
FISHER_FILE = "fisher.safetensors"
FISHER_JSON = "fisher.json"
FISHER_VERSION = 2  # 2: encoder Fisher per sentence (1 squared per token)
#: Fewer calibration tokens than this gives a Fisher too noisy to rank tensors; refuse instead of guessing.
MIN_CALIBRATION_TOKENS = 256


@dataclass(frozen=True)
class FisherConfig:
    """How to estimate the Fisher: loss mode, seed, and how much calibration text to read."""

    mode: FisherMode = "auto"  # auto: "true" for causal LMs, "embedding" for encoders
    seed: int = 0
    window: int = 128  # tokens per causal window / max tokens per encoder text
    max_windows: int = 64  # causal windows (or encoder texts) read from the calibration text
    batch_size: int = 8
    projections: int = 4  # random output projections per encoder text ("embedding" mode)
    targets: tuple[str, ...] = ("linear", "embedding")
    min_tokens: int = MIN_CALIBRATION_TOKENS

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "true", "empirical", "embedding"):
            raise ParameterError(f"Fisher mode {self.mode!r} unknown; valid: auto, true, empirical, embedding")
        check_int_range(self.seed, "seed", 0)
        check_int_range(self.window, "window", 2)
        for name in ("max_windows", "batch_size", "projections", "min_tokens"):
            check_int_range(getattr(self, name), name, 1)
        object.__setattr__(self, "targets", tuple(self.targets))
        if not set(self.targets) <= {"linear", "embedding"} or not self.targets:
            raise ParameterError(f"targets {self.targets!r} invalid; choose from linear, embedding")


@dataclass(frozen=True)
class TensorFisher:
    """Per-tensor summary used by the allocator: element count, mean Fisher F̄_t and RMS σ̂_t."""

    name: str
    shape: tuple[int, ...]
    numel: int
    fisher_mean: float
    rms: float


@dataclass(frozen=True, eq=False)
class FisherEstimate:
    """Per-element diagonal Fisher (storage layout, float32) of each weight, with per-tensor summaries."""

    tensors: tuple[TensorFisher, ...]
    diagonal: dict[str, torch.Tensor]
    mode: str
    seed: int
    samples: int  # predicted positions (causal) or texts × projections (encoder) the sums were divided by

    def tensor(self, name: str) -> TensorFisher:
        for t in self.tensors:
            if t.name == name:
                return t
        raise ParameterError(f"no Fisher for {name!r}; estimated tensors: {', '.join(t.name for t in self.tensors)}")

    def save(self, folder: str | os.PathLike[str], provenance: dict[str, Any] | None = None) -> Path:
        """Write fisher.safetensors + fisher.json atomically (each to a temporary name, then os.replace);
        `provenance` (`fisher_provenance`) is stored so a later `load` can refuse another model or setting."""
        from safetensors.torch import save_file

        out = Path(folder).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self.diagonal.items()}
        atomic_write(out / FISHER_FILE, lambda p: save_file(tensors, str(p)))
        meta = {
            "version": FISHER_VERSION,
            "mode": self.mode,
            "seed": self.seed,
            "samples": self.samples,
            "tensors": [asdict(t) for t in self.tensors],
            "provenance": provenance,
        }
        atomic_write(out / FISHER_JSON, lambda p: p.write_text(json.dumps(meta, indent=1), encoding="utf-8"))
        return out

    @staticmethod
    def load(folder: str | os.PathLike[str], expect: dict[str, Any] | None = None) -> FisherEstimate:
        """The saved Fisher; with `expect`, refused unless it was saved for exactly that provenance."""
        from safetensors.torch import load_file

        src = Path(folder).expanduser()
        if expect is not None:
            check_provenance(src, expect)
        try:
            meta = json.loads((src / FISHER_JSON).read_text(encoding="utf-8"))
            diagonal = load_file(str(src / FISHER_FILE))
            tensors = tuple(
                TensorFisher(t["name"], tuple(t["shape"]), int(t["numel"]), float(t["fisher_mean"]), float(t["rms"]))
                for t in meta["tensors"]
            )
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(f"{src}: saved Fisher does not load ({type(exc).__name__}: {exc})") from None
        if meta.get("version") != FISHER_VERSION or set(diagonal) != {t.name for t in tensors}:
            raise CorruptDataError(f"{src}: saved Fisher is from another version or its files disagree")
        return FisherEstimate(tensors, diagonal, str(meta["mode"]), int(meta["seed"]), int(meta["samples"]))


def weights_digest(model: nn.Module) -> str:
    """sha256 of every parameter and buffer (name, dtype, shape, bytes): one model, one digest."""
    digest = hashlib.sha256()
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fisher_provenance(model: nn.Module, text: str, task: Task, config: FisherConfig) -> dict[str, Any]:
    """What a Fisher depends on: the model's weights, the calibration text, every setting and wquant's version."""
    from wquant import __version__

    settings = {**asdict(config), "mode": resolve_mode(config.mode, task), "targets": list(config.targets)}
    return {
        "model_weights_sha256": weights_digest(model),
        "calibration_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "settings": settings,
        "wquant": __version__,
        "format": FISHER_VERSION,
    }


def check_provenance(folder: Path, expect: dict[str, Any]) -> None:
    """Refuse a saved Fisher made for another model, text, setting or wquant version, naming what differs."""
    try:
        stored = json.loads((folder / FISHER_JSON).read_text(encoding="utf-8")).get("provenance")
    except (OSError, ValueError, AttributeError) as exc:
        raise CorruptDataError(f"{folder}: saved Fisher does not load ({type(exc).__name__}: {exc})") from None
    if stored == expect:
        return
    if not isinstance(stored, dict):
        differs = ["it records no model or settings (saved by an older wquant)"]
    else:
        differs = [
            label
            for key, label in (("model_weights_sha256", "another model's weights"),
                               ("calibration_sha256", "another calibration text"),
                               ("wquant", f"wquant {stored.get('wquant')}"), ("format", "another Fisher format"))
            if stored.get(key) != expect[key]
        ]  # fmt: skip
        old, new = stored.get("settings") or {}, expect["settings"]
        differs += [f"{k} {old.get(k)!r} (now {new[k]!r})" for k in new if old.get(k) != new[k]]
    raise ParameterError(
        f"the Fisher in {folder} was estimated for {', '.join(differs)}; point --fisher-dir at an empty folder "
        "(or delete this one) to estimate it again"
    )


def sampled_labels(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One label per position drawn from softmax(logits) by Gumbel-max (seeded, no Python loop)."""
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float32).clamp_(1e-20, 1.0)
    return (logits.float() - torch.log(-torch.log(u))).argmax(dim=-1)


Loss = Callable[[nn.Module, Any], tuple[torch.Tensor, int]]


def _add_per_sample(acc: torch.Tensor, g: torch.Tensor, x: torch.Tensor, kind: str) -> None:
    """Add the squared gradient of each sample (dim 0 of one layer call), its tokens' gradients summed first."""
    g = g.reshape(g.shape[0], -1, g.shape[-1])
    if kind != "embedding":
        x = x.float().reshape(x.shape[0], -1, x.shape[-1])
        for gs, xs in zip(g, x, strict=True):  # one (out, in) matrix at a time: memory of one gradient
            acc.add_((gs.T @ xs).square().to(acc.device))
        return
    rows = acc.shape[0]
    ids = x.reshape(x.shape[0], -1)
    keys = (torch.arange(ids.shape[0], device=ids.device).unsqueeze(1) * rows + ids).reshape(-1)
    unique, inverse = torch.unique(keys, return_inverse=True)
    summed = torch.zeros(unique.numel(), g.shape[-1], device=g.device).index_add_(
        0, inverse, g.reshape(-1, g.shape[-1])
    )
    acc.index_add_(0, (unique % rows).to(acc.device), summed.square().to(acc.device))


def accumulate_fisher(
    model: nn.Module,
    batches: Iterable[Any],
    loss: Loss,
    *,
    targets: tuple[str, ...] = ("linear", "embedding"),
    per_sample: bool = False,
) -> tuple[dict[str, torch.Tensor], int]:
    """Σ per-sample squared weight gradients of `loss` over `batches`, divided by the sample count it reports.

    `loss(model, batch)` returns (scalar to differentiate, samples in the batch). A sample is one token, or with
    per_sample=True one row of the batch (its tokens' gradients summed before squaring: module docstring).
    Hooks see each target module's input and output gradient; nothing is kept in `.grad`.
    """
    sites = weight_sites(model, targets)
    if not sites:
        raise ParameterError("the model has no Linear/Conv1D/Embedding weight to estimate a Fisher for")
    sums = {id(s.module.weight): torch.zeros(s.weight().shape, dtype=torch.float32) for s in sites}
    names = {id(s.module.weight): s.name for s in sites}
    handles = []

    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        if not (isinstance(output, torch.Tensor) and output.requires_grad):
            return
        acc = sums[id(module.weight)]
        x = args[0].detach()
        kind = module_kind(module)

        def on_grad(g: torch.Tensor) -> None:
            if per_sample:
                _add_per_sample(acc, g.detach().float(), x, kind)
                return
            g2 = g.detach().float().reshape(-1, g.shape[-1]).square()
            if kind == "embedding":
                acc.index_add_(0, x.reshape(-1).to(acc.device), g2.to(acc.device))
            else:
                x2 = x.float().reshape(-1, x.shape[-1]).square()
                acc.add_((g2.T @ x2).to(acc.device))

        output.register_hook(on_grad)

    for module in model.modules():
        if module_kind(module) is not None and id(module.weight) in sums:
            handles.append(module.register_forward_hook(hook))
    weights = [s.module.weight for s in sites]
    flags = [w.requires_grad for w in weights]
    count = 0
    try:
        for w in weights:
            w.requires_grad_(True)
        for batch in batches:
            value, samples = loss(model, batch)
            torch.autograd.grad(value, weights, allow_unused=True)
            count += samples
    finally:
        for h in handles:
            h.remove()
        for w, flag in zip(weights, flags, strict=True):
            w.requires_grad_(flag)
    if count == 0:
        raise ParameterError("no calibration samples reached the Fisher estimate; give more calibration text")
    return {names[k]: v / count for k, v in sums.items()}, count


def _fp32_model(model: nn.Module) -> nn.Module:
    """The model itself when it is all float32, else a float32 copy (bf16 accumulations lose the tail)."""
    floats = [p for p in model.parameters() if p.is_floating_point()]
    if not floats:
        raise ParameterError("the model has no floating-point parameters; there is nothing to quantize")
    if all(p.dtype == torch.float32 for p in floats):
        return model
    return copy.deepcopy(model).float()


def _causal_batches(tokenizer: Any, text: str, config: FisherConfig) -> list[torch.Tensor]:
    windows = [w for w in token_windows(tokenizer, text, config.window) if w.numel() == config.window]
    windows = windows[: config.max_windows]
    tokens = sum(w.numel() - 1 for w in windows)
    if tokens < config.min_tokens:
        raise ParameterError(
            f"calibration text gives {tokens} predicted tokens in full windows of {config.window}; the Fisher "
            f"needs at least {config.min_tokens}: give a longer calibration file"
        )
    return [torch.stack(windows[i : i + config.batch_size]) for i in range(0, len(windows), config.batch_size)]


def calibration_texts(text: str, limit: int) -> list[str]:
    """Paragraph lines of a calibration file (headings and short fragments dropped), at most `limit`."""
    lines = [ln.strip() for ln in text.splitlines()]
    return [ln for ln in lines if len(ln) >= MIN_PARAGRAPH_CHARS and not is_heading(ln)][:limit]


def causal_loss(mode: str, generator: torch.Generator) -> Loss:
    """Summed next-token cross-entropy against sampled ("true") or data ("empirical") labels."""

    def loss(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        logits = model(input_ids=ids).logits[:, :-1]
        labels = sampled_labels(logits.detach(), generator) if mode == "true" else ids[:, 1:]
        value = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")
        return value, labels.numel()

    return loss


def embedding_loss(generator: torch.Generator) -> Loss:
    """Σ_s r_sᵀ e_s with r_s ~ N(0, I) per sentence: its squared gradient estimates diag(JᵀJ) of e."""

    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        hidden = model(**batch).last_hidden_state.float()
        emb = mean_pooled(hidden, batch["attention_mask"])
        r = torch.randn(emb.shape, generator=generator, dtype=torch.float32)
        return (r * emb).sum(), emb.shape[0]

    return loss


def _encoder_batches(tokenizer: Any, text: str, config: FisherConfig) -> list[dict[str, torch.Tensor]]:
    texts = calibration_texts(text, config.max_windows)
    out = [
        dict(
            tokenizer(
                texts[i : i + config.batch_size], padding=True, truncation=True, max_length=config.window,
                return_tensors="pt",
            )
        )
        for i in range(0, len(texts), config.batch_size)
    ]  # fmt: skip
    tokens = sum(int(b["attention_mask"].sum()) for b in out)
    if tokens < config.min_tokens:
        raise ParameterError(
            f"calibration text gives {len(texts)} paragraph(s), {tokens} tokens; the Fisher needs at least "
            f"{config.min_tokens} tokens in lines of {MIN_PARAGRAPH_CHARS}+ characters: give a longer file"
        )
    return out


def resolve_mode(mode: FisherMode, task: Task) -> str:
    """'auto' → 'true' for causal LMs, 'embedding' for encoders; refuse combinations without a meaning."""
    if mode == "auto":
        return "true" if task == "causal-lm" else "embedding"
    if task == "encoder" and mode != "embedding":
        raise ParameterError(f"an encoder without a head has no labels; Fisher mode {mode!r} needs a causal LM")
    if task == "causal-lm" and mode == "embedding":
        raise ParameterError("Fisher mode 'embedding' is for encoders; use 'true' or 'empirical' for causal LMs")
    return mode


def estimate_fisher(
    model: nn.Module, tokenizer: Any, text: str, task: Task, config: FisherConfig | None = None
) -> FisherEstimate:
    """Diagonal Fisher of every target weight of a Hugging Face causal LM or encoder on calibration text."""
    config = config or FisherConfig()
    mode = resolve_mode(config.mode, task)
    if not isinstance(text, str) or not text.strip():
        raise ParameterError("calibration text is empty")
    work = _fp32_model(model)
    was_training = work.training
    work.eval()
    generator = torch.Generator().manual_seed(config.seed)
    if task == "causal-lm":
        batches: list[Any] = _causal_batches(tokenizer, text, config)
        loss = causal_loss(mode, generator)
    else:
        base = _encoder_batches(tokenizer, text, config)
        batches = [b for _ in range(config.projections) for b in base]
        loss = embedding_loss(generator)
    try:
        diagonal, count = accumulate_fisher(work, batches, loss, targets=config.targets, per_sample=mode == "embedding")
    finally:
        work.train(was_training)
    return summarize(work, diagonal, mode=mode, seed=config.seed, samples=count, targets=config.targets)


def summarize(
    model: nn.Module,
    diagonal: dict[str, torch.Tensor],
    *,
    mode: str,
    seed: int,
    samples: int,
    targets: tuple[str, ...] = ("linear", "embedding"),
) -> FisherEstimate:
    """Attach per-tensor F̄_t and RMS_t (in float64) to a per-element Fisher."""
    rows = []
    for site in weight_sites(model, targets):
        if site.name not in diagonal:
            continue
        w = site.weight().double()
        fisher = diagonal[site.name]
        rows.append(
            TensorFisher(
                site.name,
                tuple(w.shape),
                w.numel(),
                float(fisher.double().mean()),
                float(w.square().mean().sqrt()),
            )
        )
    return FisherEstimate(tuple(rows), diagonal, mode, seed, samples)


__all__ = [
    "FISHER_FILE",
    "check_provenance",
    "fisher_provenance",
    "weights_digest",
    "FISHER_JSON",
    "MIN_CALIBRATION_TOKENS",
    "FisherConfig",
    "FisherEstimate",
    "TensorFisher",
    "accumulate_fisher",
    "calibration_texts",
    "causal_loss",
    "embedding_loss",
    "estimate_fisher",
    "resolve_mode",
    "sampled_labels",
    "summarize",
]
