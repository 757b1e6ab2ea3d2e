"""Geometry of periodic cells for validating records: the cheapest basis of a lattice and exact short distances.

- :func:`reduce_cell` swaps a skewed basis (e.g. c' = c + 45a + 45b) for its LLL-reduced one, which spans the same
  lattice, when that needs fewer periodic images; coordinates are transformed so the atoms stay where they are.
- :func:`closest_pair_distance` finds the shortest distance between two atoms, or an atom and its own periodic image,
  with a k-d tree: memory grows with the number of atoms N, not N² (pairwise distance matrices need 8 N² bytes).
"""

from __future__ import annotations

import numpy as np

from framer.geometry import IMAGE_CUTOFF, MIN_IMAGE_RANGE, interplanar_spacings


def image_count(lattice: np.ndarray) -> float:
    """Number of periodic images in the box :func:`framer.geometry.image_box` gives the lattice (inf if degenerate)."""
    with np.errstate(all="ignore"):
        ranges = np.maximum(MIN_IMAGE_RANGE, np.ceil(IMAGE_CUTOFF / interplanar_spacings(lattice)))
        count = float(np.prod(2 * ranges + 1))
    return count if np.isfinite(count) else np.inf


def reduce_cell(lattice: np.ndarray, frac_coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The LLL-reduced basis (pymatgen, delta 0.75) and the coordinates in it, if its image box is smaller.

    A basis whose image box is already as small is kept as given (arrays returned unchanged), so cells stored as
    published, e.g. hexagonal cells with a 120° angle, stay bit for bit the paper's input. The new fractional
    coordinates are not wrapped: Cartesian positions are unchanged (up to rounding).
    """
    from pymatgen.core.lattice import Lattice

    given = Lattice(lattice)
    with np.errstate(all="ignore"):  # absurd (huge) inputs overflow: an infinite image count, or huge coordinates
        reduced = given.get_lll_reduced_lattice()
        if image_count(reduced.matrix) >= image_count(lattice):
            return lattice, frac_coords
        return np.array(reduced.matrix, dtype=np.float64), np.asarray(given.get_lll_frac_coords(frac_coords))


def closest_pair_distance(lattice: np.ndarray, frac_coords: np.ndarray, cutoff: float) -> float:
    """Shortest distance (Å) between two atoms or an atom and a periodic image of itself, if below ``cutoff``.

    Returns ``inf`` when no pair is closer than ``cutoff``. Exact: the atoms are wrapped into the cell, every periodic
    image within ``cutoff`` of the cell is added, and a k-d tree gives each atom's nearest other point. Memory is
    O(N) (at most 27 N points when ``cutoff`` does not exceed the cell's interplanar spacings).
    """
    from scipy.spatial import cKDTree

    frac = np.asarray(frac_coords, dtype=np.float64)
    frac = frac - np.floor(frac)
    # fractional thickness of a layer `cutoff` thick on each face (plus a hair, so rounding cannot drop an image)
    margin = cutoff * (1 + 1e-9) / interplanar_spacings(lattice)
    shifts = _offsets(np.ceil(margin))
    moved = frac[None, :, :] + shifts[:, None, :]  # (shifts, N, 3)
    near = ((moved > -margin) & (moved < 1 + margin)).all(axis=2)
    tree = cKDTree(np.concatenate([frac, moved[near]]) @ lattice)
    distances, _ = tree.query(frac @ lattice, k=2, distance_upper_bound=cutoff)  # [:, 0] is the atom itself
    return float(distances[:, 1].min())


def shortest_lattice_vector(lattice: np.ndarray, cutoff: float) -> float:
    """Length (Å) of the shortest non-zero lattice vector if below ``cutoff``, else ``inf``."""
    # a vector n L is at least |n_m| times the spacing of the planes m apart, so shorter ones have small |n_m|
    lengths = np.linalg.norm(_offsets(np.floor(cutoff / interplanar_spacings(lattice))) @ lattice, axis=1)
    lengths = lengths[lengths < cutoff]
    return float(lengths.min()) if len(lengths) else np.inf


def _offsets(reach: np.ndarray) -> np.ndarray:
    """Integer translations (M, 3) with |n_m| <= reach_m, without the zero translation."""
    axes = [np.arange(-int(r), int(r) + 1, dtype=np.float64) for r in reach]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid[np.any(grid != 0, axis=1)]
