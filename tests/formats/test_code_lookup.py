"""The table-look-up encoder against a brute-force nearest-level search, ties and dtypes included.

The oracle is written here: the distance to every level, nearest wins, an exact tie goes to the level
farther from zero. It knows nothing of boundaries, cells or thresholds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wquant.formats import parse_spec
from wquant.formats.grouping import codebook_of as _codebook


def _nearest_level(x: torch.Tensor, levels: np.ndarray) -> torch.Tensor:
    """Brute force in extended precision, so a distance near a tie is not itself rounded."""
    xd = x.double().numpy().astype(np.longdouble)[:, None]
    dist = np.abs(xd - levels.astype(np.longdouble)[None, :])
    tied = dist == dist.min(axis=1, keepdims=True)
    # among tied levels take the one with the largest |level| (away from zero)
    return torch.as_tensor(np.where(tied, np.abs(levels)[None, :], -1.0).argmax(axis=1))


def _exact_midpoints(levels: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Midpoints of adjacent levels that `dtype` holds exactly: the true ties."""
    exact = (levels[1:].astype(np.longdouble) + levels[:-1]) / 2
    held = torch.as_tensor(exact.astype(np.float64), dtype=dtype).double().numpy()
    return held[held.astype(np.longdouble) == exact]


@pytest.mark.parametrize("spec", ["nf4/block64:absmax:fp32", "e2m1/block32:absmax:e8m0", "af4/block64:absmax:bf16",
                                  "e3m2/block32:absmax:e8m0", "e4m3/tensor:absmax:fp32"])  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_look_up_encoder_is_nearest_level_with_ties_away_from_zero(spec: str, dtype: torch.dtype) -> None:
    book = _codebook(parse_spec(spec), None)
    levels = np.asarray(book.levels, dtype=np.float64)
    mids = _exact_midpoints(levels, dtype)
    gen = torch.Generator().manual_seed(5)
    span = float(np.abs(levels).max())
    x = torch.cat([
        torch.randn(300_000, generator=gen, dtype=dtype) * span / 2.5,
        torch.as_tensor(mids, dtype=dtype), torch.as_tensor(levels, dtype=dtype),
        torch.as_tensor(mids, dtype=dtype).nextafter(torch.tensor(np.inf, dtype=dtype)),
        torch.as_tensor(mids, dtype=dtype).nextafter(torch.tensor(-np.inf, dtype=dtype)),
        torch.tensor([3 * span, -3 * span, 0.0, -0.0], dtype=dtype),
    ])  # fmt: skip
    assert torch.equal(book.encode(x).to(torch.int64), _nearest_level(x, levels))


def test_block_encoder_matches_normalising_first() -> None:
    book = _codebook(parse_spec("nf4/block64:absmax:fp32"), None)
    gen = torch.Generator().manual_seed(6)
    blocks = torch.randn(3000, 64, generator=gen)
    scales = blocks.abs().amax(dim=1)
    scales[7] = 0.0  # an all-zero block's scale counts as 1
    blocks[7] = 0.0
    offsets = torch.randn(3000, generator=gen) * 0.1
    want = book.encode((blocks - offsets[:, None]) / torch.where(scales == 0, 1.0, scales)[:, None])
    assert torch.equal(book.encode_blocks(blocks, scales, offsets), want)
