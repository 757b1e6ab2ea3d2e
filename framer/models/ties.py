"""Deterministic decisions that do not depend on the Cartesian orientation of a crystal.

Frames pick candidates by argmax, choose signs and detect degenerate eigenvalues. Symmetric crystals make such
choices ties, and a tie decided by floating-point rounding depends on how the crystal is oriented (a rotated copy
rounds differently). So every comparison treats values within a tolerance as equal, and ties go to the candidate
that comes first in an order that is the same for every orientation: the order of the edges (source atom, then
target atom) and, within an edge, the lattice-index order of the images (their position in
:func:`framer.geometry.image_offsets`).

The tolerance (:func:`tie_tolerance`) is 1e-9 relative in float64, far above rounding errors (~1e-15) and far
below the differences that decide in crystals without the symmetry; in float32 it is 1.2e-5, about the
reference's tie-breaking noise of 1e-5. It also decides when the moments that orient PCA frames vanish.
Eigenvalues of PCA frames use a larger one (:func:`spectral_tolerance`, 1e-6 in float64): eigenvectors turn by
(rounding error) / (gap), so a gap of 1e-8, common in symmetric crystals whose coordinates were stored with 8
digits, would let rounding move them by 1e-6.
"""

from __future__ import annotations

import torch
from torch import Tensor


def tie_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance under which two values (scores, squared lengths, cosines, eigenvalues) are a tie."""
    return max(1e-9, 100 * torch.finfo(dtype).eps)


def spectral_tolerance(dtype: torch.dtype) -> float:
    """Relative gap under which eigenvalues of a frame's second moment count as equal (1e-6 in float64)."""
    return max(1e-6, torch.finfo(dtype).eps ** 0.5)


def near_max(scores: Tensor, best: Tensor) -> Tensor:
    """True where ``scores`` is within the tie tolerance of ``best`` (broadcastable), relative to max(1, |best|)."""
    margin = best.abs().clamp_min(1.0) * tie_tolerance(scores.dtype)
    return scores >= best - margin


def segment_reduce(values: Tensor, index: Tensor, num_segments: int, reduce: str, fill: float) -> Tensor:
    """(num_segments, ...) ``reduce`` ("amax" or "amin") of ``values`` (E, ...) over the rows of each segment
    ``index`` (E,); ``fill`` for empty segments."""
    expanded = index.view(-1, *(1,) * (values.dim() - 1)).expand_as(values)
    out = torch.full((num_segments, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, expanded, values, reduce, include_self=True)


def segment_argmax(
    scores: Tensor, index: Tensor, num_segments: int, secondary: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per segment and column, the best of ``scores`` (E, H): the first row within the tie tolerance of the maximum
    (with ``secondary`` (E, H), of those rows, the ones within the tolerance of their best secondary score).

    Returns (num_segments, H) row ids, (num_segments, H) maxima (-inf for segments whose scores are all -inf) and
    the (E, H) mask of the tied rows (the candidates the row id was chosen from).
    """
    rows = scores.shape[0]
    best = segment_reduce(scores, index, num_segments, "amax", -torch.inf)
    candidates = near_max(scores, best[index])
    if secondary is not None:
        narrowed = secondary.masked_fill(~candidates, -torch.inf)
        candidates &= near_max(narrowed, segment_reduce(narrowed, index, num_segments, "amax", -torch.inf)[index])
    row_ids = torch.arange(rows, device=scores.device).unsqueeze(1).expand_as(scores)
    first = segment_reduce(torch.where(candidates, row_ids, rows), index, num_segments, "amin", rows)
    return first.clamp_max(rows - 1), best, candidates


def lexicographic_choice(groups: Tensor, keys: list[Tensor], order: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Per group, the candidate that is best in ``keys`` compared in turn (each within the tie tolerance), then
    smallest in ``order``.

    Args:
        groups: (K,) group of each candidate, in [0, num_groups).
        keys: (K,) scores, larger is better; a candidate stays only if it ties with the best of the remaining ones.
        order: (K,) integers distinct within a group: the final tie-break.

    Returns (num_groups,) the chosen candidate (-1 for groups without candidates) and (num_groups,) whether more
    than one candidate tied in every key.
    """
    alive = torch.ones_like(groups, dtype=torch.bool)
    for key in keys:
        masked = key.masked_fill(~alive, -torch.inf)
        alive &= near_max(masked, segment_reduce(masked, groups, num_groups, "amax", -torch.inf)[groups])
    big = torch.iinfo(order.dtype).max  # above every order
    first = segment_reduce(torch.where(alive, order, big), groups, num_groups, "amin", big)
    chosen = alive & (order == first[groups])  # at most one per group (orders are distinct within a group)
    candidates = torch.arange(len(groups), device=groups.device)
    index = segment_reduce(torch.where(chosen, candidates, -1), groups, num_groups, "amax", -1)
    count = torch.zeros(num_groups, dtype=torch.long, device=groups.device).index_add_(0, groups, alive.long())
    return index, count > 1
