"""wquant: weight quantization from theory to shipped weights.

>>> import wquant
>>> wquant.quantize_(model, "nf4")                                     # round to nearest, every Linear
>>> wquant.quantize_(model, GPTQConfig("int4/block128:absmax:fp16"), calibration=batches)
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """`wquant.quantize_` is `wquant.models.quantize_`, imported on first use so format and theory users
    never load the model layer."""
    if name == "quantize_":
        from wquant.models.quantize import quantize_

        return quantize_
    raise AttributeError(f"module 'wquant' has no attribute {name!r}")
