"""A small causal LM trained here, so perplexity and KL can be measured without downloading any weights.

The model is a standard transformers Llama (so `save_pretrained` / `AutoModelForCausalLM` just work) with a
character-level tokenizer built from the training text (a `tokenizers` WordLevel model over single
characters, wrapped in `PreTrainedTokenizerFast` and saved beside the weights). Training is seeded: the
initialisation, the batch positions and the data split are fixed by `TrainConfig`, so the same text and
config give the same weights on the same machine and thread count. The last `1 - train_fraction` of the
text is held out for evaluation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from wquant.data import read_text
from wquant.errors import BudgetError, ParameterError
from wquant.io import check_output_folder, replace_folder, staging_folder
from wquant.progress import progress_bar
from wquant.validation import check_int_range, check_positive

SPECIAL_TOKENS = ("<unk>", "<pad>", "<eos>")
TRAINING_FILE = "wquant-training.json"
DEFAULT_CACHE = Path("~/.cache/wquant/testbed")


@dataclass(frozen=True)
class TrainConfig:
    """Model size and optimisation of the testbed; the defaults train in a few minutes on 2 CPU cores."""

    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 384
    context: int = 128
    batch_size: int = 16
    steps: int = 400
    learning_rate: float = 3e-3
    warmup_steps: int = 40
    weight_decay: float = 0.05
    train_fraction: float = 0.9
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        for name in ("hidden_size", "layers", "heads", "intermediate_size", "batch_size", "steps", "threads"):
            check_int_range(getattr(self, name), name, 1)
        check_int_range(self.context, "context", 2)
        check_int_range(self.warmup_steps, "warmup_steps", 0)
        check_int_range(self.seed, "seed", 0)
        check_positive(self.learning_rate, "learning_rate")
        check_positive(self.weight_decay, "weight_decay", allow_zero=True)
        if not 0 < self.train_fraction < 1:
            raise ParameterError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.hidden_size % self.heads:
            raise ParameterError(f"hidden_size {self.hidden_size} must be a multiple of heads {self.heads}")
        if (self.hidden_size // self.heads) % 2:  # rotary position embeddings turn pairs of coordinates
            fit = -(-self.hidden_size // (2 * self.heads)) * 2 * self.heads
            raise ParameterError(
                f"hidden_size {self.hidden_size} over {self.heads} head(s) gives an odd head size "
                f"{self.hidden_size // self.heads}; rotary embeddings need an even one: use hidden_size {fit}"
            )

    def training_bytes(self, vocab_size: int) -> int:
        """A rough upper estimate of training memory: fp32 weights, gradients and two AdamW moments, plus the
        activations kept for the backward pass (projections, MLP, attention maps) of one batch."""
        h, i, n = self.hidden_size, self.intermediate_size, self.context
        params = self.layers * (4 * h * h + 3 * h * i + 2 * h) + 2 * vocab_size * h + h
        per_layer = self.batch_size * n * (12 * h + 3 * i + 3 * self.heads * n)
        logits = 3 * self.batch_size * n * vocab_size
        return 4 * (4 * params + self.layers * per_layer + logits)


@dataclass(frozen=True)
class TrainResult:
    path: Path
    params: int
    train_loss: float  # mean loss of the last 10 % of steps, nats/char
    heldout_loss: float  # on held-out windows, nats/char
    seconds: float


def char_tokenizer(text: str) -> Any:
    """A character-level fast tokenizer whose vocabulary is the special tokens plus the text's characters."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(text) - set(SPECIAL_TOKENS))
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *chars])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


def split_text(text: str, train_fraction: float) -> tuple[str, str]:
    """(training part, held-out part) at a fixed character position."""
    cut = int(len(text) * train_fraction)
    return text[:cut], text[cut:]


def _llama(config: TrainConfig, vocab_size: int, eos_id: int, pad_id: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=max(256, config.context),
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    return LlamaForCausalLM(llama)


def _learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.inference_mode()
def _heldout_loss(model: Any, ids: torch.Tensor, context: int, max_windows: int = 64) -> float:
    count = min(max_windows, (ids.numel() - 1) // context)
    if count == 0:
        return float("nan")
    windows = ids[: count * context].reshape(count, context)
    return float(model(input_ids=windows, labels=windows).loss)


def train_causal_lm(
    text_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    progress: bool = False,
    force: bool = False,
) -> TrainResult:
    """Train the testbed on a UTF-8 text file and save model + tokenizer + training record to `out_dir`.

    The folder is checked before training (a non-empty one is replaced only with force=True) and written as
    a whole: into a temporary sibling, then renamed into place.
    """
    config = config or TrainConfig()
    out = check_output_folder(out_dir, force=force)
    text = read_text(text_path)
    train_text, heldout_text = split_text(text, config.train_fraction)
    if len(train_text) < 2 * (config.context + 1):
        raise ParameterError(
            f"{text_path} has {len(train_text)} training characters; training needs at least {2 * (config.context + 1)}"
        )
    tokenizer = char_tokenizer(text)
    _check_memory(config, len(tokenizer))
    encode = lambda s: torch.as_tensor(  # noqa: E731
        tokenizer(s, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long
    )
    train_ids, heldout_ids = encode(train_text), encode(heldout_text) if heldout_text else torch.zeros(0)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    try:
        torch.manual_seed(config.seed)
        model = _llama(config, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
        model.train()
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.learning_rate, betas=(0.9, 0.95), weight_decay=config.weight_decay
        )
        sampler = torch.Generator().manual_seed(config.seed)
        offsets = torch.arange(config.context + 1)
        losses: list[float] = []
        with progress_bar("training", config.steps, enabled=progress) as advance:
            for step in range(config.steps):
                starts = torch.randint(
                    0, train_ids.numel() - config.context - 1, (config.batch_size, 1), generator=sampler
                )
                batch = train_ids[starts + offsets]
                for group in optimizer.param_groups:
                    group["lr"] = _learning_rate(step, config)
                loss = model(input_ids=batch, labels=batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                advance()
        model.eval()
        heldout = _heldout_loss(model, heldout_ids, config.context)
    finally:
        torch.set_num_threads(previous_threads)
    seconds = time.perf_counter() - start
    tail = losses[-max(1, len(losses) // 10) :]
    staging = staging_folder(out)
    model.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    result = TrainResult(out, sum(p.numel() for p in model.parameters()), sum(tail) / len(tail), heldout, seconds)
    record = {
        "config": asdict(config),
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "text_chars": len(text),
        "heldout_from_char": len(train_text),
        "params": result.params,
        "train_loss": result.train_loss,
        "heldout_loss": result.heldout_loss,
        "seconds": seconds,
        "torch_version": torch.__version__,
    }
    (staging / TRAINING_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
    replace_folder(staging, out)
    return result


def _check_memory(config: TrainConfig, vocab_size: int) -> None:
    from wquant.models.hf import available_memory_bytes, human_bytes

    needed, free = config.training_bytes(vocab_size), available_memory_bytes()
    if needed > free:
        raise BudgetError(
            f"training hidden_size {config.hidden_size} × {config.layers} layers (context {config.context}, batch "
            f"{config.batch_size}) needs about {human_bytes(needed)} but only {human_bytes(free)} is available; "
            "choose a smaller model"
        )


def cached_testbed(
    text_path: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Path:
    """Folder of a testbed trained on this text with this config, training it once into the cache if needed.

    The cache key is the sha256 of the text and of the config, so a different text or config never reuses
    weights; the cache lives outside the repository (default ~/.cache/wquant/testbed).
    """
    config = config or TrainConfig()
    text = read_text(text_path)
    key = hashlib.sha256(text.encode("utf-8") + json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()
    folder = Path(cache_dir or DEFAULT_CACHE).expanduser() / key[:16]
    if not (folder / TRAINING_FILE).is_file():
        staging = folder.with_name(folder.name + f".partial-{os.getpid()}")
        train_causal_lm(text_path, staging, config, progress=progress)
        if (folder / TRAINING_FILE).is_file():  # another process finished first; keep theirs
            shutil.rmtree(staging, ignore_errors=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)  # a half-written folder from an interrupted run
            os.replace(staging, folder)
    return folder


def heldout_text(model_dir: str | os.PathLike[str], text_path: str | os.PathLike[str]) -> str:
    """The held-out tail of the training text recorded in a testbed folder."""
    record = json.loads((Path(model_dir) / TRAINING_FILE).read_text(encoding="utf-8"))
    return read_text(text_path)[int(record["heldout_from_char"]) :]
