"""Shared fixtures for the algorithm tests: seeded correlated layers, one thread (the machine is shared)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the 2 cores are shared; small problems gain nothing from a second thread


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
