"""GPTQ: round one input column at a time and push its error onto the columns not yet rounded.

The layer objective ‖(W − Ŵ)X‖² is the quadratic form of H = 2XXᵀ, so once column j is rounded, the
best correction of the remaining columns is the OBS update through the inverse Hessian. Its upper
Cholesky factor gives those updates row by row; lazy blocks of columns turn them into matrix products.

Rounding goes through the format's own codebook and the group's scale, so every element grid (INT, FP,
NF4, cube-root, power, LUT, fitted tables) works, not only uniform ones. A group's scale is fixed when
GPTQ first reaches one of its columns, from the error-corrected weights at that moment ("dynamic"
groups; the reference repository's behaviour when groups follow column order), or up front from the
original weights (`static_groups`, the usual choice with act-order).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch

from wquant.algorithms._grid import (
    GroupGrid,
    as_2d,
    check_hessian,
    check_weight,
    is_budget_spec,
    prepare,
    refuse_clip_search_on_unbounded_grid,
    solve_at_budget,
)
from wquant.algorithms.rtn import search_multipliers
from wquant.errors import ConvergenceError, ParameterError
from wquant.formats import FormatSpec, QuantizedTensor, parse_spec
from wquant.validation import check_int_range, check_positive, check_tensor


class DampingWarning(UserWarning):
    """The Hessian needed more damping than asked for (near-singular calibration statistics)."""


@dataclass(frozen=True)
class GPTQConfig:
    """GPTQ settings (defaults are the reference's).

    damp: damping as a fraction of mean(diag H); raised ×10 up to `max_damp` if Cholesky fails.
    block_size: columns per lazy batch.
    act_order: the order columns are rounded in. False: as stored. True: by descending diag(H) across the
      whole row (the reference's act-order). "group" (default): groups stay whole and go by their largest
      diag(H), columns inside a group by descending diag(H) (group-aware reordering, GAR; gptqmodel's default).
      Each group still sees its most important inputs first, and no group is split across the row, so
      dynamic group scales stay as good as in natural order. Storage never changes: no g_idx is needed.
    static_groups: fix every group's scale from the original weights before rounding.
    scale_search: pick each group's clip (when it is fixed) by diag(H)-weighted error, like RTNConfig.
    dtype: float32 or float64 arithmetic.
    """

    format: str | FormatSpec = "int4/block128:absmax:bf16"
    damp: float = 0.01
    max_damp: float = 10.0
    block_size: int = 128
    act_order: bool | Literal["group"] = "group"
    static_groups: bool = False
    scale_search: bool = False
    search_grid: int = 16
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", parse_spec(self.format))
        check_positive(self.damp, "GPTQ damping", allow_zero=True)
        check_positive(self.max_damp, "GPTQ max damping")
        check_int_range(self.block_size, "GPTQ block size", 1)
        check_int_range(self.search_grid, "GPTQ scale search grid", 2, 4096)
        if self.scale_search:
            refuse_clip_search_on_unbounded_grid(self.spec)
        if self.act_order not in (False, True, "group"):
            raise ParameterError(f"GPTQ act_order must be False, True or 'group', got {self.act_order!r}")
        if self.dtype not in (torch.float32, torch.float64):
            raise ParameterError(f"GPTQ arithmetic must be torch.float32 or torch.float64, got {self.dtype}")

    @property
    def spec(self) -> FormatSpec:
        return self.format  # type: ignore[return-value]

    @property
    def needs_calibration(self) -> bool:
        return True


@dataclass(frozen=True)
class GPTQResult:
    quantized: QuantizedTensor
    loss: float  # Σ (w − q)² / [H⁻¹]_jj / 2, GPTQ's own error estimate
    damping: float  # damping finally used, as a fraction of mean(diag H)
    dead_columns: int  # inputs that never fired (diag H = 0)


def hessian_from_inputs(x: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """H = 2/n · XᵀX over the n rows (tokens) of `x` (..., in); the mean keeps H independent of n."""
    flat = check_tensor(x, "calibration inputs").reshape(-1, x.shape[-1]).to(dtype)
    return flat.T @ flat * (2.0 / flat.shape[0])


def damped_inverse_factor(h: torch.Tensor, damp: float, max_damp: float, name: str) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + λI)⁻¹, λ = damp·mean(diag H); λ grows ×10 until it factors.

    A singular or ill-conditioned H (too few or collinear calibration tokens) gets more damping and a
    DampingWarning; beyond `max_damp` it is a ConvergenceError rather than a silently wrong layer.
    """
    mean_diag = float(h.diagonal().mean())
    if not math.isfinite(mean_diag) or mean_diag <= 0:
        raise ConvergenceError(f"{name}: Hessian has no positive diagonal (mean {mean_diag}); no calibration signal")
    level = damp
    while True:
        damped = h.clone()
        damped.diagonal().add_(level * mean_diag)
        chol, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
            if int(info) == 0 and bool(torch.isfinite(upper).all()):
                break
        next_level = max(level * 10, 1e-6)
        if next_level > max_damp:
            raise ConvergenceError(
                f"{name}: Hessian is not positive definite even with damping {level:g}·mean(diag H); "
                "use more (and more varied) calibration data"
            )
        level = next_level
    if level != damp:
        warnings.warn(
            f"{name}: Hessian needed damping {level:g}·mean(diag H) (asked {damp:g}); calibration data may be "
            "too small or collinear", DampingWarning, stacklevel=3,
        )  # fmt: skip
    return upper, level


def gptq(
    weight: torch.Tensor, hessian: torch.Tensor, config: GPTQConfig | None = None, *, name: str = "weight"
) -> GPTQResult:
    """Quantize an (out, in) weight with GPTQ against the (in, in) Hessian of its inputs.

    A budget spec (`uniform@3.5/...+coded`) reruns the solve on a few grid steps until the coded codes fit
    the budget (`solve_at_budget`), so it costs 2–4 solves.
    """
    config = config or GPTQConfig()
    weight = check_weight(weight, name)
    if is_budget_spec(config.spec):
        return solve_at_budget(
            weight, config.spec, lambda spec: _gptq_on_grid(weight, hessian, replace(config, format=spec), name),
            lambda result: result.quantized, name=name,
        )  # fmt: skip
    return _gptq_on_grid(weight, hessian, config, name)


def _gptq_on_grid(weight: torch.Tensor, hessian: torch.Tensor, config: GPTQConfig, name: str) -> GPTQResult:
    dtype = config.dtype
    grid = prepare(weight, config.spec, dtype=dtype)
    w = as_2d(weight.detach()).to(dtype).clone()
    rows, cols = w.shape
    h = check_hessian(hessian, cols, name).to(dtype).clone()

    dead = h.diagonal() == 0
    if bool(dead.all()):
        raise ConvergenceError(f"{name}: Hessian is all zero; no calibration signal reached this layer")
    h.diagonal()[dead] = 1.0  # an input that never fired: its column is rounded plainly, no feedback needed
    perm = column_order(h.diagonal(), grid.group_len, config.act_order)
    inv_perm = torch.argsort(perm)
    w, h = w[:, perm], h[perm][:, perm]
    upper, level = damped_inverse_factor(h, config.damp, config.max_damp, name)
    diag_h = h.diagonal().clone()
    del h

    original = as_2d(weight.detach()).to(dtype)
    channel_like = grid.spec.scaling.granularity != "block"
    if not (config.static_groups or channel_like):
        grid.fixed[:] = False  # block scales are fixed when GPTQ reaches the block (from corrected weights)
    elif config.scale_search:
        importance = diag_h[inv_perm].expand(rows, cols)
        mult = search_multipliers(grid, original, importance, 0.5, 1.0, config.search_grid)
        grid.fit(original, 0, mult)

    codes = torch.empty(rows, cols, dtype=torch.int64)
    loss = torch.zeros((), dtype=dtype)
    order = perm.tolist()
    rounders: dict[int, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {}
    for i1 in range(0, cols, config.block_size):
        i2 = min(i1 + config.block_size, cols)
        # Column-major copies of the lazy block: each column and each trailing update is one contiguous run.
        block_t = w[:, i1:i2].T.contiguous()
        diffs_t = torch.empty_like(block_t)  # x − q per column; the OBS error is that over [U]_ii
        codes_t = torch.empty_like(block_t)
        u_block = upper[i1:i2, i1:i2]
        d = u_block.diagonal()
        u_scaled = u_block / d.unsqueeze(1)  # row i over [U]_ii: one outer product per column, no division
        for i in range(i2 - i1):
            col = order[i1 + i]
            g = col // grid.group_len
            if g not in rounders:
                if not bool(grid.fixed[g]):
                    done = (diffs_t[:i] / d[:i, None]).T
                    _fix_group(grid, g, w, block_t.T, done, upper, inv_perm, i1, diag_h, config)
                rounders[g] = grid.column_rounder(g, dtype)
            x = block_t[i]
            code, q = rounders[g](_outlier_input(grid, x, col))
            if grid.outlier_mask is not None:
                q = torch.where(grid.outlier_mask[:, col], grid.outlier_values[:, col], q)  # type: ignore[index]
            codes_t[i] = code
            diff = torch.sub(x, q, out=diffs_t[i])
            block_t[i + 1 :].addr_(u_scaled[i, i + 1 :], diff, alpha=-1.0)
        errors_t = diffs_t.div_(d.unsqueeze(1))
        loss += errors_t.square().sum() / 2
        codes[:, perm[i1:i2]] = codes_t.T.to(torch.int64)
        if i2 < cols:
            w[:, i2:].addmm_(errors_t.T, upper[i1:i2, i2:], alpha=-1.0)
    return GPTQResult(grid.assemble(codes), float(loss), level, int(dead.sum()))


def column_order(diag_h: torch.Tensor, group_len: int, act_order: bool | str) -> torch.Tensor:
    """The order GPTQ rounds columns in (see GPTQConfig.act_order); ties keep storage order."""
    cols = diag_h.numel()
    if act_order is False:
        return torch.arange(cols)
    if act_order is True or group_len >= cols:
        return torch.argsort(diag_h, descending=True, stable=True)
    groups = -(-cols // group_len)
    padded = torch.full((groups * group_len,), -math.inf, dtype=diag_h.dtype)
    padded[:cols] = diag_h
    values, inside = padded.view(groups, group_len).sort(dim=1, descending=True, stable=True)
    group_rank = torch.argsort(values[:, 0], descending=True, stable=True)
    order = (inside + torch.arange(groups).unsqueeze(1) * group_len)[group_rank].reshape(-1)
    return order[order < cols]


def _outlier_input(grid: GroupGrid, x: torch.Tensor, col: int) -> torch.Tensor:
    """Outlier positions are stored exactly; their code is that of 0, as in formats.quantize."""
    if grid.outlier_mask is None:
        return x
    return x.masked_fill(grid.outlier_mask[:, col], 0.0)


def _fix_group(
    grid: GroupGrid,
    g: int,
    w: torch.Tensor,
    block: torch.Tensor,
    errors: torch.Tensor,
    upper: torch.Tensor,
    inv_perm: torch.Tensor,
    i1: int,
    diag_h: torch.Tensor,
    config: GPTQConfig,
) -> None:
    """Fix group column g's scales from the current (error-corrected) values of its columns.

    None of its columns is rounded yet. Those inside the lazy block are up to date in `block`; those after it
    still lack the corrections of this block's columns rounded so far (`errors`), applied here on the fly.
    """
    cols = torch.arange(grid.cols)[grid.group_cols(g)]
    pos = inv_perm[cols]
    i2 = i1 + block.shape[1]
    current = torch.empty(grid.rows, cols.numel(), dtype=w.dtype)
    inside = pos < i2
    current[:, inside] = block[:, pos[inside] - i1]
    later = pos[~inside]
    if later.numel():
        i = errors.shape[1]
        pending = errors @ upper[i1 : i1 + i, later] if i else 0.0
        current[:, ~inside] = w[:, later] - pending
    mult: torch.Tensor | float = 1.0
    if config.scale_search:
        mult = _search_one_group(grid, g, current, diag_h[pos], config.search_grid)
    grid.fit(current, g, mult)


def _search_one_group(grid: GroupGrid, g: int, x: torch.Tensor, importance: torch.Tensor, points: int) -> torch.Tensor:
    """search_multipliers restricted to one group column, on a small grid view of it."""
    sub = GroupGrid(
        spec=grid.spec, book=grid.book, shape=tuple(x.shape), dtype=x.dtype, rows=grid.rows, cols=x.shape[1],
        table=grid.table, tensor_scale=grid.tensor_scale, scales=grid.scales[:, g : g + 1].clone(),
        scale_codes=grid.scale_codes[:, g : g + 1].copy(),
        offsets=None if grid.offsets is None else grid.offsets[:, g : g + 1].clone(),
        offset_codes=None if grid.offset_codes is None else grid.offset_codes[:, g : g + 1].copy(),
        fixed=torch.ones(1, dtype=torch.bool), outlier_index=grid.outlier_index, outlier_codes=grid.outlier_codes,
        outlier_mask=None if grid.outlier_mask is None else grid.outlier_mask[:, grid.group_cols(g)],
        outlier_values=None if grid.outlier_values is None else grid.outlier_values[:, grid.group_cols(g)],
    )  # fmt: skip
    return search_multipliers(sub, x, importance.expand_as(x), 0.5, 1.0, points)
