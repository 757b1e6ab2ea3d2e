"""Frame builders (model-spec §4). A frame is a (..., 3, 3) tensor whose row m is the axis f_m.

All builders run under ``torch.no_grad()``: frames only decide the orientation in which the angle features are
read and carry no gradient. Ties are broken deterministically (first candidate in edge order, then in image-box
order) instead of with the reference's random noise, so the same input always gives the same frame.

- ``max_frames``: the dynamic "max frame" (§4.1) or, without query-key logits, the static local frame (§4.2,
  paper's intent: nearest non-collinear neighbours, score a·d² for both axes).
- ``weighted_pca_frames``: eigenvector columns of the attention-weighted second moment (§4.3) with a
  rotation-invariant sign rule (positive weighted third moment along f1 and f2; f3 = f1 x f2).
- ``pca_frames``: the same rule on the unit-cell atom positions (§4.4).
- ``lattice_frames``: shortest lattice vectors (§4.5), normalised but not orthogonal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from framer.geometry import image_offsets
from framer.models.encodings import exp_
from framer.models.periodic import ImageChunks, PeriodicGraph

COLLINEAR_COS = 0.9999  # second-axis candidates must satisfy |cos(r, f1)| < this
MIN_ONE_MINUS_COS = 1e-5  # floor inside log(1 - |cos|)
LATTICE_TOL = 1e-5  # the reference's tolerance for (anti)parallel lattice vectors


def segment_argmax(scores: Tensor, index: Tensor, num_segments: int) -> tuple[Tensor, Tensor]:
    """Per segment and column, the maximum of ``scores`` (E, H) and the first row that reaches it.

    Returns:
        (num_segments, H) row ids and (num_segments, H) maxima (-inf for segments whose scores are all -inf).
    """
    rows, cols = scores.shape
    expanded = index.unsqueeze(1).expand(rows, cols)
    best = scores.new_full((num_segments, cols), -torch.inf)
    best = best.scatter_reduce(0, expanded, scores, "amax", include_self=True)
    row_ids = torch.arange(rows, device=scores.device).unsqueeze(1).expand(rows, cols)
    candidates = torch.where(scores == best[index], row_ids, rows)
    first = torch.full((num_segments, cols), rows, dtype=torch.long, device=scores.device)
    first = first.scatter_reduce(0, expanded, candidates, "amin", include_self=True)
    return first.clamp_max(rows - 1), best


def _normalize(v: Tensor, eps: float = 1e-12) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(eps)


def _least_aligned_axis(v: Tensor) -> Tensor:
    """The Cartesian unit vector least aligned with each v (deterministic fallback direction)."""
    return torch.nn.functional.one_hot(v.abs().argmin(dim=-1), 3).to(v.dtype)


def _complete_frame(e1: Tensor, raw2: Tensor, valid2: Tensor) -> Tensor:
    """Gram-Schmidt on (e1, raw2), e3 = e1 x e2; an invalid raw2 is replaced by the least aligned Cartesian axis."""
    raw2 = torch.where(valid2.unsqueeze(-1), raw2, _least_aligned_axis(e1))
    e2 = _normalize(raw2 - (raw2 * e1).sum(-1, keepdim=True) * e1)
    return torch.stack([e1, e2, torch.linalg.cross(e1, e2)], dim=-2)


@torch.no_grad()
def max_frames(graph: PeriodicGraph, chunks: ImageChunks, a: Tensor, logits: Tensor | None = None) -> Tensor:
    """Max frames (N, H, 3, 3) from image scores s_ijn = logits_ij + a_ih d²_ijn (self images excluded).

    f1 is the direction of the best-scoring image; f2 that of the best image by s + log(max(1 - |cos|, 1e-5))
    among images with |cos(r, f1)| < 0.9999, orthogonalised against f1; f3 = f1 x f2. Both maximisations run in
    two stages: best image per edge and head, then best edge per atom and head.

    Args:
        graph: edges and images of the batch.
        chunks: the images to consider (``graph.chunks()`` or ``graph.layer_chunks(...)``).
        a: (N, H) Gaussian exponents a_ih < 0 (detached).
        logits: (E, H) q_i k_j / sqrt(d), or None for the static local frame (score a d² only).
    """
    src, n = graph.src, graph.num_atoms
    near_d2, near_unit = graph.nearest_image
    score1 = a[src] * near_d2.unsqueeze(1)
    if logits is not None:
        score1 = score1 + logits
    edge1, best1 = segment_argmax(score1, src, n)
    heads = torch.arange(a.shape[1], device=a.device)
    e1 = near_unit[edge1, :]  # (N, H, 3)
    e1 = torch.where(torch.isfinite(best1).unsqueeze(-1), e1, torch.eye(3, dtype=a.dtype, device=a.device)[0])

    image_scores, image_units = [], []
    for chunk in chunks:
        chunk_src = src[chunk.edges]
        unit = chunk.unit
        cos = torch.bmm(e1[chunk_src], unit.transpose(1, 2)).abs_()  # (C, H, m): |cos(r, f1)|
        invalid = (chunk.self_image | ~chunk.valid).unsqueeze(1) | (cos >= COLLINEAR_COS)
        score = cos.neg_().add_(1.0).clamp_(min=MIN_ONE_MINUS_COS).log_()
        score = score.add_(a[chunk_src].unsqueeze(-1) * chunk.dist2.unsqueeze(1)).masked_fill_(invalid, -torch.inf)
        best = torch.argmax(score, dim=2)  # (C, H)
        image_scores.append(torch.gather(score, 2, best.unsqueeze(-1)).squeeze(-1))
        image_units.append(unit[torch.arange(len(best), device=best.device).unsqueeze(1), best])
    score2 = chunks.to_edge_order(image_scores)
    if logits is not None:
        score2 = score2 + logits
    edge2, best2 = segment_argmax(score2, src, n)
    raw2 = chunks.to_edge_order(image_units)[edge2, heads]
    return _complete_frame(e1, raw2, torch.isfinite(best2))


def _principal_axes(second: Tensor, third: Tensor) -> Tensor:
    """Frames from a second moment (..., 3, 3) and a third moment (..., 3, 3, 3).

    f1, f2 are the eigenvectors (columns) of the two largest eigenvalues, each oriented so that the third moment
    along it is >= 0; f3 = f1 x f2 (right-handed).
    """
    _, vectors = torch.linalg.eigh(second)
    axes = vectors[..., [2, 1]].transpose(-1, -2)  # (..., 2, 3): largest eigenvalue first
    skew = torch.einsum("...abc,...ma,...mb,...mc->...m", third, axes, axes, axes)
    axes = axes * torch.where(skew < 0, -1.0, 1.0).to(axes.dtype).unsqueeze(-1)
    e1, e2 = axes.unbind(-2)
    return torch.stack([e1, e2, torch.linalg.cross(e1, e2)], dim=-2)


def _moments(vectors: Tensor) -> Tensor:
    """(..., 3) -> (..., 36): the 9 entries of r r^T followed by the 27 entries of r (x) r (x) r."""
    outer = vectors.unsqueeze(-1) * vectors.unsqueeze(-2)
    cube = outer.unsqueeze(-1) * vectors.unsqueeze(-2).unsqueeze(-2)
    return torch.cat([outer.flatten(-2), cube.flatten(-3)], dim=-1)


def _frames_from_moments(moments: Tensor) -> Tensor:
    second = moments[..., :9].unflatten(-1, (3, 3))
    third = moments[..., 9:].unflatten(-1, (3, 3, 3))
    return _principal_axes(second, third)


@torch.no_grad()
def weighted_pca_frames(graph: PeriodicGraph, chunks: ImageChunks, a: Tensor, z: Tensor, alpha: Tensor) -> Tensor:
    """Weighted-PCA frames (N, H, 3, 3) of Sigma_i = sum_jn alpha_ij p_ijn r_ijn r_ijn^T (uncentred, §4.3).

    Args:
        graph: edges and images of the batch.
        chunks: the images to sum over.
        a: (N, H) Gaussian exponents (detached).
        z: (E, H) log lattice sums, so that p_ijn = exp(a_ih d²_ijn - z_ijh).
        alpha: (E, H) attention weights.
    """
    src = graph.src
    heads = a.shape[1]
    total = a.new_zeros(graph.num_atoms, heads, 36)
    for chunk in chunks:
        chunk_src = src[chunk.edges]
        logp = a[chunk_src].unsqueeze(-1) * chunk.dist2.unsqueeze(1) - z[chunk.edges].unsqueeze(-1)
        weight = exp_(logp).mul_(alpha[chunk.edges].unsqueeze(-1))  # (C, H, M)
        weight.masked_fill_(~chunk.valid.unsqueeze(1), 0.0)
        total.index_add_(0, chunk_src, torch.bmm(weight, _moments(chunk.vectors)))
    return _frames_from_moments(total)


@torch.no_grad()
def pca_frames(pos: Tensor, sizes: Tensor) -> Tensor:
    """PCA frames (B, 3, 3) of the unit-cell atom positions of each crystal (no images, §4.4)."""
    crystal = torch.repeat_interleave(torch.arange(len(sizes), device=pos.device), sizes.to(pos.device))
    counts = sizes.to(pos.device, pos.dtype).unsqueeze(1)
    mean = pos.new_zeros(len(sizes), 3).index_add_(0, crystal, pos) / counts
    moments = _moments(pos - mean[crystal])
    total = moments.new_zeros(len(sizes), 36).index_add_(0, crystal, moments)
    return _frames_from_moments(total)


@torch.no_grad()
def lattice_frames(lattice: Tensor, image_box: Tensor) -> Tensor:
    """Lattice frames (B, 3, 3) from the shortest lattice vectors in each image box (§4.5); not orthogonal.

    f1 is the shortest vector; f2 the shortest not (anti)parallel to f1, flipped so f1 f2 >= 0; f3 the shortest
    out of the f1-f2 plane, flipped so f1 f3 >= 0; all three are negated if f3 (f1 x f2) < 0. Rows are unit vectors.
    """
    frames = torch.empty_like(lattice)
    boxes, box_of_crystal = torch.unique(image_box.to(lattice.device), dim=0, return_inverse=True)
    for g, box in enumerate(boxes.tolist()):
        crystals = torch.nonzero(box_of_crystal == g).squeeze(1)
        offsets = image_offsets(box, device=lattice.device)[1:].to(lattice.dtype)
        frames[crystals] = _shortest_vector_frame(torch.einsum("ma,bac->bmc", offsets, lattice[crystals]))
    return frames


def _shortest_vector_frame(vectors: Tensor) -> Tensor:
    """(B, M, 3) non-zero lattice vectors -> (B, 3, 3) lattice frames."""
    if vectors.shape[1] == 0:
        return torch.eye(3, dtype=vectors.dtype, device=vectors.device).expand(vectors.shape[0], 3, 3).clone()
    length2 = (vectors * vectors).sum(-1)
    unit = vectors / length2.sqrt().unsqueeze(-1)
    rows = torch.arange(len(vectors), device=vectors.device)

    def shortest(allowed: Tensor) -> tuple[Tensor, Tensor]:
        pick = torch.argmin(length2.masked_fill(~allowed, torch.inf), dim=1)
        return unit[rows, pick], allowed.any(dim=1)

    f1 = unit[rows, torch.argmin(length2, dim=1)]
    f2, ok2 = shortest(1.0 - torch.einsum("bmx,bx->bm", unit, f1).abs() > LATTICE_TOL)
    f2 = torch.where(ok2.unsqueeze(-1), f2, _least_aligned_axis(f1))
    f2 = f2 * torch.where((f2 * f1).sum(-1) < 0, -1.0, 1.0).to(f2.dtype).unsqueeze(-1)
    normal = _normalize(torch.linalg.cross(f1, f2))
    f3, ok3 = shortest(torch.einsum("bmx,bx->bm", unit, normal).abs() > LATTICE_TOL)
    f3 = torch.where(ok3.unsqueeze(-1), f3, normal)
    f3 = f3 * torch.where((f3 * f1).sum(-1) < 0, -1.0, 1.0).to(f3.dtype).unsqueeze(-1)
    frame = torch.stack([f1, f2, f3], dim=1)
    handed = torch.where((f3 * torch.linalg.cross(f1, f2)).sum(-1) < 0, -1.0, 1.0).to(frame.dtype)
    return frame * handed.view(-1, 1, 1)
