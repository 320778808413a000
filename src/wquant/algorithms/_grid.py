"""Group scales and element rounding rebuilt from the format primitives.

Every algorithm here decides codes and scales itself (GPTQ fixes a group's scale when it first reaches it,
the scale search picks a clip per group, NUPES learns codes), but each must still emit a genuine
`QuantizedTensor` so bit counts, checkpoints and `dequantize()` stay exact. `GroupGrid` is that bridge:
it holds one tensor's codebook, group scales and outliers, rounds any columns onto them, and assembles the
stored fields. With no algorithm on top (`fit_static` then `round_all`) it reproduces `formats.quantize`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from wquant.errors import BudgetError, ParameterError, TensorError
from wquant.formats import Codebook, FormatSpec, QuantizedTensor, float_format, parse_spec, quantize
from wquant.formats.coding import encode_codes
from wquant.formats.grids import UniformGrid


@dataclass(eq=False)
class GroupGrid:
    """One 2-D tensor's codebook, group layout, (mutable) group scales and outliers.

    scales/offsets are the *stored* (format-rounded) values, shape (scale rows, groups); scale rows is 1 for
    tensor granularity. `fixed[g]` says whether group column g already has its scales (GPTQ's lazy groups).
    """

    spec: FormatSpec
    book: Codebook
    shape: tuple[int, ...]
    dtype: torch.dtype
    rows: int
    cols: int
    table: np.ndarray | None
    tensor_scale: float | None
    scales: torch.Tensor
    scale_codes: np.ndarray
    offsets: torch.Tensor | None
    offset_codes: np.ndarray | None
    fixed: torch.Tensor
    outlier_index: np.ndarray
    outlier_codes: np.ndarray
    outlier_mask: torch.Tensor | None  # (rows, cols) True where an outlier is stored exactly
    outlier_values: torch.Tensor | None  # (rows, cols) stored outlier values (0 elsewhere)

    @property
    def groups(self) -> int:
        return int(self.scales.shape[1])

    @property
    def group_len(self) -> int:
        """Columns per group column (all columns for channel/tensor granularity)."""
        sc = self.spec.scaling
        return int(sc.block_size) if sc.granularity == "block" else self.cols  # type: ignore[arg-type]

    def group_of(self, col: int) -> int:
        return col // self.group_len

    def group_cols(self, g: int) -> slice:
        return slice(g * self.group_len, min((g + 1) * self.group_len, self.cols))

    def column_scale(self, col: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(rows,) scale and offset that apply to one column."""
        g = self.group_of(col)
        s = self.scales[:, g].expand(self.rows)
        o = None if self.offsets is None else self.offsets[:, g].expand(self.rows)
        return s, o

    def full(self, values: torch.Tensor) -> torch.Tensor:
        """(scale rows, groups) → (rows, cols), one value per element."""
        out = values.repeat_interleave(self.group_len, dim=1)[:, : self.cols]
        return out.expand(self.rows, self.cols)

    def round(
        self, x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes and reconstructed values of `x` given per-element (broadcastable) scale and offset."""
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        shifted = x if offset is None else x - offset
        codes = self.book.encode(shifted / safe)
        values = self.book.decode(codes, x.dtype) * scale
        return codes, (values if offset is None else values + offset)

    def column_rounder(self, g: int, dtype: torch.dtype) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """`round` for single columns of group column g, with the group's scale and offset prepared once.

        GPTQ rounds one column at a time, so per-call set-up dominates on small layers. Step (uniform) grids get
        the same arithmetic as Codebook.encode/decode written out in place; codes come back as floats (exact).
        """
        s = self.scales[:, g].to(dtype).expand(self.rows).contiguous()
        o = None if self.offsets is None else self.offsets[:, g].to(dtype).expand(self.rows).contiguous()
        book = self.book
        if book.step is None:
            return lambda x: self.round(x, s, o)
        safe = torch.where(s == 0, torch.ones_like(s), s)
        lo, step, top = book.lo, book.step, float(book.size - 1)

        def round_column(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            shifted = x / safe if o is None else (x - o).div_(safe)
            codes = shifted.sub_(lo).div_(step).round_().clamp_(0.0, top)
            values = (codes * step).add_(lo).mul_(s)
            return codes, (values if o is None else values.add_(o))

        return round_column

    def round_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Round the whole (rows, cols) tensor with the current scales; outliers come back exact."""
        s = self.full(self.scales).to(x.dtype)
        o = None if self.offsets is None else self.full(self.offsets).to(x.dtype)
        codes, values = self.round(self.zero_outliers(x), s, o)
        if self.outlier_mask is not None:
            values = torch.where(self.outlier_mask, self.outlier_values.to(x.dtype), values)  # type: ignore[union-attr]
        return codes, values

    def zero_outliers(self, x: torch.Tensor) -> torch.Tensor:
        """Outlier positions read as 0 for statistics and codes, as `formats.quantize` does."""
        return x if self.outlier_mask is None else x.masked_fill(self.outlier_mask, 0.0)

    def fit(self, x: torch.Tensor, g0: int = 0, multiplier: torch.Tensor | float = 1.0) -> None:
        """Set the scales of group columns g0… from the columns `x` (their current values, outliers zeroed).

        multiplier (scalar or (scale rows, n groups)) scales the raw scale (and the minmax minimum): the clip
        chosen by a scale search.
        """
        sc = self.spec.scaling
        x = self.zero_outliers_cols(x, g0)
        blocks, pad = sc.blocks(x)
        raw, mins = sc.raw_scales(blocks, self.book, pad)
        raw = raw * multiplier
        mins = None if mins is None else mins * multiplier
        scales, scale_codes = store_scales(raw, self, self.book.absmax_target)
        n = scales.shape[1]
        self.scales[:, g0 : g0 + n] = scales.to(self.scales.dtype)
        self.scale_codes[:, g0 : g0 + n] = scale_codes.reshape(scales.shape)
        if mins is not None:
            assert self.offsets is not None and self.offset_codes is not None
            offsets, offset_codes = sc.store_offsets(mins, scales, self.book)
            self.offsets[:, g0 : g0 + n] = offsets.to(self.offsets.dtype)
            self.offset_codes[:, g0 : g0 + n] = offset_codes.reshape(scales.shape)
        self.fixed[g0 : g0 + n] = True

    def zero_outliers_cols(self, x: torch.Tensor, g0: int) -> torch.Tensor:
        if self.outlier_mask is None:
            return x
        start = g0 * self.group_len
        return x.masked_fill(self.outlier_mask[:, start : start + x.shape[1]], 0.0)

    def group_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum a (rows, cols) tensor over each group → (scale rows, groups); ragged blocks pad with zeros."""
        sc = self.spec.scaling
        if sc.granularity == "tensor":
            return x.sum().reshape(1, 1)
        if sc.granularity == "channel":
            return x.sum(dim=1, keepdim=True)
        pad = self.groups * self.group_len - self.cols
        return F.pad(x, (0, pad)).reshape(self.rows, self.groups, self.group_len).sum(dim=-1)

    def assemble(self, codes: torch.Tensor) -> QuantizedTensor:
        """The stored tensor from (rows, cols) codes and the current scales (entropy-coded when the spec says so)."""
        if not bool(self.fixed.all()):
            raise AssertionError("every group's scale must be fixed before assembling")
        flat = codes.reshape(-1).to(self.book.code_dtype()).contiguous()
        coding = self.spec.coding
        payload = None if coding is None else encode_codes(flat.numpy(), group_size=coding.group_size)
        return QuantizedTensor(
            self.spec, self.shape, self.dtype, flat,
            self.scale_codes.copy(), None if self.offset_codes is None else self.offset_codes.copy(),
            self.tensor_scale, self.table, self.outlier_index, self.outlier_codes, payload,
        )  # fmt: skip


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 inputs are computed in float64, everything else in float32 (as formats.quantize does)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_2d(x: torch.Tensor) -> torch.Tensor:
    """The (out, in) view every format uses: dim 0 is the output channel, the rest is flattened."""
    if x.ndim == 0:
        return x.reshape(1, 1)
    if x.ndim == 1:
        return x.reshape(1, -1)
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def store_scales(raw: torch.Tensor, grid: GroupGrid, grid_max: float) -> tuple[torch.Tensor, np.ndarray]:
    """Round raw scales to the scale format; narrow ExMy formats reuse the tensor's fixed fp32 factor.

    ScaleFormat.quantize derives that factor from the scales it is given; groups fixed one at a time must
    all share the factor chosen once from the whole tensor, so it is applied here instead.
    """
    fmt = grid.spec.scaling.scale_format
    if not fmt.tensor_scale_bits:
        scales, codes, _ = fmt.quantize(raw, grid_max)
        return scales, codes
    factor = grid.tensor_scale if grid.tensor_scale else 1.0
    book = Codebook.from_levels(float_format(fmt.name).values())
    codes_t = book.encode((raw.to(torch.float32) / factor).clamp(book.lo, book.hi))
    return book.decode(codes_t) * factor, codes_t.to(torch.int64).numpy()


def prepare(weight: torch.Tensor, spec: FormatSpec | str, *, dtype: torch.dtype | None = None) -> GroupGrid:
    """A GroupGrid for `weight` with outliers extracted and static scales from the weight itself.

    Data-dependent (Lloyd–Max) tables and narrow-scale tensor factors are fitted once here, on the original
    weight, and stay fixed while an algorithm moves codes and group scales. So is the step of a coded budget
    spec (`uniform@3.5/...+coded`): plain rounding then meets the budget; an algorithm that moves codes goes
    through `solve_at_budget` instead.
    """
    reference = quantize(weight, parse_spec(spec))  # validates the tensor; gives table, outliers and tensor factor
    spec = reference.spec  # a budget spec (uniform@3.5) comes back with its step resolved on this weight
    work_dtype = dtype or compute_dtype(weight.dtype)
    w2d = as_2d(weight.detach()).to(work_dtype)
    rows, cols = w2d.shape
    sc = spec.scaling
    scale_rows, groups = (1, 1) if sc.granularity == "tensor" else (rows, 1)
    if sc.granularity == "block":
        groups = -(-cols // int(sc.block_size))  # type: ignore[arg-type]
    mask = values = None
    if reference.outlier_index.size:
        flat_mask = torch.zeros(rows * cols, dtype=torch.bool)
        idx = torch.as_tensor(reference.outlier_index)
        flat_mask[idx] = True
        assert spec.outliers is not None
        stored = spec.outliers.value_format.decode(reference.outlier_codes, None).to(work_dtype)
        flat_vals = torch.zeros(rows * cols, dtype=work_dtype)
        flat_vals[idx] = stored
        mask, values = flat_mask.reshape(rows, cols), flat_vals.reshape(rows, cols)
    grid = GroupGrid(
        spec=spec, book=reference.codebook(), shape=tuple(weight.shape), dtype=weight.dtype, rows=rows, cols=cols,
        table=reference.table, tensor_scale=reference.tensor_scale,
        scales=torch.zeros(scale_rows, groups, dtype=torch.float32),
        scale_codes=np.zeros((scale_rows, groups), dtype=np.int64),
        offsets=torch.zeros(scale_rows, groups, dtype=torch.float32) if sc.has_offsets else None,
        offset_codes=np.zeros((scale_rows, groups), dtype=np.int64) if sc.has_offsets else None,
        fixed=torch.zeros(groups, dtype=torch.bool), outlier_index=reference.outlier_index,
        outlier_codes=reference.outlier_codes, outlier_mask=mask, outlier_values=values,
    )  # fmt: skip
    # Static scales are exactly those of formats.quantize (including a +search multiplier).
    grid.scales[:] = reference.scales()
    grid.scale_codes[:] = np.asarray(reference.scale_codes).reshape(scale_rows, groups)
    if reference.offset_codes is not None:
        assert grid.offsets is not None and grid.offset_codes is not None
        codes = np.asarray(reference.offset_codes).reshape(-1)
        grid.offsets[:] = sc.decode_offsets(codes, grid.scales, grid.book)
        grid.offset_codes[:] = codes.reshape(scale_rows, groups)
    grid.fixed[:] = True
    return grid


def check_weight(weight: object, name: str) -> torch.Tensor:
    """A finite float weight of at least one dimension (scalars have no channels to quantize)."""
    from wquant.validation import check_tensor

    w = check_tensor(weight, name)
    if w.ndim == 0:
        raise TensorError(f"{name}: a scalar has no channels; give a 1-D or 2-D weight")
    return w


def check_hessian(hessian: object, cols: int, name: str) -> torch.Tensor:
    """A finite square (in, in) matrix matching the weight's input dimension."""
    from wquant.validation import check_tensor

    h = check_tensor(hessian, f"{name} Hessian")
    if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] != cols:
        raise TensorError(f"{name}: Hessian must be ({cols}, {cols}) for a weight with {cols} inputs, "
                          f"got {tuple(h.shape)}")  # fmt: skip
    return h


Solved = TypeVar("Solved")
BUDGET_TOLERANCE = 0.01  # an algorithm at a budget lands in [target·(1 − tol), target]
BUDGET_SOLVES = 8


def is_budget_spec(spec: FormatSpec) -> bool:
    """A coded uniform grid given as a bits/param budget (`uniform@3.5/...+coded`) rather than a step."""
    return isinstance(spec.element, UniformGrid) and spec.element.target_bits is not None


def solve_at_budget(
    weight: torch.Tensor,
    spec: FormatSpec,
    solve: Callable[[FormatSpec], Solved],
    stored: Callable[[Solved], QuantizedTensor],
    *,
    name: str,
) -> Solved:
    """Run `solve` on step specs until its coded size meets the budget of a `uniform@<bits>` spec.

    An algorithm that moves codes (GPTQ spreads them) changes their entropy, so the step that meets the budget
    under plain rounding misses it by up to ~5 % after the algorithm. Start from that step and take secant
    steps on (log step, bits): at high rate bits fall by one per doubling of the step, so 2–4 solves usually
    land within BUDGET_TOLERANCE. Returns the largest result not over the budget.
    """
    target = spec.element.target_bits  # type: ignore[union-attr]
    floor = target * (1 - BUDGET_TOLERANCE)
    aim = target * (1 - BUDGET_TOLERANCE / 2)
    log_step = math.log2(quantize(weight, spec).spec.element.step)  # type: ignore[union-attr]
    best: tuple[float, Solved] | None = None
    tried: list[tuple[float, float]] = []
    for _ in range(BUDGET_SOLVES):
        step = float(f"{2.0**log_step:.6g}")  # short, reproducible spec strings
        result = solve(replace(spec, element=replace(spec.element, step=step, target_bits=None)))
        bits = stored(result).bits_per_param()
        if bits <= target and (best is None or bits > best[0]):
            best = (bits, result)
        if floor <= bits <= target:
            return result
        tried.append((math.log2(step), bits))
        if len(tried) >= 2 and tried[-1][1] != tried[-2][1]:
            (x0, y0), (x1, y1) = tried[-2], tried[-1]
            slope = min((y1 - y0) / (x1 - x0), -0.25)  # bits fall as the step grows; guard a flat coder
        else:
            slope = -1.0
        log_step = tried[-1][0] + (aim - bits) / slope
    if best is None or best[0] < target * (1 - 4 * BUDGET_TOLERANCE):
        got = "every result over it" if best is None else f"best {best[0]:.4f}"
        raise BudgetError(
            f"{name}: no grid step met {target} bits/param within {BUDGET_TOLERANCE:.0%} after {BUDGET_SOLVES} "
            f"solves ({got}); give a fixed step (uniform<step>/...) instead of a budget"
        )
    return best[1]


def refuse_clip_search_on_unbounded_grid(spec: FormatSpec) -> None:
    """A clip search on a uniform grid would only shrink the step (less error, more bits): refuse it."""
    if isinstance(spec.element, UniformGrid):
        raise ParameterError(
            f"{spec.to_string()}: a uniform grid has no clip to search (its levels run as far as the data, so a "
            "smaller scale only means a finer step and more bits); turn the search off and set the precision "
            "with the step (uniform0.5) or a budget (uniform@3)"
        )
