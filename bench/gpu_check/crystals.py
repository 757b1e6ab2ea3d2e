"""The synthetic crystals of the bench tools, built with numpy alone (the lent GPU image has no pymatgen).

One owner for the GPU check, the speed benchmark (:mod:`bench.speed`, which turns these records into pymatgen
Structures so any version of framer can batch them) and the cache-build benchmark (:mod:`bench.cache_build`):

- :func:`reference_batch`: the fixed reference batch of docs/model.md "Performance" (16 random crystals, 268 atoms,
  5,480 atom pairs), on which the reference Crystalformer's CPU timings were taken. The draws from
  ``random.Random(0)`` are made in the reference's order, with pymatgen's ``Lattice.from_parameters`` convention
  written out in numpy; a test builds the batch with pymatgen the reference's way and checks both are the same.
- :data:`SIZE_DISTRIBUTIONS`: atoms per cell drawn from log-normal stand-ins for MEGNet-MP and JARVIS-DFT 3D.
- :func:`synthetic_record`: one random triclinic cell of a given size, atoms on a jittered grid (no overlaps).

Records are built as :class:`framer.data.structures.CrystalRecord` directly (no validation, which would call
pymatgen) and batched with :func:`framer.data.batch.collate_records`; both modules import only numpy and torch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from framer.data.batch import CrystalBatch, collate_records
from framer.data.structures import CrystalRecord

# --- the reference batch -------------------------------------------------------------------------------------------
REFERENCE_CRYSTALS = 16
REFERENCE_ELEMENTS = {"Li": 3, "O": 8, "Fe": 26, "Si": 14, "Mg": 12, "S": 16}  # draw order matters: keep it
REFERENCE_ATOMS_RANGE = (4, 30)  # inclusive
REFERENCE_LENGTH_RANGE = (4.0, 9.0)  # Å
REFERENCE_ANGLE_RANGE = (75.0, 105.0)  # degrees


def lattice_from_parameters(a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """Lattice rows from lengths (Å) and angles (degrees), in pymatgen's ``Lattice.from_parameters`` orientation."""
    cos_alpha, cos_beta, cos_gamma = np.cos(np.radians([alpha, beta, gamma]))
    sin_alpha, sin_beta = np.sin(np.radians([alpha, beta]))
    gamma_star = np.arccos(np.clip((cos_alpha * cos_beta - cos_gamma) / (sin_alpha * sin_beta), -1.0, 1.0))
    return np.array(
        [
            [a * sin_beta, 0.0, a * cos_beta],
            [-b * sin_alpha * np.cos(gamma_star), b * sin_alpha * np.sin(gamma_star), b * cos_alpha],
            [0.0, 0.0, float(c)],
        ]
    )


def reference_records(num_crystals: int = REFERENCE_CRYSTALS, seed: int = 0) -> list[CrystalRecord]:
    """The reference batch: random cells with random (unrelaxed, possibly overlapping) atoms.

    Draw order per crystal, from one ``random.Random(seed)``: the atom count, the three lengths, the three angles,
    the species, then the fractional coordinates atom by atom.
    """
    draw = random.Random(seed)
    symbols = list(REFERENCE_ELEMENTS)
    records = []
    for index in range(num_crystals):
        num_atoms = draw.randint(*REFERENCE_ATOMS_RANGE)
        lengths = [draw.uniform(*REFERENCE_LENGTH_RANGE) for _axis in range(3)]
        angles = [draw.uniform(*REFERENCE_ANGLE_RANGE) for _axis in range(3)]
        species = draw.choices(symbols, k=num_atoms)
        frac = [[draw.random(), draw.random(), draw.random()] for _atom in range(num_atoms)]
        records.append(
            CrystalRecord(
                id=f"reference-{index}",
                lattice=lattice_from_parameters(*lengths, *angles),
                frac_coords=np.array(frac, dtype=np.float64),
                atomic_numbers=np.array([REFERENCE_ELEMENTS[s] for s in species], dtype=np.int64),
            )
        )
    return records


def reference_batch(num_crystals: int = REFERENCE_CRYSTALS) -> CrystalBatch:
    return collate_records(reference_records(num_crystals))


# --- data-set-like synthetic crystals ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SizeDistribution:
    """Atoms per cell ~ round(LogNormal(ln median, sigma)) clipped to [1, max_atoms]; ``train_size``: training split."""

    name: str
    median: float
    sigma: float
    max_atoms: int
    train_size: int
    note: str

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` atoms-per-cell values from ``rng`` (callers that must repeat earlier draws seed it their way)."""
        drawn = np.rint(rng.lognormal(mean=math.log(self.median), sigma=self.sigma, size=count))
        return np.clip(drawn, 1, self.max_atoms).astype(int)

    def sizes(self, count: int, seed: int = 0) -> list[int]:
        rng = np.random.default_rng([seed, self.max_atoms, int(self.median * 10)])
        return [int(n) for n in self.draw(count, rng)]


#: Stand-ins for the two data sets' atoms-per-cell distributions. Neither set can be read on the lent GPU machine
#: (no data, no jarvis-tools) and the project's reference notes give no histogram, so these are documented
#: approximations, not fits. MEGNet-MP 2018.6.1 (69,239 cells) is right-skewed with a median of about 8-10 atoms and
#: a long tail to about 200: median 9, sigma 0.9, at most 200 atoms gives a mean of ~13, a 90th percentile of ~29,
#: a 99th of ~73 and E[N²] ~400 (a batch of 128 has about 50,000 atom pairs, ~9x the reference batch). JARVIS-DFT 3D
#: 2021: smaller cells than MP on average (many elemental and binary prototypes, primitive cells), a median of 7 and
#: a shorter tail (sigma 0.8, at most 140 atoms): mean ~9.6, E[N²] ~190. The projected epoch time scales with
#: E[N² x images], so replace these with the real histograms when they are at hand (``python -m framer.data info``
#: on a machine with the raw files).
SIZE_DISTRIBUTIONS = {
    "mp": SizeDistribution("MEGNet-MP-like", 9.0, 0.9, 200, 60_000, "approximation (no histogram at hand)"),
    "jarvis": SizeDistribution("JARVIS-like", 7.0, 0.8, 140, 44_578, "approximation (no histogram at hand)"),
}

VOLUME_PER_ATOM_RANGE = (12.0, 24.0)  # Å³, typical of inorganic solids
SWEEP_VOLUME_PER_ATOM = 16.0
SYNTHETIC_ELEMENTS = np.arange(1, 84)  # H..Bi; the species do not change the cost of the model


def synthetic_record(
    num_atoms: int, rng: np.random.Generator, volume_per_atom: float | None = None, id: str = ""
) -> CrystalRecord:
    """A random triclinic cell with ``num_atoms`` atoms on a jittered grid (atoms at least ~0.4 spacing apart).

    Lengths vary by up to 25% around a cube, angles lie in [75°, 105°]; the cell is scaled to ``num_atoms *
    volume_per_atom`` (default: drawn from :data:`VOLUME_PER_ATOM_RANGE`).
    """
    if volume_per_atom is None:
        volume_per_atom = rng.uniform(*VOLUME_PER_ATOM_RANGE)
    lattice = lattice_from_parameters(*rng.uniform(0.8, 1.25, size=3), *rng.uniform(*REFERENCE_ANGLE_RANGE, size=3))
    lattice *= (num_atoms * volume_per_atom / abs(np.linalg.det(lattice))) ** (1 / 3)
    per_axis = math.ceil(num_atoms ** (1 / 3) - 1e-9)
    sites = rng.choice(per_axis**3, size=num_atoms, replace=False)
    grid = np.stack(np.unravel_index(sites, (per_axis,) * 3), axis=1).astype(float)
    frac = (grid + 0.5 + rng.uniform(-0.3, 0.3, size=grid.shape)) / per_axis
    numbers = rng.choice(SYNTHETIC_ELEMENTS, size=num_atoms).astype(np.int64)
    return CrystalRecord(id or f"synthetic-{num_atoms}", lattice, frac % 1.0, numbers, float(rng.normal()))


def iter_like_records(kind: str, count: int, seed: int = 0) -> Iterator[CrystalRecord]:
    """``count`` synthetic crystals with the atoms-per-cell distribution ``kind`` ("mp" or "jarvis"), one by one.

    The first k of them are the same for every ``count`` >= k: a shorter run sees a prefix of the same epoch.
    """
    rng = np.random.default_rng([seed, 7])
    for i, n in enumerate(SIZE_DISTRIBUTIONS[kind].sizes(count, seed)):
        yield synthetic_record(n, rng, id=f"{kind}-{seed}-{i}")


def like_records(kind: str, count: int, seed: int = 0) -> list[CrystalRecord]:
    return list(iter_like_records(kind, count, seed))


def sweep_record(num_atoms: int, seed: int = 0) -> CrystalRecord:
    """A cell of ``num_atoms`` atoms at fixed density (the largest-cell search)."""
    return synthetic_record(num_atoms, np.random.default_rng([seed, 2, num_atoms]), SWEEP_VOLUME_PER_ATOM)


def describe(records: list[CrystalRecord]) -> dict[str, float]:
    """Crystals, atoms, atom pairs (sum of N²), mean and largest cell."""
    sizes = np.array([r.num_atoms for r in records])
    return {
        "crystals": len(sizes),
        "atoms": int(sizes.sum()),
        "atom_pairs": int((sizes**2).sum()),
        "mean_atoms": float(sizes.mean()),
        "max_atoms": int(sizes.max()),
    }
