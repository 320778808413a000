"""Block scales fitted on their own codes: how two-level (k-quant) formats choose scales and offsets.

A two-level format stores block scales as small integers, so the rule's scale (absmax, minmax) is only a
starting point. For every block at once: try the rule's scale times each candidate multiplier, round the
block onto the grid, refit scale (and offset) by weighted least squares on those rounded levels, round again,
and keep whichever of all these has the least weighted squared error. This is the search llama.cpp runs one
block at a time for its k-quants (a range of inverse scales around the block's, each followed by a weighted
least-squares refit, its `make_qkx2_quants`/`make_qx_quants`), written here as a few vectorised passes over
the whole tensor. The weights are the caller's importance (e.g. diag(H) under GPTQ), or 1 (plain MSE).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from wquant.formats.codebook import Codebook

#: Scale multipliers tried per block (1.0 included): from a 30 % clip to a 15 % wider range.
FIT_MULTIPLIERS: tuple[float, ...] = tuple(float(c) for c in np.linspace(0.7, 1.15, 10)) + (1.0,)


def fit_block_scales(
    blocks: torch.Tensor,
    book: Codebook,
    scales: torch.Tensor,
    offsets: torch.Tensor | None,
    weights: torch.Tensor | None = None,
    multipliers: Sequence[float] = FIT_MULTIPLIERS,
    *,
    signed: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per block, the (scale, offset) with the least weighted error among the candidates and their refits.

    blocks: (rows, groups, B) values (whole blocks, no padding); scales, offsets: (rows, groups) starting
    values (value = scale·level + offset); weights: (rows, groups, B) ≥ 0 or None. Offsets are kept ≤ 0
    (two-level offsets store −dmin·m with m ≥ 0); unsigned scales (`signed=False`) are kept ≥ 0.
    """
    x = blocks
    w = torch.ones_like(x) if weights is None else weights.to(x.dtype)
    sum_w = w.sum(dim=-1)
    sum_x = (w * x).sum(dim=-1)

    def levels(s: torch.Tensor, o: torch.Tensor | None) -> torch.Tensor:
        return book.decode(book.encode_blocks(x, s, o), x.dtype)

    def error(q: torch.Tensor, s: torch.Tensor, o: torch.Tensor | None) -> torch.Tensor:
        approx = q * s[..., None]
        if o is not None:
            approx = approx + o[..., None]
        return ((approx - x).square() * w).sum(dim=-1)

    def refit(q: torch.Tensor, s: torch.Tensor, o: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        wq = w * q
        sum_qq, sum_qx = (wq * q).sum(dim=-1), (wq * x).sum(dim=-1)
        scale_only = torch.where(sum_qq > 0, sum_qx / sum_qq.clamp(min=1e-30), s)
        if o is None:
            new_s = scale_only if signed else torch.where(scale_only > 0, scale_only, s)
            return new_s, None
        sum_q = wq.sum(dim=-1)
        det = sum_w * sum_qq - sum_q * sum_q
        ok = det > 1e-12 * (sum_w * sum_qq).clamp(min=1e-30)
        safe = torch.where(ok, det, torch.ones_like(det))
        new_s = (sum_w * sum_qx - sum_q * sum_x) / safe
        new_o = (sum_qq * sum_x - sum_q * sum_qx) / safe
        positive = new_o > 0  # the offset must stay ≤ 0: refit the scale alone with the offset at 0
        new_s = torch.where(positive, scale_only, new_s)
        new_o = torch.where(positive, torch.zeros_like(new_o), new_o)
        keep = ~ok | ~(new_s > 0)
        return torch.where(keep, s, new_s), torch.where(keep, o, new_o)

    best_s, best_o = scales, offsets
    best_err = error(levels(scales, offsets), scales, offsets)
    for c in multipliers:
        s = scales * float(c)
        q = levels(s, offsets)
        for cand_s, cand_o, cand_q in ((s, offsets, q), (*refit(q, s, offsets), None)):
            err = error(levels(cand_s, cand_o) if cand_q is None else cand_q, cand_s, cand_o)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s = torch.where(better, cand_s, best_s)
            if best_o is not None and cand_o is not None:
                best_o = torch.where(better, cand_o, best_o)
    return best_s, best_o
