"""GPTQ: round one input column at a time and push its error onto the columns not yet rounded.

The layer objective ‖(W − Ŵ)X‖² is the quadratic form of H = 2XXᵀ, so once column j is rounded, the
best correction of the remaining columns is the OBS update through the inverse Hessian. Its upper
Cholesky factor gives those updates row by row; lazy blocks of columns turn them into matrix products.

Rounding goes through the format's own codebook and the group's scale, so every element grid (INT, FP,
NF4, cube-root, power, LUT, fitted tables) works, not only uniform ones. A group's scale is fixed when
GPTQ first reaches one of its columns, from the error-corrected weights at that moment ("dynamic"
groups; the reference repository's behaviour when groups follow column order), or up front from the
original weights (`static_groups`, the usual choice with act-order). Under two-level (k-quant) scaling the
unit fixed at once is the super-block: its block scales are fitted together (`formats.fit`, weighted by
diag(H), as llama.cpp weights its k-quant fits by an importance matrix) and stored under one super-block number.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch

from wquant.algorithms.common import (
    check_hessian,
    check_weight,
    is_budget_spec,
    refuse_clip_search_on_unbounded_grid,
    solve_at_budget,
)
from wquant.algorithms.registry import Quantized, hessian_of, register
from wquant.algorithms.rtn import RTNConfig, rtn, search_scales
from wquant.algorithms.statistics import LayerStatistics
from wquant.errors import ConvergenceError, ParameterError
from wquant.formats import (
    DEFAULT_FORMAT,
    FormatSpec,
    GroupScales,
    QuantizedTensor,
    TensorLayout,
    as_2d,
    parse_spec,
    prepare_layout,
)
from wquant.validation import check_int_range, check_positive


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

    format: str | FormatSpec = DEFAULT_FORMAT
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

    @property
    def uses_calibration(self) -> bool:
        return True

    def with_format(self, spec: FormatSpec | str) -> GPTQConfig:
        return replace(self, format=parse_spec(spec))


@dataclass(frozen=True)
class GPTQResult:
    quantized: QuantizedTensor
    loss: float  # Σ (w − q)² / [H⁻¹]_jj / 2, GPTQ's own error estimate
    damping: float  # damping finally used, as a fraction of mean(diag H)
    dead_columns: int  # inputs that never fired (diag H = 0)


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
    layout = prepare_layout(weight, config.spec, name=name)
    w = as_2d(weight.detach()).to(dtype).clone()
    rows, cols = w.shape
    h = check_hessian(hessian, cols, name).to(dtype).clone()

    dead = h.diagonal() == 0
    if bool(dead.all()):
        raise ConvergenceError(f"{name}: Hessian is all zero; no calibration signal reached this layer")
    h.diagonal()[dead] = 1.0  # an input that never fired: its column is rounded plainly, no feedback needed
    perm = column_order(h.diagonal(), layout.unit_len, config.act_order)
    inv_perm = torch.argsort(perm)
    w, h = w[:, perm], h[perm][:, perm]
    upper, level = damped_inverse_factor(h, config.damp, config.max_damp, name)
    diag_h = h.diagonal().clone()
    del h

    mask, stored_outliers = layout.outlier_mask(), layout.outlier_values(dtype)
    original = layout.without_outliers(as_2d(weight.detach()).to(dtype))
    fixed: dict[int, GroupScales] = {}
    if config.static_groups or layout.spec.scaling.granularity != "block":  # else fixed when GPTQ reaches them
        if config.scale_search:
            importance = diag_h[inv_perm].expand(rows, cols)
            scales = search_scales(layout, original, importance, 0.5, 1.0, config.search_grid)
        else:
            scales = layout.choose_scales(original, importance=diag_h[inv_perm].expand(rows, cols))
        fixed = {u: layout.unit_scales(scales, u) for u in range(layout.units)}

    codes = torch.empty(rows, cols, dtype=torch.int64)
    loss = torch.zeros((), dtype=dtype)
    order = perm.tolist()
    rounders: dict[int, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {}
    per = layout.groups_per_unit
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
            g = col // layout.group_len
            if g not in rounders:
                u = g // per  # the unit (group, or super-block) whose scales are fixed together
                if u not in fixed:
                    done = (diffs_t[:i] / d[:i, None]).T
                    current = _current_group(layout, u, w, block_t.T, done, upper, inv_perm, i1)
                    fixed[u] = _fix_group(layout, u, current, diag_h[inv_perm[_cols(layout, u)]], config)
                rounders[g] = column_rounder(layout, fixed[u].columns(g - u * per, g - u * per + 1), dtype)
            x = block_t[i]
            if mask is None:
                code, q = rounders[g](x)
            else:  # an outlier is stored exactly; its code is that of 0
                code, q = rounders[g](x.masked_fill(mask[:, col], 0.0))
                q = torch.where(mask[:, col], stored_outliers[:, col], q)  # type: ignore[index]
            codes_t[i] = code
            diff = torch.sub(x, q, out=diffs_t[i])
            block_t[i + 1 :].addr_(u_scaled[i, i + 1 :], diff, alpha=-1.0)
        errors_t = diffs_t.div_(d.unsqueeze(1))
        loss += errors_t.square().sum() / 2
        codes[:, perm[i1:i2]] = codes_t.T.to(torch.int64)
        if i2 < cols:
            w[:, i2:].addmm_(errors_t.T, upper[i1:i2, i2:], alpha=-1.0)
    scales = GroupScales.cat([fixed[u] for u in range(layout.units)])
    return GPTQResult(layout.assemble(codes, scales), float(loss), level, int(dead.sum()))


def column_rounder(
    layout: TensorLayout, scales: GroupScales, dtype: torch.dtype
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Round single (rows,) columns of one group column: (codes as floats, values), the scale prepared once.

    GPTQ rounds one column at a time, so per-call set-up dominates on small layers. Step (uniform) grids get
    the same arithmetic as Codebook.encode/decode written out in place.
    """
    s = scales.scales[:, 0].to(dtype).expand(layout.rows).contiguous()
    o = None if scales.offsets is None else scales.offsets[:, 0].to(dtype).expand(layout.rows).contiguous()
    book = layout.book
    safe = torch.where(s == 0, torch.ones_like(s), s)
    if book.step is None:

        def round_table(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            codes = book.encode(x / safe if o is None else (x - o) / safe)
            values = book.decode(codes, x.dtype) * s
            return codes.to(x.dtype), (values if o is None else values + o)

        return round_table
    lo, step, top = book.lo, book.step, float(book.size - 1)

    def round_step(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shifted = x / safe if o is None else (x - o).div_(safe)
        codes = shifted.sub_(lo).div_(step).round_().clamp_(0.0, top)
        values = (codes * step).add_(lo).mul_(s)
        return codes, (values if o is None else values.add_(o))

    return round_step


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


def _cols(layout: TensorLayout, u: int) -> torch.Tensor:
    return torch.arange(layout.cols)[layout.unit_cols(u)]


def _current_group(
    layout: TensorLayout,
    g: int,
    w: torch.Tensor,
    block: torch.Tensor,
    errors: torch.Tensor,
    upper: torch.Tensor,
    inv_perm: torch.Tensor,
    i1: int,
) -> torch.Tensor:
    """Unit g's current (error-corrected) values, (rows, its columns) in storage order.

    None of its columns is rounded yet. Those inside the lazy block are up to date in `block`; those after it
    still lack the corrections of this block's columns rounded so far (`errors`), applied here on the fly.
    """
    pos = inv_perm[_cols(layout, g)]
    i2 = i1 + block.shape[1]
    current = torch.empty(layout.rows, pos.numel(), dtype=w.dtype)
    inside = pos < i2
    current[:, inside] = block[:, pos[inside] - i1]
    later = pos[~inside]
    if later.numel():
        i = errors.shape[1]
        pending = errors @ upper[i1 : i1 + i, later] if i else 0.0
        current[:, ~inside] = w[:, later] - pending
    return current


def _fix_group(
    layout: TensorLayout, g: int, current: torch.Tensor, importance: torch.Tensor, config: GPTQConfig
) -> GroupScales:
    """Unit g's scales from its current values (outliers zeroed), clip searched by diag(H) if asked (two-level
    block scales are always fitted, weighted by diag(H))."""
    mask = layout.outlier_mask()
    x = current if mask is None else current.masked_fill(mask[:, layout.unit_cols(g)], 0.0)
    if config.scale_search:
        return search_scales(_one_group(layout, g), x, importance.expand_as(x), 0.5, 1.0, config.search_grid)
    return layout.choose_scales(x, importance=importance.expand_as(x))


def _one_group(layout: TensorLayout, g: int) -> TensorLayout:
    """The layout of unit g alone (its outliers included), for a clip search on that unit."""
    cols = layout.unit_cols(g)
    width = cols.stop - cols.start
    index = layout.outlier_index
    rows_of, cols_of = index // layout.cols, index % layout.cols
    inside = (cols_of >= cols.start) & (cols_of < cols.stop)
    sub_index = rows_of[inside] * width + cols_of[inside] - cols.start
    return replace(layout, shape=(layout.rows, width), outlier_index=sub_index,
                   outlier_codes=layout.outlier_codes[inside.numpy()])  # fmt: skip


def _gptq_handler(weight: torch.Tensor, config: GPTQConfig, stats: LayerStatistics | None, name: str) -> Quantized:
    hessian = hessian_of(stats)
    if hessian is None:
        return Quantized(rtn(weight, RTNConfig(config.spec, search=False), name=name), "no inputs: RTN fallback")
    result = gptq(weight, hessian, config, name=name)
    return Quantized(result.quantized, f"damping {result.damping:g}" if result.damping != config.damp else "")


register("gptq", GPTQConfig, _gptq_handler, from_format=lambda spec: GPTQConfig(spec),
         summary="GPTQ: round column by column, push each error onto the rest via the inverse Hessian")  # fmt: skip
