"""Quantization-aware training of a whole model: LLM-QAT, PEQA and plain STE, seeded and resumable.

    result = train_qat(model, QATConfig("int3/block64:absmax:bf16", method="llm-qat", steps=200), tokenizer=tok)
    save_quantized(model, "out/", tokenizer=tok)          # the model now holds packed QuantizedLinear layers

* **llm-qat** (Liu et al. 2023): data-free. The full-precision model writes its own training text
  (`generate_samples`: first token uniform over the vocabulary, a few greedy tokens, then sampled), and the
  fake-quantized student learns the teacher's next-token distributions on it (KL(teacher ‖ student) at every
  position). Weights train through the STE; scales may be learned too (LSQ).
* **peqa** (Kim et al. 2023): codes frozen from a first quantization (RTN, or GPTQ with `init="gptq"`); only
  the scales (and minmax offsets) train, on the task loss (next-token cross-entropy on the given text).
* **ste**: weights train through the STE on the task loss of the given text (or, for encoders, on the
  teacher's hidden states).

Every random choice takes `seed`: the generated text, and each step's batch (a pure function of seed and
step). Models run in eval mode (no dropout) with gradients on. With `run_dir`, the trained tensors, the
optimizer state, the step and the losses are written atomically every `checkpoint_every` steps into one
safetensors file (no pickle), with the config, the data and the base model's fingerprints; calling again with
the same arguments resumes from there and ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from wquant.errors import CorruptDataError, ParameterError
from wquant.formats import DEFAULT_FORMAT, FormatSpec, parse_spec
from wquant.io import atomic_write
from wquant.models.quantize import LayerReport
from wquant.progress import progress_bar
from wquant.qat.data import (
    Samples,
    batch_indices,
    batches_to_samples,
    generate_samples,
    samples_sha256,
    special_ids,
)
from wquant.qat.fake_quant import FakeQuantConfig, convert_qat, prepare_qat, qat_modules, trainable_parameters
from wquant.validation import check_int_range, check_positive

Method = Literal["llm-qat", "peqa", "ste"]
METHODS = ("llm-qat", "peqa", "ste")
LossKind = Literal["kl", "ce", "hidden"]
LOSSES = ("kl", "ce", "hidden")
#: Adam moves each value by about lr per step, so weights need a fraction of a grid step, scales a fraction of their
#: size. The weights' rate works on the causal testbed (weights ~N(0, 0.05²)); PEQA's is untuned and too large there
#: at 4 and 3 bits (held-out KL above RTN's; BENCHMARKS.md, docs/qat.md): pass a smaller lr for such small scales.
DEFAULT_LR: dict[str, float] = {"llm-qat": 5e-5, "ste": 5e-5, "peqa": 5e-4}
STATE_FILE = "qat-state.safetensors"
DATA_FILE = "qat-data.safetensors"
RUN_FORMAT = "wquant-qat-run"
RUN_VERSION = 1
PROBE_BATCHES = 4


@dataclass(frozen=True)
class QATConfig:
    """One QAT run. Fields that change the trajectory are checked on resume; `checkpoint_every` is not.

    format: the stored spec. method: llm-qat, peqa or ste (module docstring). steps, lr (None: the method's
    default), exponent_lr (learned power exponents), batch_size, warmup_steps, schedule (cosine decay to 0
    or constant), weight_decay, grad_clip (global norm; None: off).
    Data: seq_len and samples of LLM-QAT's generated text, greedy_tokens and temperature of its sampling;
    seed for everything random. loss: kl, ce or hidden (None: kl for llm-qat, otherwise ce for causal LMs and
    hidden for encoders). init: the starting point — "rtn" (the weights as they are) or "gptq" (GPTQ on the
    training data first; PEQA then freezes GPTQ's codes).
    Fake quantization: learn_scales (LSQ), learn_offsets, learn_exponent (NUPES), round_scales (PEQA may
    train float scales and round at the end), clip_gradient; include / exclude: module globs.
    """

    format: str | FormatSpec = DEFAULT_FORMAT
    method: Method = "llm-qat"
    steps: int = 100
    lr: float | None = None
    exponent_lr: float = 1e-3
    batch_size: int = 8
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    seq_len: int = 128
    samples: int = 256
    greedy_tokens: int = 3
    temperature: float = 1.0
    generation_batch: int = 16
    seed: int = 0
    loss: LossKind | None = None
    init: Literal["rtn", "gptq"] = "rtn"
    learn_scales: bool = False
    learn_offsets: bool = True
    learn_exponent: bool = False
    round_scales: bool = True
    clip_gradient: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    checkpoint_every: int = 25

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", parse_spec(self.format))
        for name in ("include", "exclude"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if self.method not in METHODS:
            raise ParameterError(f"QAT method {self.method!r} unknown; valid: {', '.join(METHODS)}")
        if self.loss is not None and self.loss not in LOSSES:
            raise ParameterError(f"QAT loss {self.loss!r} unknown; valid: {', '.join(LOSSES)}")
        if self.schedule not in ("cosine", "constant"):
            raise ParameterError(f"schedule {self.schedule!r} unknown; valid: constant, cosine")
        if self.init not in ("rtn", "gptq"):
            raise ParameterError(f"QAT init {self.init!r} unknown; valid: gptq, rtn")
        check_int_range(self.steps, "steps", 1)
        check_int_range(self.batch_size, "batch_size", 1)
        check_int_range(self.warmup_steps, "warmup_steps", 0)
        check_int_range(self.seq_len, "seq_len", 2)
        check_int_range(self.samples, "samples", 1)
        check_int_range(self.greedy_tokens, "greedy_tokens", 0)
        check_int_range(self.generation_batch, "generation_batch", 1)
        check_int_range(self.seed, "seed", 0)
        check_int_range(self.checkpoint_every, "checkpoint_every", 1)
        if self.lr is not None:
            check_positive(self.lr, "lr", allow_zero=True)
        check_positive(self.exponent_lr, "exponent_lr", allow_zero=True)
        check_positive(self.weight_decay, "weight_decay", allow_zero=True)
        check_positive(self.temperature, "temperature")
        if self.grad_clip is not None:
            check_positive(self.grad_clip, "grad_clip")
        if self.init == "gptq" and self.method != "peqa" and not self.learn_scales:
            raise ParameterError(
                f"init 'gptq' with {self.method} starts from GPTQ's codes and scales, which only learned scales keep "
                "(rule-made scales of GPTQ's weights round them elsewhere): add learn_scales=True (--learn-scales)"
            )
        if self.method == "peqa" and (self.learn_scales or self.learn_exponent):
            raise ParameterError("peqa trains the scales of frozen codes already; drop learn_scales/learn_exponent")
        self.fake_quant  # noqa: B018  (validates the fake-quantization options against the format)

    @property
    def spec(self) -> FormatSpec:
        return self.format  # type: ignore[return-value]

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.method] if self.lr is None else float(self.lr)

    @property
    def fake_quant(self) -> FakeQuantConfig:
        return FakeQuantConfig(
            self.spec, learn_scales=self.learn_scales, learn_offsets=self.learn_offsets,
            learn_exponent=self.learn_exponent, freeze_codes=self.method == "peqa", round_scales=self.round_scales,
            clip_gradient=self.clip_gradient,
        )  # fmt: skip

    def fingerprint(self) -> dict[str, Any]:
        """The fields a resumed run must share (JSON-safe)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "checkpoint_every"}
        data["format"] = self.spec.to_string()
        data["lr"] = self.learning_rate
        return json.loads(json.dumps(data))


@dataclass(frozen=True)
class QATResult:
    """What a run did. Probe losses are on the first batches of the training data, same loss as training:
    at the start (the initial quantization), at the end (fake-quantized) and after conversion (packed)."""

    method: str
    format: str
    loss: str
    steps: int
    resumed_from: int  # 0 when the run started fresh
    trainable_params: int
    losses: tuple[float, ...]  # one per step, from step 0
    probe_start: float
    probe_end: float
    probe_packed: float | None  # None when not converted
    seconds: float  # this call's wall time (generation and training)
    data_sha256: str
    layers: tuple[LayerReport, ...] = ()


# ------------------------------------------------------------------------------------------------ losses


def is_causal_lm(model: nn.Module) -> bool:
    """A model with a language-model head (logits over the vocabulary) rather than an encoder."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return isinstance(head, nn.Module)


def _forward(model: nn.Module, batch: Samples, causal: bool) -> Any:
    return model(**batch, use_cache=False) if causal else model(**batch)


def qat_loss(student: nn.Module, teacher: nn.Module | None, batch: Samples, kind: str, causal: bool) -> torch.Tensor:
    """The training loss of one batch: KL(teacher ‖ student) per position, next-token CE, or hidden-state MSE.

    Positions whose attention mask is 0 (padding) do not count. The hidden loss is ‖h_s − h_t‖² / ‖h_t‖² per
    token, averaged: scale-free, so every encoder layer width gets the same learning rate.
    """
    mask = batch.get("attention_mask")
    if kind == "ce":
        logits = _forward(student, batch, causal).logits[:, :-1].float()
        labels = batch["input_ids"][:, 1:]
        if mask is not None:
            labels = labels.masked_fill(mask[:, 1:] == 0, -100)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    assert teacher is not None
    with torch.no_grad():
        target = _forward(teacher, batch, causal)
    out = _forward(student, batch, causal)
    if kind == "kl":
        log_p = F.log_softmax(target.logits.float(), dim=-1)
        log_q = F.log_softmax(out.logits.float(), dim=-1)
        per_token = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    else:
        h_t, h_s = target[0].float(), out[0].float()
        per_token = (h_s - h_t).square().sum(-1) / h_t.square().sum(-1).clamp(min=torch.finfo(torch.float32).tiny)
    if mask is None:
        return per_token.mean()
    weight = mask.to(per_token.dtype)
    return (per_token * weight).sum() / weight.sum().clamp(min=1)


def learning_rate(config: QATConfig, step: int) -> float:
    """Linear warm-up over `warmup_steps`, then constant or cosine decay to 0 at the last step."""
    lr = config.learning_rate
    if step < config.warmup_steps:
        return lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return lr
    span = max(1, config.steps - config.warmup_steps)
    return lr * 0.5 * (1 + math.cos(math.pi * (step - config.warmup_steps) / span))


# -------------------------------------------------------------------------------------- run checkpoints


def model_sha256(model: nn.Module) -> str:
    """A fingerprint of a model's parameters and buffers (names, shapes, dtypes, values)."""
    digest = hashlib.sha256()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class _RunState:
    step: int
    losses: list[float]
    probe_start: float
    params: dict[str, torch.Tensor]
    optimizer: dict[int, dict[str, torch.Tensor]]


def _save_state(path: Path, meta: dict[str, Any], params: list[tuple[str, nn.Parameter]], opt: Any) -> None:
    from safetensors.torch import save_file

    tensors = {f"param/{name}": p.detach().cpu().contiguous().clone() for name, p in params}
    for index, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"opt/{index}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={RUN_FORMAT: json.dumps(meta)}))


def _load_state(path: Path) -> tuple[dict[str, Any], _RunState]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})[RUN_FORMAT])
        tensors = load_file(str(path))
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CorruptDataError(f"{path} is not a readable QAT checkpoint ({type(exc).__name__}: {exc}); "
                               "delete it (or pass --restart) to start the run over") from None  # fmt: skip
    if meta.get("format") != RUN_FORMAT or meta.get("version") != RUN_VERSION:
        raise CorruptDataError(f"{path} is not a {RUN_FORMAT} v{RUN_VERSION} checkpoint")
    params = {k.removeprefix("param/"): v for k, v in tensors.items() if k.startswith("param/")}
    optimizer: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt/"):
            _, index, field = key.split("/", 2)
            optimizer.setdefault(int(index), {})[field] = value
    state = _RunState(int(meta["step"]), [float(x) for x in meta["losses"]], float(meta["probe_start"]), params,
                      optimizer)  # fmt: skip
    return meta, state


def _check_resumable(meta: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
    """Refuse a saved run made with other settings, base model, data or layers (the keys `expected` holds)."""
    for key in ("config", "model_sha256", "data_sha256", "trainable"):
        if key in expected and meta.get(key) != expected[key]:
            if key == "config":
                differ = sorted(k for k in expected[key] if meta[key].get(k) != expected[key][k])
                what = "settings " + ", ".join(f"{k} (saved {meta[key].get(k)!r}, now {expected[key][k]!r})"
                                               for k in differ[:4])  # fmt: skip
            else:
                what = {"data_sha256": "training data", "model_sha256": "base model",
                        "trainable": "trained layers"}[key]  # fmt: skip
            raise ParameterError(
                f"{path.parent} holds a QAT run with different {what}; rerun with the same arguments to resume it, "
                "or pass restart=True (--restart) to start over"
            )


def _save_data(path: Path, samples: Samples) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in samples.items()}, str(tmp)))


def _load_data(path: Path) -> Samples | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError):
        return None  # regenerated: the generation is seeded


# --------------------------------------------------------------------------------------------- the run


def _default_loss(config: QATConfig, causal: bool) -> str:
    if config.loss is not None:
        if config.loss in ("kl", "ce") and not causal:
            raise ParameterError(f"loss {config.loss!r} needs a causal LM's logits; encoders train on 'hidden'")
        return config.loss
    if config.method == "llm-qat":
        return "kl"
    return "ce" if causal else "hidden"


def _gptq_start(model: nn.Module, config: QATConfig, samples: Samples, log: Callable[[str], None]) -> None:
    """GPTQ on (up to 128 of) the training samples, in place: `prepare_qat` then starts from its packed layers —
    PEQA freezes their codes, STE / LLM-QAT start from their decoded weights and stored scales (learned)."""
    from wquant.algorithms import GPTQConfig
    from wquant.models import QuantizeConfig, quantize_

    n = min(samples["input_ids"].shape[0], 128)
    batches = [{k: v[i : i + config.batch_size] for k, v in samples.items()} for i in range(0, n, config.batch_size)]
    qconfig = QuantizeConfig(GPTQConfig(config.spec), include=config.include, exclude=config.exclude)
    quantize_(model, qconfig, calibration=batches, log=log)


def train_qat(
    model: nn.Module,
    config: QATConfig,
    *,
    samples: Samples | None = None,
    tokenizer: Any = None,
    teacher: nn.Module | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    restart: bool = False,
    convert: bool = True,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> QATResult:
    """Train `model` in place with quantization-aware training; with `convert` it ends holding packed layers.

    samples: the training data (`Samples`: equal-shape (n, length) tensors, e.g. `token_samples(ids)` or
    `batches_to_samples(sentence_batches(...))`). LLM-QAT generates its own when none are given (and keeps
    them in `run_dir`); peqa and ste need them. tokenizer: its special ids are never generated.
    teacher: the full-precision reference of the kl / hidden losses (default: a copy of `model` taken first).
    run_dir: where checkpoints go; an existing run there is resumed unless `restart`.
    on_step(step, loss) is called after every step (tests interrupt runs from it).
    """
    if not isinstance(model, nn.Module):
        raise ParameterError(f"train_qat needs a torch.nn.Module, got {type(model).__name__}")
    if qat_modules(model):
        raise ParameterError("the model is already prepared for QAT; pass the unprepared model")
    say = log or (lambda _msg: None)
    start_time = time.perf_counter()
    causal = is_causal_lm(model)
    loss_kind = _default_loss(config, causal)
    if config.method == "llm-qat" and not causal:
        raise ParameterError(
            f"llm-qat generates its data with a causal LM; {type(model).__name__} has no LM head. Use method "
            "'ste' with text samples (distilled on the hidden states) or 'peqa'"
        )
    folder = None if run_dir is None else Path(run_dir).expanduser()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        if restart:
            (folder / STATE_FILE).unlink(missing_ok=True)
            (folder / DATA_FILE).unlink(missing_ok=True)
    base_sha = model_sha256(model)
    state_path = None if folder is None else folder / STATE_FILE
    saved = None
    if state_path is not None and state_path.is_file():  # a damaged or foreign run is refused before any work
        saved = _load_state(state_path)
        _check_resumable(saved[0], {"config": config.fingerprint(), "model_sha256": base_sha}, state_path)
    if loss_kind != "ce" and teacher is None:
        teacher = copy.deepcopy(model)
    if teacher is not None:
        teacher.eval().requires_grad_(False)

    if samples is None:
        if config.method != "llm-qat":
            raise ParameterError(f"method {config.method} trains on text; give samples (e.g. --text FILE)")
        samples = None if folder is None else _load_data(folder / DATA_FILE)
        if samples is None:
            assert teacher is not None
            exclude = special_ids(tokenizer) if tokenizer is not None else _config_special_ids(model)
            say(f"generating {config.samples} sequences of {config.seq_len} tokens with the full-precision model")
            ids = generate_samples(
                teacher, samples=config.samples, length=config.seq_len, seed=config.seed,
                greedy_tokens=config.greedy_tokens, temperature=config.temperature, exclude_ids=exclude,
                batch_size=config.generation_batch, progress=progress,
            )  # fmt: skip
            samples = {"input_ids": ids}
            if folder is not None:
                _save_data(folder / DATA_FILE, samples)
    samples = batches_to_samples([samples]) if not isinstance(samples, dict) else samples
    count = int(samples["input_ids"].shape[0])
    if any(int(v.shape[0]) != count for v in samples.values()):
        raise ParameterError("every field of the training samples needs the same number of rows")
    batch_indices(count, config.batch_size, 0, config.seed)  # refuses fewer samples than one batch
    data_sha = samples_sha256(samples)

    if config.init == "gptq":
        _gptq_start(model, config, samples, say)
    prepare_qat(model, config.fake_quant, include=config.include, exclude=config.exclude, log=say)
    named = trainable_parameters(model)
    exponents = [p for n, p in named if n.endswith(".exponent")]
    others = [p for n, p in named if not n.endswith(".exponent")]
    groups = [{"params": others, "lr": config.learning_rate}]
    if exponents:
        groups.append({"params": exponents, "lr": config.exponent_lr})
    opt = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay, foreach=False)
    base_lrs = [config.learning_rate] + ([config.exponent_lr] if exponents else [])

    meta = {"format": RUN_FORMAT, "version": RUN_VERSION, "config": config.fingerprint(), "data_sha256": data_sha,
            "model_sha256": base_sha, "trainable": [n for n, _ in named]}  # fmt: skip
    model.eval()

    def batch_at(index: torch.Tensor) -> Samples:
        return {k: v[index] for k, v in samples.items()}

    probe = [batch_at(torch.arange(i, min(i + config.batch_size, count)))
             for i in range(0, min(count, PROBE_BATCHES * config.batch_size), config.batch_size)]  # fmt: skip

    def probe_loss() -> float:
        with torch.no_grad():
            return sum(float(qat_loss(model, teacher, b, loss_kind, causal)) for b in probe) / len(probe)

    start_step, losses, probe_start = 0, [], None
    if saved is not None:
        assert state_path is not None
        saved_meta, state = saved
        _check_resumable(saved_meta, meta, state_path)
        with torch.no_grad():
            for name, param in named:
                param.copy_(state.params[name])
        opt.load_state_dict({"state": state.optimizer, "param_groups": opt.state_dict()["param_groups"]})
        start_step, losses, probe_start = state.step, state.losses, state.probe_start
        say(f"resuming from step {start_step} of {config.steps} ({state_path})")
    if probe_start is None:
        probe_start = probe_loss()

    def checkpoint(step: int) -> None:
        if state_path is not None:
            _save_state(state_path, {**meta, "step": step, "losses": losses, "probe_start": probe_start}, named, opt)

    params = [p for _, p in named]
    with torch.enable_grad(), progress_bar(f"{config.method} {config.spec.to_string()}", config.steps - start_step,
                                           enabled=progress) as advance:  # fmt: skip
        for step in range(start_step, config.steps):
            factor = learning_rate(config, step) / config.learning_rate if config.learning_rate else 0.0
            for group, base in zip(opt.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
            loss = qat_loss(model, teacher, batch_at(batch_indices(count, config.batch_size, step, config.seed)),
                            loss_kind, causal)  # fmt: skip
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            advance()
            if on_step is not None:
                on_step(step, losses[-1])
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                checkpoint(step + 1)
    probe_end = probe_loss()
    layers: list[LayerReport] = []
    probe_packed = None
    trainable = sum(p.numel() for p in params)
    if convert:
        layers = convert_qat(model)
        probe_packed = probe_loss()
    return QATResult(
        config.method, config.spec.to_string(), loss_kind, config.steps, start_step, trainable, tuple(losses),
        probe_start, probe_end, probe_packed, time.perf_counter() - start_time, data_sha, tuple(layers),
    )  # fmt: skip


def _config_special_ids(model: nn.Module) -> tuple[int, ...]:
    config = getattr(model, "config", None)
    ids = [getattr(config, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")]
    flat = [i for x in ids if x is not None for i in (x if isinstance(x, list | tuple) else [x])]
    return tuple(sorted({int(i) for i in flat}))
