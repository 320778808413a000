"""Weight formats: element grids × scaling × sparse outliers, with exact bit counts.

>>> from wquant.formats import quantize
>>> q = quantize(w, "nf4/block64:absmax:fp32")
>>> q.bits_per_param(), q.dequantize()
"""

from wquant.formats.codebook import Codebook
from wquant.formats.floats import OCP_FLOATS, FloatFormat, float_format
from wquant.formats.grids import (
    AF4_LEVELS,
    NF4_LEVELS,
    CubeRootGrid,
    ElementGrid,
    FloatGrid,
    IntGrid,
    LloydMaxGrid,
    PowerGrid,
    TableGrid,
    sf4_levels,
)
from wquant.formats.grouping import as_2d, compute_dtype, view_2d
from wquant.formats.layout import GroupScales, TensorLayout, prepare_layout
from wquant.formats.quantize import quantize
from wquant.formats.quantized import QuantizedTensor
from wquant.formats.scaling import ScaleFormat, Scaling
from wquant.formats.spec import DEFAULT_FORMAT, PRESETS, FormatSpec, OutlierSpec, parse_element, parse_spec

__all__ = [
    "DEFAULT_FORMAT",
    "AF4_LEVELS",
    "NF4_LEVELS",
    "OCP_FLOATS",
    "PRESETS",
    "Codebook",
    "CubeRootGrid",
    "ElementGrid",
    "FloatFormat",
    "FloatGrid",
    "FormatSpec",
    "GroupScales",
    "IntGrid",
    "LloydMaxGrid",
    "OutlierSpec",
    "PowerGrid",
    "QuantizedTensor",
    "ScaleFormat",
    "Scaling",
    "TableGrid",
    "TensorLayout",
    "as_2d",
    "compute_dtype",
    "float_format",
    "parse_element",
    "parse_spec",
    "prepare_layout",
    "quantize",
    "sf4_levels",
    "view_2d",
]
