"""llama.cpp's own quantizer vs wquant's GGUF files on the causal testbed, at equal tensor bytes.

Both sides are run by llama.cpp (llama-cpp-python, built once by `benchmarks/interop_llamacpp.py`); the metric
is llama-perplexity's `--kl-divergence` statistic, the mean over held-out tokens of KL(p_F32 ‖ p_quantized),
with the F32 file (wquant's unquantized export) as reference. llama.cpp side: `llama_model_quantize` with the
Q3_K_M, Q4_K_M, IQ4_XS and Q5_K_M recipes, **without** an importance matrix (the Python bindings cannot pass
one and the imatrix tool is not built). wquant side, at the same tensor bytes: a Fisher mix of GGUF types
(`advise --formats gguf`) quantized with GPTQ on the training text. `--json FILE` writes the rows.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interop_llamacpp import F32, TESTBED, TEXT, _kl_per_token, llama_cpp_module  # noqa: E402

RECIPES = ("Q3_K_M", "Q4_K_M", "IQ4_XS", "Q5_K_M")


def _tensor_bytes(path: Path) -> int:
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)


def _logits(llama_cpp, path: Path, windows: list[list[int]]) -> list[np.ndarray]:  # noqa: ANN001
    llm = llama_cpp.Llama(str(path), n_ctx=512, logits_all=True, n_threads=2, n_batch=512, verbose=False,
                          type_k=F32, type_v=F32)  # fmt: skip
    out = []
    for ids in windows:
        llm.reset()
        llm.eval(ids)
        out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    del llm
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=16, help="held-out windows of 128 tokens")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    llama_cpp = llama_cpp_module()

    from wquant.algorithms.gptq import GPTQConfig
    from wquant.allocation import FisherConfig, allocate, estimate_fisher, measure_candidates
    from wquant.data import calibration_windows
    from wquant.evaluate.testbed import TrainConfig, cached_testbed, heldout_text, split_text
    from wquant.export import Source, export
    from wquant.models import load_pretrained, model_bits, quantize_

    folder = cached_testbed(TEXT, TrainConfig(**TESTBED), progress=True)
    loaded = load_pretrained(folder)
    tok = loaded.tokenizer
    held = tok(heldout_text(folder, TEXT), add_special_tokens=False)["input_ids"]
    windows = [held[i * 128 : (i + 1) * 128] for i in range(args.windows)]
    train_text = split_text(TEXT.read_text(encoding="utf-8"), 0.9)[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="wquant-peers-") as tmp:
        work = Path(tmp)
        (work / "train.txt").write_text(train_text, encoding="utf-8")
        calibration = calibration_windows(tok, work / "train.txt", nsamples=64, seqlen=128, seed=0)
        f32 = work / "f32.gguf"
        export(Source(loaded.model, tok, folder, False), "gguf", f32)
        reference = _logits(llama_cpp, f32, windows)

        def mean_kl(path: Path) -> float:
            quantized = _logits(llama_cpp, path, windows)
            return float(
                np.mean(np.concatenate([_kl_per_token(r, q) for r, q in zip(reference, quantized, strict=True)]))
            )

        fisher = estimate_fisher(loaded.model, tok, train_text[:200_000], "causal-lm",
                                 FisherConfig(window=128, max_windows=64))  # fmt: skip
        table = measure_candidates(loaded.model, fisher, ("gguf",), (4,))
        params = model_bits(loaded.model).params
        for recipe in RECIPES:
            qparams = llama_cpp.llama_model_quantize_default_params()
            qparams.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{recipe}")
            qparams.nthread = 2
            theirs = work / f"llama-{recipe}.gguf"
            if llama_cpp.llama_model_quantize(str(f32).encode(), str(theirs).encode(), ctypes.byref(qparams)):
                raise RuntimeError(f"llama_model_quantize failed for {recipe}")
            their_bytes = _tensor_bytes(theirs)
            plan = allocate(table, their_bytes * 8 / params)
            model = copy.deepcopy(loaded.model)
            quantize_(model, plan.quantize_config(GPTQConfig()), calibration=calibration)
            ours = work / f"wquant-{recipe}.gguf"
            report = export(Source(model, tok, folder, True), "gguf", ours)
            row = {"budget": recipe, "llama_bytes": their_bytes, "llama_kl": mean_kl(theirs),
                   "wquant_bytes": _tensor_bytes(ours), "wquant_kl": mean_kl(ours),
                   "wquant_types": report.summary()}  # fmt: skip
            row["ratio"] = row["wquant_kl"] / row["llama_kl"]
            rows.append(row)
            print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
