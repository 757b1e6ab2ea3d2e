"""The crystals the benchmark runs on, as pymatgen Structures (so any version of the model can batch them).

- :func:`reference_structures`: the fixed reference batch of model-spec §12 (16 crystals, 268 atoms, 5,480 atom
  pairs) on which the reference Crystalformer's CPU timings were taken. A re-implementation of
  ``/work/shared/bench/reference_batch.py`` that makes the same draws from ``random.Random(seed)`` in the same order,
  so the same crystals come out.
- :func:`mp_like_sizes` / :func:`mp_like_structures`: synthetic crystals whose atoms-per-cell follow a
  MEGNet-MP-like distribution (see :data:`MP_MEDIAN_ATOMS`).
- :func:`synthetic_crystal`: one random crystal of a given size (the scaling sweep).

Structures travel to the measuring subprocesses as JSON (:func:`dump_structures` / :func:`load_structures`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

# --- the reference batch -------------------------------------------------------------------------------------------
REFERENCE_CRYSTALS = 16
REFERENCE_SEED = 0
REFERENCE_ELEMENTS = ("Li", "O", "Fe", "Si", "Mg", "S")
REFERENCE_ATOMS_RANGE = (4, 30)  # inclusive
REFERENCE_LENGTH_RANGE = (4.0, 9.0)  # Å
REFERENCE_ANGLE_RANGE = (75.0, 105.0)  # degrees


def reference_structures(num_crystals: int = REFERENCE_CRYSTALS, seed: int = REFERENCE_SEED) -> list[Structure]:
    """The reference batch: random cells with random (unrelaxed, possibly overlapping) atoms.

    Draw order per crystal, from one ``random.Random(seed)``: the atom count, the three lengths, the three angles,
    the species, then the fractional coordinates atom by atom.
    """
    draw = random.Random(seed)
    structures = []
    for _ in range(num_crystals):
        num_atoms = draw.randint(*REFERENCE_ATOMS_RANGE)
        lengths = [draw.uniform(*REFERENCE_LENGTH_RANGE) for _axis in range(3)]
        angles = [draw.uniform(*REFERENCE_ANGLE_RANGE) for _axis in range(3)]
        species = draw.choices(REFERENCE_ELEMENTS, k=num_atoms)
        frac = [[draw.random(), draw.random(), draw.random()] for _atom in range(num_atoms)]
        structures.append(Structure(Lattice.from_parameters(*lengths, *angles), species, frac))
    return structures


# --- MEGNet-MP-like synthetic crystals -----------------------------------------------------------------------------
#: Atoms per cell ~ round(LogNormal(ln MP_MEDIAN_ATOMS, MP_LOG_SIGMA)) clipped to [1, MP_MAX_ATOMS]: a parametric
#: stand-in for MEGNet's MP-2018.6.1 set (69,239 cells), whose size distribution is right-skewed with a median of
#: about 8-10 atoms and a long tail to about 200. With these values: median 9, mean ~13, 90th percentile ~29,
#: 99th ~73; E[N²] ~ 400, so a batch of 128 has about 50,000 atom pairs (~9x the reference batch). It is an
#: approximation chosen for benchmarking, not a fit to the data set.
MP_MEDIAN_ATOMS = 9.0
MP_LOG_SIGMA = 0.9
MP_MAX_ATOMS = 200
#: Volume per atom ~ Uniform(12, 24) Å³ (typical of inorganic solids).
VOLUME_PER_ATOM_RANGE = (12.0, 24.0)
SWEEP_VOLUME_PER_ATOM = 16.0
#: Common elements of MP compounds; the species do not change the cost of the model.
MP_ELEMENTS = (
    "O", "Li", "Na", "K", "Mg", "Ca", "Sr", "Ba", "Al", "Si", "P", "S", "F", "Cl", "N",
    "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "La", "Se", "Ge", "Sn", "Nb", "Mo",
)  # fmt: skip


def mp_like_sizes(count: int, seed: int = 0) -> list[int]:
    """``count`` atoms-per-cell values drawn from the MP-like distribution."""
    rng = np.random.default_rng(seed)
    sizes = np.rint(rng.lognormal(mean=math.log(MP_MEDIAN_ATOMS), sigma=MP_LOG_SIGMA, size=count))
    return [int(n) for n in np.clip(sizes, 1, MP_MAX_ATOMS)]


def synthetic_crystal(
    num_atoms: int,
    rng: np.random.Generator,
    volume_per_atom: float | None = None,
    elements: Sequence[str] = MP_ELEMENTS,
) -> Structure:
    """A random triclinic cell with ``num_atoms`` atoms on a jittered grid (no two atoms closer than ~0.4 spacing).

    Lengths vary by up to 25% around a cube, angles lie in [75°, 105°]; the cell is scaled to ``num_atoms *
    volume_per_atom`` (default: drawn from :data:`VOLUME_PER_ATOM_RANGE`). Placement is O(N), so 512-atom cells
    build instantly.
    """
    if volume_per_atom is None:
        volume_per_atom = rng.uniform(*VOLUME_PER_ATOM_RANGE)
    lengths = rng.uniform(0.8, 1.25, size=3)
    angles = rng.uniform(*REFERENCE_ANGLE_RANGE, size=3)
    lattice = Lattice.from_parameters(*lengths, *angles).scale(num_atoms * volume_per_atom)
    per_axis = math.ceil(num_atoms ** (1 / 3) - 1e-9)
    sites = rng.choice(per_axis**3, size=num_atoms, replace=False)
    grid = np.stack(np.unravel_index(sites, (per_axis,) * 3), axis=1).astype(float)
    frac = (grid + 0.5 + rng.uniform(-0.3, 0.3, size=grid.shape)) / per_axis
    species = rng.choice(np.asarray(elements), size=num_atoms)
    return Structure(lattice, [str(s) for s in species], frac % 1.0)


def mp_like_structures(count: int, seed: int = 0) -> list[Structure]:
    """``count`` synthetic crystals with MP-like sizes (deterministic in ``seed``)."""
    rng = np.random.default_rng([seed, 1])
    return [synthetic_crystal(n, rng) for n in mp_like_sizes(count, seed)]


def sweep_structure(num_atoms: int, seed: int = 0) -> Structure:
    """The scaling-sweep crystal with ``num_atoms`` atoms (fixed density, so images per pair fall as cells grow)."""
    return synthetic_crystal(num_atoms, np.random.default_rng([seed, 2, num_atoms]), SWEEP_VOLUME_PER_ATOM)


# --- description and transport -------------------------------------------------------------------------------------
def describe(structures: Sequence[Structure]) -> dict[str, int]:
    """Counts of a batch: crystals, atoms, atom pairs (sum of N²) and the largest cell."""
    sizes = [len(s) for s in structures]
    return {
        "crystals": len(sizes),
        "atoms": sum(sizes),
        "atom_pairs": sum(n * n for n in sizes),
        "max_atoms": max(sizes),
    }


def dump_structures(structures: Sequence[Structure], path: str | Path) -> Path:
    """Write structures as a JSON list of pymatgen dicts."""
    path = Path(path)
    path.write_text(json.dumps([s.as_dict() for s in structures]))
    return path


def load_structures(path: str | Path) -> list[Structure]:
    return [Structure.from_dict(d) for d in json.loads(Path(path).read_text())]
