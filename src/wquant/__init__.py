"""wquant: weight quantization from theory to shipped weights."""

__version__ = "0.1.0"
