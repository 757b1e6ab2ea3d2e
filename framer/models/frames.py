"""Frame builders (docs/model.md, "What the model computes": the table of frames). A frame is a (..., 3, 3) tensor
whose row m is the axis f_m; ``max_frames`` (dynamic and static) lives in :mod:`framer.models.max_frames`.

All builders run under ``torch.no_grad()`` (frames carry no gradient), and every choice is deterministic and
independent of the Cartesian orientation: values within a tolerance are ties (:mod:`framer.models.ties`), decided
by rules that do not look at Cartesian coordinates, instead of the reference's random noise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from framer.geometry import image_offsets
from framer.models.max_frames import complete_frame, least_aligned_axis, max_frames, normalize
from framer.models.moments import PCA, attention_moments, principal_frames
from framer.models.periodic import ImageChunks, PeriodicGraph, group_by_box, segment_ids
from framer.models.ties import tie_tolerance

__all__ = ["lattice_frames", "max_frames", "pca_frames", "weighted_pca_frames"]

LATTICE_TOL = 1e-5  # the reference's tolerance for (anti)parallel lattice vectors


@torch.no_grad()
def weighted_pca_frames(
    graph: PeriodicGraph, chunks: ImageChunks, a: Tensor, z: Tensor, alpha: Tensor, logits: Tensor
) -> Tensor:
    """Weighted-PCA frames (N, H, 3, 3) of Sigma_i = sum_jn alpha_ij p_ijn r_ijn r_ijn^T (uncentred).

    Where the eigenvalues of Sigma_i are (near-)degenerate (cubic environments, one-atom cells) the frame is the
    max frame of the same attention: the directions of the heaviest images alpha_ij p_ijn. ``a`` (N, H) are the
    Gaussian exponents, ``z`` (E, H) the log lattice sums (p_ijn = exp(a_ih d²_ijn - z_ijh)), ``alpha`` (E, H) the
    attention weights and ``logits`` (E, H) q_i k_j / sqrt(d) (for the fallback frames), all detached.
    """
    frames, degenerate = principal_frames(attention_moments(graph, chunks, PCA, a, z, alpha))
    if degenerate.any():
        fallback = max_frames(graph, chunks, a, logits, attention=(z, alpha))
        frames = torch.where(degenerate.unsqueeze(-1).unsqueeze(-1), fallback, frames)
    return frames


@torch.no_grad()
def pca_frames(pos: Tensor, sizes: Tensor, lattice: Tensor, image_box: Tensor) -> Tensor:
    """PCA frames (B, 3, 3) of the unit-cell atom positions of each crystal (no images). Where the eigenvalues are
    (near-)degenerate (one- and two-atom cells, cubic arrangements) the frame is the crystal's lattice frame,
    orthonormalised (f2 by Gram-Schmidt, f3 = f1 x f2)."""
    crystal = segment_ids(sizes.to(pos.device), pos.shape[0])
    counts = sizes.to(pos.device, pos.dtype).unsqueeze(1)
    mean = pos.new_zeros(len(sizes), 3).index_add_(0, crystal, pos) / counts
    moments = PCA(pos - mean[crystal])
    total = moments.new_zeros(len(sizes), moments.shape[-1]).index_add_(0, crystal, moments)
    frames, degenerate = principal_frames(total)
    if degenerate.any():
        lattice_frame = lattice_frames(lattice, image_box)
        fallback = complete_frame(lattice_frame[:, 0], lattice_frame[:, 1], torch.ones_like(degenerate))
        frames = torch.where(degenerate.unsqueeze(-1).unsqueeze(-1), fallback, frames)
    return frames


@torch.no_grad()
def lattice_frames(lattice: Tensor, image_box: Tensor) -> Tensor:
    """Lattice frames (B, 3, 3) from the shortest lattice vectors in each image box; not orthogonal.

    f1 is the shortest vector; f2 the shortest not (anti)parallel to f1, flipped if f1 f2 < 0; f3 the shortest
    out of the f1-f2 plane, flipped if f1 f3 < 0; all three are negated if f3 (f1 x f2) < 0. Rows are unit vectors.
    Squared lengths and dot products within the tie tolerance are ties: the first vector in lattice-index order
    wins, and a dot product of ~0 flips nothing.
    """
    frames = torch.empty_like(lattice)
    image_box = image_box.to(lattice.device)
    everyone = torch.arange(len(lattice), device=lattice.device)
    for box, crystals in group_by_box(image_box, image_box.tolist(), everyone, [1] * len(lattice)):
        offsets = image_offsets(box, device=lattice.device)[1:].to(lattice.dtype)
        frames[crystals] = _shortest_vector_frame(torch.einsum("ma,bac->bmc", offsets, lattice[crystals]))
    return frames


def _shortest_vector_frame(vectors: Tensor) -> Tensor:
    """(B, M, 3) non-zero lattice vectors in lattice-index order -> (B, 3, 3) lattice frames."""
    if vectors.shape[1] == 0:
        return torch.eye(3, dtype=vectors.dtype, device=vectors.device).expand(vectors.shape[0], 3, 3).clone()
    tolerance = tie_tolerance(vectors.dtype)
    length2 = (vectors * vectors).sum(-1)
    unit = vectors / length2.sqrt().unsqueeze(-1)
    rows = torch.arange(len(vectors), device=vectors.device)

    def shortest(allowed: Tensor) -> tuple[Tensor, Tensor]:
        masked = length2.masked_fill(~allowed, torch.inf)
        tied = allowed & (masked <= masked.amin(dim=1, keepdim=True) * (1.0 + tolerance))
        return unit[rows, tied.int().argmax(dim=1)], allowed.any(dim=1)  # argmax: the first tied vector

    def flip_against(v: Tensor, axis: Tensor) -> Tensor:
        return v * torch.where((v * axis).sum(-1) < -tolerance, -1.0, 1.0).to(v.dtype).unsqueeze(-1)

    f1, _ = shortest(torch.ones_like(length2, dtype=torch.bool))
    f2, ok2 = shortest(1.0 - torch.einsum("bmx,bx->bm", unit, f1).abs() > LATTICE_TOL)
    f2 = flip_against(torch.where(ok2.unsqueeze(-1), f2, least_aligned_axis(f1)), f1)
    normal = normalize(torch.linalg.cross(f1, f2))
    f3, ok3 = shortest(torch.einsum("bmx,bx->bm", unit, normal).abs() > LATTICE_TOL)
    f3 = flip_against(torch.where(ok3.unsqueeze(-1), f3, normal), f1)
    frame = torch.stack([f1, f2, f3], dim=1)
    handed = torch.where((f3 * torch.linalg.cross(f1, f2)).sum(-1) < 0, -1.0, 1.0).to(frame.dtype)
    return frame * handed.view(-1, 1, 1)
