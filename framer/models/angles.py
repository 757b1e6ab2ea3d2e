"""Angle features by table lookup: the fast path of c_angl sum_m W_m sum_n p_ijn b_angl(f_ih,m . r̂_ijn).

For head h and axis m the projected basis g_hm(c) = W_hm b_angl(c) is a smooth function of one cosine
c in [-1, 1] with values in R^{d_h}. It is tabulated on a grid of spacing delta = width / ``points_per_width`` (the
table is rebuilt from W in every forward, so W gets exact gradients) and read with linear interpolation, so every
(edge, head, image, axis) costs two table rows instead of D Gaussians and a D x d_h product. The interpolation
error of each Gaussian is at most delta² / (8 width²) = 1 / (8 points_per_width²) of its peak (1.9e-6 for the
default 256 points per width); a test checks the whole layer against the exact path.

Per head, images whose share alpha_ij p_ijn of atom i's attention is below the graph's ``image_tolerance`` are
skipped (together they move the layer output by less than their number times that tolerance, relative to the
features' scale); the self image carries no angle.

The sums over images are weighted bag sums (``torch.nn.functional.embedding_bag``), one bag per (edge, head), with
a gradient for the table computed by bag sums over the entries sorted by table row (much faster on CPU than a
scatter). The derivative with respect to the Gaussian exponent a is accumulated in the same way and attached
as in :mod:`framer.models.attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from framer.models.encodings import GaussianBasis
from framer.models.periodic import ImageChunk


def cosine_grid(basis: GaussianBasis, points_per_width: int) -> tuple[Tensor, float]:
    """Grid points (G,) covering [-1, 1] with spacing ``basis.width / points_per_width``, and that spacing."""
    spacing = basis.width / points_per_width
    count = math.ceil(2.0 / spacing) + 1
    return -1.0 + spacing * torch.arange(count, dtype=torch.float64), spacing


class _InterpolatedBagSum(torch.autograd.Function):
    """out[b] = sum over the entries i of bag b of lower[i] table[row[i]] + upper[i] table[row[i] + 1].

    Entries are grouped by bag (``offsets``); the gradient is computed for ``table`` only, as bag sums over the
    entries sorted by row.
    """

    @staticmethod
    def forward(ctx, table: Tensor, row: Tensor, offsets: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
        ctx.save_for_backward(row, offsets, lower, upper)
        ctx.table_rows = table.shape[0]
        return _interpolated_bag_sum(table, row, offsets, lower, upper)

    @staticmethod
    def backward(ctx, grad: Tensor):
        row, offsets, lower, upper = ctx.saved_tensors
        num_bags = offsets.shape[0]
        sizes = torch.diff(offsets, append=offsets.new_tensor([row.shape[0]]))
        bag = torch.repeat_interleave(torch.arange(num_bags, device=row.device, dtype=row.dtype), sizes)
        order = torch.argsort(row)
        counts = torch.bincount(row, minlength=ctx.table_rows)
        row_offsets = (torch.cumsum(counts, 0) - counts).to(row.dtype)
        bag, grad = bag.index_select(0, order), grad.contiguous()
        lower, upper = lower.index_select(0, order), upper.index_select(0, order)
        grad_table = F.embedding_bag(bag, grad, row_offsets, mode="sum", per_sample_weights=lower)
        grad_next = F.embedding_bag(bag, grad, row_offsets, mode="sum", per_sample_weights=upper)
        grad_table[1:] += grad_next[:-1]
        return grad_table, None, None, None, None


def _interpolated_bag_sum(table: Tensor, row: Tensor, offsets: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    out = F.embedding_bag(row, table, offsets, mode="sum", per_sample_weights=lower)
    return out.add_(F.embedding_bag(row, table[1:], offsets, mode="sum", per_sample_weights=upper))


def chunk_angle_features(
    table: Tensor,
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
        table: (H * 3 * G, d_h) rows g_hm(grid point), head-major then axis then grid point; may require grad.
        spacing: grid spacing of the table.
        a: (C, H) Gaussian exponents of the chunk's edges (detached).
        z: (C, H) log lattice sums; mean_d2: (C, H) their derivatives E_p[d²].
        log_alpha: (C, H) log attention weights of the edges (detached).
        frames: (C, H, 3, 3) frames of the source atoms (rows are axes).
        chunk: the edges and their images.
        log_tolerance: log of the smallest attention share alpha p of an image that is kept (-inf keeps all).
        with_derivative: also return the derivative (needed only when a gradient for a is wanted).
    """
    c, h = a.shape
    m = chunk.dist2.shape[1]
    grid_points = table.shape[0] // (3 * h)
    with torch.no_grad():
        logp = a.unsqueeze(-1) * chunk.dist2.unsqueeze(1) - z.unsqueeze(-1)  # (C, H, m)
        keep = (chunk.valid & ~chunk.self_image).unsqueeze(1) & (logp + log_alpha.unsqueeze(-1) > log_tolerance)
        kept = torch.nonzero(keep.flatten()).squeeze(1)  # (T,), ordered by (edge, head): bags are contiguous
        p = logp.flatten().index_select(0, kept).exp_()
        bag = kept // m  # edge * H + head
        edge = bag // h
        pair = edge * m + (kept - bag * m)  # (edge, image) of each kept entry
        head = bag - edge * h
        unit = chunk.unit.reshape(-1, 3).index_select(0, pair)  # (T, 3)
        frame = frames.reshape(-1, 3, 3).index_select(0, bag)  # (T, 3, 3)
        cos = (frame * unit.unsqueeze(1)).sum(-1)  # (T, 3)
        position = cos.add_(1.0).div_(spacing).clamp_(0.0, grid_points - 1)
        cell = position.floor().clamp_(max=grid_points - 2)
        upper = position.sub_(cell)  # weight of the next grid point, in [0, 1]
        axis_base = (head.unsqueeze(1) * 3 + torch.arange(3, device=a.device)) * grid_points
        index_dtype = torch.int32 if table.shape[0] < 2**31 else torch.int64
        row = (axis_base + cell.long()).to(index_dtype).flatten()  # (3T,)
        counts = keep.sum(-1).flatten() * 3
        offsets = (torch.cumsum(counts, 0) - counts).to(index_dtype)
        upper_p = (upper * p.unsqueeze(1)).flatten()
        lower_p = p.unsqueeze(1).expand(-1, 3).flatten() - upper_p
        derivative = None
        if with_derivative:  # dp/da = p (d² - E_p[d²])
            dp = p * (chunk.dist2.flatten().index_select(0, pair) - mean_d2.flatten().index_select(0, bag))
            upper_dp = (upper * dp.unsqueeze(1)).flatten()
            lower_dp = dp.unsqueeze(1).expand(-1, 3).flatten() - upper_dp
            derivative = _interpolated_bag_sum(table.detach(), row, offsets, lower_dp, upper_dp).view(c, h, -1)
    if table.requires_grad and torch.is_grad_enabled():
        value = _InterpolatedBagSum.apply(table, row, offsets, lower_p, upper_p)
    else:
        value = _interpolated_bag_sum(table, row, offsets, lower_p, upper_p)
    return value.view(c, h, -1), derivative
