"""llm-compressor's SmoothQuant and AWQ on the causal testbed, run in llm-compressor's own venv.

    /tmp/llmc-venv/bin/python benchmarks/llmcompressor_models.py CALIB_DIR

llm-compressor (0.14, compressed-tensors 0.19) pins transformers 5.17, so it lives in a venv of its own (torch CPU
wheel + `pip install llmcompressor==0.14.0.1`); wquant is not imported here. `benchmarks/activations.py` writes
CALIB_DIR/calib.safetensors (the token windows wquant calibrates on, so both see the very same data) and
CALIB_DIR/request.json (the testbed folder); this script runs each recipe with `oneshot` and writes, per
recipe, CALIB_DIR/<name>.safetensors: the full state dict with every quantized Linear weight replaced by its
fake-quantized value (compressed-tensors' own `fake_quantize` on the module's scale and zero point) and the
smoothed full-precision weights under `smoothed.<param>`, plus <name>.json (scheme, stored dtypes, seconds).
`activations.py` evaluates them with wquant's metrics; its reference check compares the smoothing scales.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader


def recipes(group: int) -> dict[str, list[object]]:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    def w4() -> dict[str, QuantizationScheme]:  # W4A16_ASYM at the testbed's group size
        args = QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group", group_size=group)
        return {"group_0": QuantizationScheme(targets=["Linear"], weights=args)}

    return {
        "llmc-smoothquant-only": [SmoothQuantModifier(smoothing_strength=0.5)],
        "llmc-awq-w4a16": [AWQModifier(duo_scaling=True), QuantizationModifier(config_groups=w4(), ignore=[])],
        "llmc-gptq-w4a16": [GPTQModifier(config_groups=w4(), ignore=[])],
        "llmc-rtn-w4a16": [QuantizationModifier(config_groups=w4(), ignore=[])],
        "llmc-smoothquant-w8a8": [
            SmoothQuantModifier(smoothing_strength=0.5),
            QuantizationModifier(targets="Linear", scheme="W8A8", ignore=[]),
        ],
    }


def cpu_only() -> None:
    """llm-compressor 0.14's AWQ pins cached activations for faster GPU onloading (`IntermediatesCache.pin_memory`),
    which raises without an accelerator; on a CPU-only machine pinning is meaningless, so it is skipped."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None  # type: ignore[method-assign]


def fake_quantized_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    stored: dict[str, str] = {}
    for name, module in model.named_modules():
        scheme = getattr(module, "quantization_scheme", None)
        scale = getattr(module, "weight_scale", None)
        if scheme is None or scheme.weights is None or scale is None:
            continue
        zero = getattr(module, "weight_zero_point", None)
        weight = module.weight.detach()
        state[f"smoothed.{name}.weight"] = weight.clone().contiguous()
        state[f"{name}.weight"] = fake_quantize(weight, scale, zero, scheme.weights).detach().contiguous()
        stored[name] = f"scale {scale.dtype} {tuple(scale.shape)}; zero {None if zero is None else zero.dtype}"
    for key in [k for k in state if "weight_scale" in k or "weight_zero_point" in k or "_observer" in k]:
        state.pop(key)
    return state, stored


def main() -> None:
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    cpu_only()
    folder = Path(sys.argv[1])
    request = json.loads((folder / "request.json").read_text())
    ids = load_file(str(folder / "calib.safetensors"))["input_ids"]
    rows = [{"input_ids": ids[i : i + 1], "attention_mask": torch.ones_like(ids[i : i + 1])} for i in range(len(ids))]
    wanted = sys.argv[2:] or list(recipes(request["group"]))
    for name, recipe in recipes(request["group"]).items():
        if name not in wanted or (folder / f"{name}.safetensors").exists():
            continue
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(request["model"], dtype=torch.float32)
        loader = DataLoader(rows, batch_size=None)
        start = time.perf_counter()
        oneshot(model=model, dataset=loader, recipe=recipe, num_calibration_samples=len(rows), pipeline="sequential")
        seconds = time.perf_counter() - start
        state, stored = fake_quantized_state(model)
        save_file(state, str(folder / f"{name}.safetensors"))
        import compressed_tensors
        import llmcompressor

        info = {"seconds": seconds, "stored": stored, "llmcompressor": llmcompressor.__version__,
                "compressed_tensors": compressed_tensors.__version__, "torch": torch.__version__}  # fmt: skip
        (folder / f"{name}.json").write_text(json.dumps(info, indent=1))
        print(f"{name}: {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
