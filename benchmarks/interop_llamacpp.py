"""`make interop`: files wquant exports, run by llama.cpp itself, compute what wquant's quantized model computes.

Builds llama.cpp through the llama-cpp-python sdist once (about 15 minutes on 2 cores; cached outside the
repository in ~/.cache/wquant/llama-cpp/<version>), then:

* causal testbed (a 256-wide Llama trained on tinyshakespeare, cached; 256 so every k-quant applies): for
  Q4_0, Q4_K, Q6_K, IQ4_NL and a mixed-type file, llama.cpp tokenizes held-out text into the same ids as
  wquant's tokenizer, and its next-token distributions have a small mean KL to wquant's quantized model
  (target 1e-4/token; enforced: 5e-4, and ≤ 1e-8 for the F32 control below);
* all-MiniLM-L6-v2 exported to GGUF: llama.cpp's mean-pooled embeddings against wquant's (target cosine
  0.9999; enforced: 0.999, and 0.99999 for the control).

Each file also gets a control: the same model with wquant's *dequantized* weights exported as F32. llama.cpp
computes quantized matrix products by quantizing the activations too (to Q8_0 blocks of 32 for Q4_0/IQ4_NL/
Q8_0, to Q8_K blocks of 256 for the k-quants), so the quantized file's KL mixes that kernel error with any
format error; the control's KL has no activation quantization and isolates the export (the weights, names,
rope order, tokenizer) and the architecture's own float differences (e.g. llama.cpp's tanh GELU for BERT).

Not part of `make test` (it needs the build). Exit status 1 if a check fails; `--json FILE` writes the numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

LLAMA_CPP_PYTHON = "0.3.36"
CACHE = Path(os.environ.get("WQUANT_LLAMA_CPP_CACHE", "~/.cache/wquant/llama-cpp")).expanduser()
TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
KL_TARGET = 1e-4  # the target for the quantized file (reported; k-quant kernels miss it, see below)
COSINE_TARGET = 0.9999
#: What the check enforces. The F32 control of wquant's dequantized weights must match to float rounding (the
#: export is exact); the quantized file within llama.cpp's activation-quantization error, measured at
#: 3.7e-5 (Q4_0, IQ4_NL: Q8_0 activations) and 1.4e-4 (Q4_K, Q6_K alike: Q8_K activations) mean KL/token.
CONTROL_KL_LIMIT = 1e-8
KL_LIMIT = 5e-4
CONTROL_COSINE_LIMIT = 0.99999
F32 = 0  # GGML_TYPE_F32: a float32 KV cache, so the comparison measures the weights, not an f16 cache
COSINE_LIMIT = 0.999
TESTBED = {"hidden_size": 256, "layers": 2, "heads": 4, "intermediate_size": 512, "steps": 300, "threads": 1}
MIXED = {
    "*q_proj": "q4_k", "*k_proj": "q6_k", "*v_proj": "q8_0", "*o_proj": "iq4_xs", "*gate_proj": "q3_k",
    "*up_proj": "q5_k", "*down_proj": "q2_k", "lm_head": "q6_k", "*embed_tokens": "q4_0",
}  # fmt: skip
SENTENCES = [
    "A man is playing a guitar.",
    "The new movie is awesome, and the popcorn was great too.",
    "Quantized weights must still compute the same embeddings.",
    "llama.cpp reads GGUF files written by wquant.",
]


def llama_cpp_module():  # noqa: ANN201
    """llama_cpp from the cache, building it from the sdist first if it is not there."""
    target = CACHE / LLAMA_CPP_PYTHON
    if not (target / "llama_cpp").is_dir():
        partial = target.with_name(target.name + ".partial")
        print(f"building llama-cpp-python {LLAMA_CPP_PYTHON} into {target} (about 15 minutes on 2 cores) ...")
        env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2),
               "CMAKE_ARGS": "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF "
                             "-DLLAMA_BUILD_TOOLS=OFF -DGGML_OPENMP=OFF"}  # fmt: skip
        packages = [f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "diskcache"]  # jinja2 and numpy come with torch
        pip = [sys.executable, "-m", "pip", "install", "--target", str(partial), "--no-deps", *packages]
        subprocess.run(pip, check=True, env=env)
        partial.rename(target)
    sys.path.insert(0, str(target))
    import llama_cpp

    return llama_cpp


def _kl_per_token(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """KL(p_wquant ‖ p_llama.cpp) per position, from (tokens, vocab) logits, in float64."""
    a = ours.astype(np.float64) - ours.max(axis=1, keepdims=True)
    b = theirs.astype(np.float64) - theirs.max(axis=1, keepdims=True)
    log_p = a - np.log(np.exp(a).sum(axis=1, keepdims=True))
    log_q = b - np.log(np.exp(b).sum(axis=1, keepdims=True))
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=1)


def dequantized_copy(base: torch.nn.Module, quantized: torch.nn.Module) -> torch.nn.Module:
    """`base` with every weight `quantized` stores replaced by its decoded values (an unquantized model)."""
    from wquant.models import quantized_modules

    out = copy.deepcopy(base)
    for path, module in quantized_modules(quantized):
        out.get_submodule(path).weight.data = module.weight.detach().clone()
    return out


def _llama_logits(llama_cpp, path: Path, ids: list[int]) -> np.ndarray:  # noqa: ANN001
    llm = llama_cpp.Llama(str(path), n_ctx=max(256, len(ids) + 8), logits_all=True, n_threads=2, n_batch=512,
                          verbose=False, type_k=F32, type_v=F32)  # fmt: skip
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def check_testbed(llama_cpp, work: Path, tokens: int) -> list[dict[str, object]]:  # noqa: ANN001
    from wquant.evaluate.testbed import TrainConfig, cached_testbed, heldout_text
    from wquant.export import Source, export
    from wquant.models import QuantizeConfig, load_pretrained, quantize_

    folder = cached_testbed(TEXT, TrainConfig(**TESTBED), progress=True)
    loaded = load_pretrained(folder)
    text = heldout_text(folder, TEXT)[: 4 * tokens]
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    rows = []
    for name, config in [
        ("Q4_0", QuantizeConfig("q4_0", targets=("linear", "embedding"))),
        ("Q4_K", QuantizeConfig("q4_k", targets=("linear", "embedding"))),
        ("Q6_K", QuantizeConfig("q6_k", targets=("linear", "embedding"))),
        ("IQ4_NL", QuantizeConfig("iq4_nl", targets=("linear", "embedding"))),
        ("mixed", QuantizeConfig("q4_k", targets=("linear", "embedding"), overrides=MIXED)),
    ]:
        model = copy.deepcopy(loaded.model)
        quantize_(model, config)
        path = work / f"testbed-{name}.gguf"
        report = export(Source(model, loaded.tokenizer, folder, True), "gguf", path, force=True)
        with torch.inference_mode():
            ours = model(torch.tensor([ids])).logits[0].float().numpy()
        vocab_only = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        same_ids = vocab_only.tokenize(text.encode("utf-8"), add_bos=False, special=False)[: len(ids)] == ids
        del vocab_only
        kl = _kl_per_token(ours, _llama_logits(llama_cpp, path, ids))
        control = work / f"testbed-{name}-dequantized-f32.gguf"
        export(Source(dequantized_copy(loaded.model, model), loaded.tokenizer, folder, False), "gguf", control,
               force=True)  # fmt: skip
        kl_control = _kl_per_token(ours, _llama_logits(llama_cpp, control, ids))
        rows.append({"file": name, "types": report.summary(), "bytes": report.file_bytes, "tokens": len(ids),
                     "same_token_ids": same_ids, "mean_kl": float(kl.mean()), "max_kl": float(kl.max()),
                     "control_f32_mean_kl": float(kl_control.mean()), "meets_target": bool(kl.mean() <= KL_TARGET),
                     "ok": bool(same_ids and kl.mean() <= KL_LIMIT and kl_control.mean() <= CONTROL_KL_LIMIT),
                     })  # fmt: skip
        print(json.dumps(rows[-1]))
    return rows


def check_minilm(llama_cpp, work: Path) -> dict[str, object]:  # noqa: ANN001
    from wquant.export import Source, export
    from wquant.models import QuantizeConfig, load_pretrained, quantize_, sentence_embeddings

    loaded = load_pretrained("minilm")
    base = copy.deepcopy(loaded.model)
    model = loaded.model
    quantize_(model, QuantizeConfig("q8_0", overrides={"*intermediate.dense": "iq4_nl", "*.output.dense": "q4_0"}))
    path = work / "minilm.gguf"
    report = export(Source(model, loaded.tokenizer, loaded.path, True), "gguf", path, force=True)
    ours = sentence_embeddings(model, loaded.tokenizer, SENTENCES).numpy()

    def min_cosine(file: Path, reference: np.ndarray) -> float:
        llm = llama_cpp.Llama(str(file), embedding=True, n_ctx=512, n_threads=2, verbose=False,
                              pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)  # fmt: skip
        theirs = np.array([llm.embed(s) for s in SENTENCES], dtype=np.float64)
        cosine = (reference * theirs).sum(axis=1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(theirs, axis=1)
        return float(cosine.min())

    control = work / "minilm-dequantized-f32.gguf"
    export(Source(dequantized_copy(base, model), loaded.tokenizer, loaded.path, False), "gguf", control, force=True)
    unquantized = work / "minilm-f32.gguf"
    export(Source(base, loaded.tokenizer, loaded.path, False), "gguf", unquantized, force=True)
    reference = sentence_embeddings(base, loaded.tokenizer, SENTENCES).numpy()
    cosine, control_cosine = min_cosine(path, ours), min_cosine(control, ours)
    row = {"file": "minilm", "types": report.summary(), "bytes": report.file_bytes, "min_cosine": cosine,
           "control_f32_dequantized_min_cosine": control_cosine,
           "unquantized_f32_min_cosine": min_cosine(unquantized, reference), "meets_target": cosine >= COSINE_TARGET,
           "ok": bool(cosine >= COSINE_LIMIT and control_cosine >= CONTROL_COSINE_LIMIT)}  # fmt: skip
    print(json.dumps(row))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=192, help="held-out tokens per testbed check")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    llama_cpp = llama_cpp_module()
    with tempfile.TemporaryDirectory(prefix="wquant-interop-") as tmp:
        rows = check_testbed(llama_cpp, Path(tmp), args.tokens)
        rows.append(check_minilm(llama_cpp, Path(tmp)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    failed = [r["file"] for r in rows if not r["ok"]]
    print("interop:", "all checks pass" if not failed else f"FAILED {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
