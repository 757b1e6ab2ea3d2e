"""Geometry of periodic cells for validating records: the cheapest basis of a lattice and exact short distances.

- :func:`reduce_cell` swaps a skewed basis (e.g. c' = c + 45a + 45b) for its LLL-reduced one, which spans the same
  lattice, when that needs fewer periodic images; coordinates are transformed so the atoms stay where they are.
- :func:`closest_pair_distance` finds the shortest distance between two atoms, or an atom and its own periodic image,
  with a k-d tree: memory grows with the number of atoms N, not N² (pairwise distance matrices need 8 N² bytes).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from framer.geometry import IMAGE_CUTOFF, MIN_IMAGE_RANGE, interplanar_spacings

MIN_IMAGE_COUNT = float((2 * MIN_IMAGE_RANGE + 1) ** 3)  # the smallest image box (5x5x5)


def image_count(lattice: np.ndarray, spacings: np.ndarray | None = None) -> float:
    """Number of periodic images in the box :func:`framer.geometry.image_box` gives the lattice (inf if degenerate);
    ``spacings``: the lattice's :func:`~framer.geometry.interplanar_spacings`, when already at hand."""
    if spacings is None:
        with np.errstate(all="ignore"):
            spacings = interplanar_spacings(lattice)
    count = 1.0
    for spacing in spacings.tolist():  # three floats: plain Python is several times faster than numpy here
        if not spacing > 0:  # zero or NaN
            return math.inf
        reach = IMAGE_CUTOFF / spacing
        if not math.isfinite(reach):
            return math.inf
        count *= 2.0 * max(MIN_IMAGE_RANGE, float(math.ceil(reach))) + 1.0
    return count if math.isfinite(count) else math.inf


def reduce_cell(
    lattice: np.ndarray, frac_coords: np.ndarray, spacings: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The LLL-reduced basis (pymatgen, delta 0.75) and the coordinates in it, if its image box is smaller.

    A basis whose image box is already as small is kept as given (the same array objects returned), so cells stored
    as published, e.g. hexagonal cells with a 120° angle, stay bit for bit the paper's input. A basis with the
    smallest box there is (5x5x5) is kept without reducing it. The new fractional coordinates are not wrapped:
    Cartesian positions are unchanged (up to rounding). ``spacings``: the given lattice's interplanar spacings, if
    known.
    """
    given_count = image_count(lattice, spacings)
    if given_count <= MIN_IMAGE_COUNT:
        return lattice, frac_coords
    from pymatgen.core.lattice import Lattice

    given = Lattice(lattice)
    with np.errstate(all="ignore"):  # absurd (huge) inputs overflow: an infinite image count, or huge coordinates
        reduced = given.get_lll_reduced_lattice()
        if image_count(reduced.matrix) >= given_count:
            return lattice, frac_coords
        return np.array(reduced.matrix, dtype=np.float64), np.asarray(given.get_lll_frac_coords(frac_coords))


def closest_pair_distance(
    lattice: np.ndarray, frac_coords: np.ndarray, cutoff: float, spacings: np.ndarray | None = None
) -> float:
    """Shortest distance (Å) between two atoms or an atom and a periodic image of itself, if below ``cutoff``.

    Returns ``inf`` when no pair is closer than ``cutoff``. Exact: the atoms are wrapped into the cell, every periodic
    image within ``cutoff`` of the cell is added, and a k-d tree gives each atom's nearest other point. Memory is
    O(N) (at most 27 N points when ``cutoff`` does not exceed the cell's interplanar spacings). ``spacings``: the
    lattice's interplanar spacings, if known.
    """
    from scipy.spatial import cKDTree

    if spacings is None:
        spacings = interplanar_spacings(lattice)
    frac = np.asarray(frac_coords, dtype=np.float64)
    frac = frac - np.floor(frac)
    # fractional thickness of a layer `cutoff` thick on each face (plus a hair, so rounding cannot drop an image)
    margin = cutoff * (1 + 1e-9) / spacings
    shifts = _offsets(*np.ceil(margin).astype(int).tolist())
    moved = frac[None, :, :] + shifts[:, None, :]  # (shifts, N, 3)
    near = ((moved > -margin) & (moved < 1 + margin)).all(axis=2)
    tree = cKDTree(np.concatenate([frac, moved[near]]) @ lattice)
    distances, _ = tree.query(frac @ lattice, k=2, distance_upper_bound=cutoff)  # [:, 0] is the atom itself
    return float(distances[:, 1].min())


def shortest_lattice_vector(lattice: np.ndarray, cutoff: float, spacings: np.ndarray | None = None) -> float:
    """Length (Å) of the shortest non-zero lattice vector if below ``cutoff``, else ``inf``; ``spacings``: the
    lattice's interplanar spacings, if known."""
    if spacings is None:
        spacings = interplanar_spacings(lattice)
    # a vector n L is at least |n_m| times the spacing of the planes m apart, so shorter ones have small |n_m|
    reach = np.floor(cutoff / spacings)
    if not reach.any():  # every plane spacing is at least the cutoff: no shorter vector
        return math.inf
    lengths = np.linalg.norm(_offsets(*reach.astype(int).tolist()) @ lattice, axis=1)
    lengths = lengths[lengths < cutoff]
    return float(lengths.min()) if len(lengths) else math.inf


@functools.lru_cache(maxsize=64)
def _offsets(r1: int, r2: int, r3: int) -> np.ndarray:
    """Integer translations (M, 3) with |n_m| <= r_m, without the zero translation (read-only)."""
    axes = [np.arange(-r, r + 1, dtype=np.float64) for r in (r1, r2, r3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    grid = grid[np.any(grid != 0, axis=1)]
    grid.setflags(write=False)
    return grid
