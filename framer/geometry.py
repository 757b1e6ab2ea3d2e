"""Lattice geometry shared by the data pipeline and the model: Gaussian scale bounds and periodic image boxes.

The attention's Gaussians have width sigma = R0 / sqrt(rho) with rho > RHO_LOWER_BOUND, so sigma never exceeds
MAX_SIGMA (about 1.98 Å). The reference truncates each lattice sum to the box of images within 3.5 sigma; one box
per crystal built from MAX_SIGMA covers every head's box (docs/model.md, "How it is computed" and "Deviations from
the reference implementation").
``tolerance_image_box`` instead chooses the box from an image-weight tolerance, so that the images summed do not
depend on the choice of cell (docs/model.md, "Invariance").
"""

from __future__ import annotations

import math

import numpy as np
import torch

R0 = 1.4  # Å, the reference's `scale_real`
RHO_LOWER_BOUND = 0.5  # `gauss_lb_real`
CUTOFF_IN_SIGMAS = 3.5  # `adaptive_cutoff_sigma`
MAX_SIGMA = R0 / math.sqrt(RHO_LOWER_BOUND)
IMAGE_CUTOFF = CUTOFF_IN_SIGMAS * MAX_SIGMA + 0.01  # ≈ 6.94 Å
MIN_IMAGE_RANGE = 2  # `lattice_range` with `minimum_range=true`: at least a 5x5x5 box


def interplanar_spacings(lattice: np.ndarray) -> np.ndarray:
    """Distances between the lattice planes spanned by each pair of lattice vectors (rows of ``lattice``)."""
    reciprocal = np.linalg.inv(np.asarray(lattice, dtype=np.float64)).T  # rows b_m / 2π
    return 1.0 / np.linalg.norm(reciprocal, axis=1)


def image_box(lattice: np.ndarray, cutoff: float = IMAGE_CUTOFF, minimum: int = MIN_IMAGE_RANGE) -> np.ndarray:
    """Half-ranges (R1, R2, R3) of the image box n_m in [-R_m, R_m] that covers a sphere of radius ``cutoff``."""
    ranges = np.ceil(cutoff / interplanar_spacings(lattice))
    return np.maximum(minimum, ranges).astype(np.int64)


def image_offsets(box, device=None) -> torch.Tensor:
    """Integer image translations (R, 3) of a box, with the zero translation first, then lattice-index order
    (built by slicing, without a boolean mask, so a CUDA device never waits for the host here)."""
    axes = [torch.arange(-int(r), int(r) + 1, device=device) for r in box]
    grid = torch.cartesian_prod(*axes).view(-1, 3)
    middle = grid.shape[0] // 2
    return torch.cat([grid[middle : middle + 1], grid[:middle], grid[middle + 1 :]])


def tolerance_image_box(lattice: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(B, 3) half-ranges of image boxes holding, around every atom, the sphere of the images whose weight is above
    ``tolerance`` of the weight of the atom's nearest non-self image, for the widest Gaussian the model can produce
    (sigma = MAX_SIGMA).

    Those images have d² <= d_nn² + 2 MAX_SIGMA² ln(1/tolerance), where d_nn, the distance from the atom to its
    nearest neighbour image, is at most the length of the shortest cell vector (the atom's own image). A vector of
    length rho between an atom and an image of another (minimum-image fractional difference in [-1/2, 1/2]) has
    fractional components n_m + f_m with |n_m + f_m| <= rho / h_m (h_m the interplanar spacings), so
    R_m = floor(rho / h_m + 1/2) covers it. ``lattice`` (B, 3, 3) has the lattice vectors as rows.
    """
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"the image weight tolerance must be in (0, 1), got {tolerance!r}")
    lattice = lattice.detach().double()
    nearest = lattice.square().sum(-1).amin(dim=1)  # (B,) shortest cell vector², >= d_nn²
    radius = (nearest + 2.0 * MAX_SIGMA**2 * math.log(1.0 / tolerance)).sqrt()
    spacings = 1.0 / torch.linalg.inv_ex(lattice).inverse.transpose(1, 2).norm(dim=2)  # (B, 3), no error check
    return torch.floor(radius.unsqueeze(1) / spacings + 0.5).long()
