"""Angle features by table lookup: the fast path of c_angl sum_m W_m sum_n p_ijn b_angl(f_ih,m . r̂_ijn).

For head h and axis m, g_hm(c) = W_hm b_angl(c) is tabulated (from W, without a graph) on a grid of spacing
width / ``points_per_width`` over the cosine c in [-1, 1] and read by linear interpolation: two table rows per
(edge, head, image, axis) instead of D Gaussians and a D x d_h product, with an error below
1 / (8 points_per_width²) of a Gaussian's peak. Images whose share alpha_ij p_ijn of the atom's attention is below
``image_tolerance`` are skipped; the self image carries no angle. Sums over images are weighted bag sums
(``embedding_bag``); W's exact gradient comes from the same bag sums over a table of the basis itself, and the
derivative with respect to a is attached as in :mod:`framer.models.attention` (docs/model.md, "How it is computed").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from framer.models.encodings import GaussianBasis
from framer.models.periodic import ImageChunk
from framer.models.precision import full_precision


def cosine_grid(basis: GaussianBasis, points_per_width: int) -> tuple[Tensor, float]:
    """Grid points (G,) covering [-1, 1] with spacing ``basis.width / points_per_width``, and that spacing."""
    spacing = basis.width / points_per_width
    count = math.ceil(2.0 / spacing) + 1
    return -1.0 + spacing * torch.arange(count, dtype=torch.float64), spacing


class _AngleBagSum(torch.autograd.Function):
    """Angle features of each bag (edge, head) from the projected tables, with the gradient for W.

    value[b] = sum_m sum_{i in b} lower_mi table_m[row_mi] + upper_mi table_m[row_mi + 1], where
    table_m[h G + g] = c W_hm b_angl(grid_g) (built from W without a graph) and row_mi = h G + cell_mi. Since the
    value is linear in W, d value[b] / d W_hm = c sum_{i in b} (lower_mi basis[cell_mi] + upper_mi basis[cell_mi + 1])
    for the bags b of head h: the backward pass reads the (G, D) grid basis with the same bag sums, so the gradient
    needs no sort or scatter over table rows.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, tables: Tensor, basis: Tensor, lookup: _Lookup, coef: float) -> Tensor:
        # ``weight`` (W) is not read here (``tables`` were built from it); it is an input so that its gradient lands.
        ctx.heads, ctx.coef = lookup.heads, coef
        ctx.save_for_backward(basis, lookup.cells, lookup.offsets, lookup.lower, lookup.upper)  # not the rows
        return bag_sums(tables, lookup.rows, lookup.offsets, lookup.lower, lookup.upper)

    @staticmethod
    def backward(ctx, grad: Tensor):
        basis, cells, offsets, lowers, uppers = ctx.saved_tensors
        heads = ctx.heads
        with full_precision(grad.device):  # also when backward() is called inside an autocast block
            grad = grad.to(basis.dtype).reshape(-1, heads, grad.shape[-1]).permute(1, 2, 0)  # (H, d_h, C)
            axes = []
            for cell, lower, upper in zip(cells, lowers, uppers):
                features = _interpolated_bag_sum(basis, cell, offsets, lower, upper)  # (C H, D)
                features = features.view(-1, heads, features.shape[-1]).transpose(0, 1)  # (H, C, D)
                axes.append(torch.bmm(grad, features))  # (H, d_h, D)
            return torch.stack(axes).mul_(ctx.coef), None, None, None, None


class _Lookup:
    """Where the kept (edge, head, image) entries of a chunk read the tables, one row of arrays per axis m.

    Attributes:
        heads: H (bags are (edge, head) pairs, head fastest).
        cells: (3, T) grid cell of each entry's cosine; rows: (3, T) ``head * G + cell``.
        offsets: (C H,) start of each bag in the T entries.
        lower, upper: (3, T) interpolation weights of the cell's two grid points, times the entry's weight.
    """

    def __init__(self, heads: int, cells: Tensor, rows: Tensor, offsets: Tensor, lower: Tensor, upper: Tensor):
        self.heads, self.cells, self.rows, self.offsets = heads, cells, rows, offsets
        self.lower, self.upper = lower, upper


def _interpolated_bag_sum(table: Tensor, row: Tensor, offsets: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    out = F.embedding_bag(row, table, offsets, mode="sum", per_sample_weights=lower)
    return out.add_(F.embedding_bag(row, table[1:], offsets, mode="sum", per_sample_weights=upper))


def bag_sums(tables: Tensor, rows: Tensor, offsets: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """sum over the axes m of the interpolated bag sums of ``tables[m]`` (3, R, F): (bags, F)."""
    out = _interpolated_bag_sum(tables[0], rows[0], offsets, lower[0], upper[0])
    for m in range(1, tables.shape[0]):
        out.add_(_interpolated_bag_sum(tables[m], rows[m], offsets, lower[m], upper[m]))
    return out


def chunk_angle_features(
    weight: Tensor,
    tables: Tensor,
    basis: Tensor,
    coef: float,
    spacing: float,
    a: Tensor,
    z: Tensor,
    mean_d2: Tensor,
    log_alpha: Tensor,
    frames: Tensor,
    chunk: ImageChunk,
    log_tolerance: float,
    with_derivative: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Angle features of one chunk, as (value, d value / d a or None), both (C, H, d_h).

    Args:
        weight: (3, H, d_h, D) the projections W_m (the value's gradient flows to it).
        tables: (3, H * G, d_h) :func:`projected_tables` of W; basis: (G, D) b_angl at the grid points.
        coef, spacing: c_angl and the grid spacing.
        a, z, mean_d2, log_alpha: (C, H) the chunk's detached a, log lattice sums, E_p[d²] and log attention.
        frames: (C, H, 3, 3) frames of the source atoms (rows are axes).
        log_tolerance: log of the smallest attention share alpha p of an image that is kept (-inf keeps all).
        with_derivative: also return the derivative (needed only when a gradient for a is wanted).
    """
    c, h = a.shape
    m = chunk.dist2.shape[1]
    grid_points = basis.shape[0]
    with torch.no_grad():
        logp = a.unsqueeze(-1) * chunk.dist2.unsqueeze(1) - z.unsqueeze(-1)  # (C, H, m)
        keep = (logp > (log_tolerance - log_alpha).unsqueeze(-1)) & (chunk.valid & ~chunk.self_image).unsqueeze(1)
        kept = torch.nonzero(keep.flatten()).squeeze(1)  # (T,), ordered by (edge, head): bags are contiguous
        p = logp.flatten().index_select(0, kept).exp_()
        cos = torch.bmm(frames.reshape(c, 3 * h, 3), chunk.unit.transpose(1, 2))  # (C, H * 3, m), every image
        cos = cos.view(c, h, 3, m).permute(2, 0, 1, 3).reshape(3, -1).index_select(1, kept)  # (3, T)
        position = cos.add_(1.0).div_(spacing).clamp_(0.0, grid_points - 1)
        cell = position.floor().clamp_(max=grid_points - 2)
        upper = position.sub_(cell)  # weight of the next grid point, in [0, 1]
        index_dtype = torch.int32 if tables.shape[1] < 2**31 else torch.int64
        cells = cell.to(index_dtype)
        head = torch.div(kept, m, rounding_mode="floor").remainder_(h)
        rows = cells + head.mul_(grid_points).to(index_dtype)
        counts = keep.sum(-1).flatten()
        offsets = (torch.cumsum(counts, 0) - counts).to(index_dtype)
        upper_p = upper * p
        lookup = _Lookup(h, cells, rows, offsets, p - upper_p, upper_p)
        derivative = None
        if with_derivative:  # dp/da = p (d² - E_p[d²])
            spread = chunk.dist2.unsqueeze(1) - mean_d2.unsqueeze(-1)  # (C, H, m)
            dp = spread.flatten().index_select(0, kept).mul_(p)
            upper_dp = upper * dp
            derivative = bag_sums(tables, rows, offsets, dp - upper_dp, upper_dp).view(c, h, -1)
    return _AngleBagSum.apply(weight, tables, basis, lookup, coef).view(c, h, -1), derivative


def projected_tables(weight: Tensor, basis: Tensor, coef: float) -> Tensor:
    """(3, H * G, d_h) tables c W_hm b_angl(grid point) from W (3, H, d_h, D) and the grid basis (G, D); no graph."""
    axes, heads, head_dim, size = weight.shape
    with torch.no_grad():
        projection = (coef * weight).view(axes * heads, head_dim, size).transpose(1, 2)  # (3 H, D, d_h)
        return torch.matmul(basis.to(weight.dtype), projection).view(axes, -1, head_dim)
