"""Seeded layers with correlated inputs and the layer objective, shared by the algorithm tests.

A uniquely named module (not conftest) so `from ... import` cannot pick up another directory's conftest.
"""

from __future__ import annotations

import torch


def correlated_layer(
    rows: int, cols: int, tokens: int, seed: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """A Gaussian weight and inputs with strongly correlated features (a random mixing of white noise)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    mix = torch.randn(cols, cols, generator=gen, dtype=torch.float64) / cols**0.5 + 0.3 * torch.eye(cols)
    scale = torch.rand(cols, generator=gen, dtype=torch.float64) * 2 + 0.1  # uneven feature energies
    x = (torch.randn(tokens, cols, generator=gen, dtype=torch.float64) @ mix) * scale
    return weight.to(dtype), x.to(dtype)


def output_error(weight: torch.Tensor, dequantized: torch.Tensor, x: torch.Tensor) -> float:
    """‖(W − Ŵ)Xᵀ‖², the layer objective, in float64."""
    return float(((weight.double() - dequantized.double()) @ x.double().T).square().sum())
