"""The embedded default data set: random charge-neutral ionic crystals labelled with their Ewald energy per atom.

Each crystal picks one anion and one or two cations from small sets with fixed oxidation states, a neutral
composition of 2-40 atoms (a charge-neutral ionic cell needs at least two), a random triclinic lattice (lengths
within a factor ~1.8 of each other, angles 65-115°, 10-22 Å^3 per atom to start with) and random positions placed
one by one so that unlike ions are at least 1.5 Å and like ions at least 2.0 Å apart (the cell grows by 15% when
placement fails). The target is pymatgen's ``EwaldSummation(structure, acc_factor=8).total_energy / num_atoms``
(eV/atom) on the oxidation-state-decorated structure; acc_factor 8 agrees with the default 12 to ~1e-7 eV/atom.

Crystal ``i`` of seed ``s`` depends only on ``(s, i)``, so the data set is identical however it is chunked over
worker processes. Use :func:`generate_records` in tests (64 crystals take one to two seconds).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from framer.data.cells import closest_pair_distance
from framer.data.parallel import map_chunks
from framer.data.structures import CrystalRecord, make_record
from framer.geometry import interplanar_spacings

GENERATOR_VERSION = 1
CATIONS = {"Li": 1, "Na": 1, "K": 1, "Mg": 2, "Ca": 2, "Sr": 2, "Zn": 2, "Al": 3, "Y": 3, "Ti": 4}
ANIONS = {"F": -1, "Cl": -1, "Br": -1, "O": -2, "S": -2, "N": -3}
MIN_DISTANCE = 1.5  # Å, any two atoms
LIKE_CHARGE_MIN_DISTANCE = 2.0  # Å, two cations or two anions
MAX_ATOMS = 40
VOLUME_PER_ATOM = (10.0, 22.0)  # Å^3
ANGLE_RANGE = (65.0, 115.0)  # degrees
EWALD_ACCURACY = 8.0  # pymatgen acc_factor; agrees with the default 12 to ~1e-7 eV/atom at twice the speed
TARGET_NAME = "ewald_energy"
TARGET_UNITS = "eV/atom"


def _formula_unit(cation: str, anion: str) -> tuple[int, int]:
    """Smallest neutral (cation count, anion count)."""
    qc, qa = CATIONS[cation], -ANIONS[anion]
    g = math.gcd(qc, qa)
    return qa // g, qc // g


def random_composition(rng: np.random.Generator, max_atoms: int = MAX_ATOMS) -> list[tuple[str, int]]:
    """A neutral list of (element, oxidation state) of at most ``max_atoms`` atoms."""
    fits = {
        anion: [c for c in sorted(CATIONS) if sum(_formula_unit(c, anion)) <= max_atoms] for anion in sorted(ANIONS)
    }
    anion = str(rng.choice([a for a, cations in fits.items() if cations]))
    qa = -ANIONS[anion]
    n_cations = 2 if rng.random() < 0.4 and len(fits[anion]) > 1 else 1
    cations = [str(c) for c in rng.choice(fits[anion], size=n_cations, replace=False)]
    units = [(c, *_formula_unit(c, anion)) for c in cations]  # (cation, cation count, anion count)
    if sum(a + b for _, a, b in units) > max_atoms:
        units = units[:1]
    budget = max_atoms - sum(a + b for _, a, b in units)  # atoms left after one formula unit of each
    sites = []
    for cation, n_cat, n_an in units:
        z = 1 + int(rng.integers(0, budget // (n_cat + n_an) + 1))
        budget -= (z - 1) * (n_cat + n_an)
        sites += [(cation, CATIONS[cation])] * (z * n_cat) + [(anion, -qa)] * (z * n_an)
    return sites


def random_lattice(rng: np.random.Generator, volume: float) -> np.ndarray:
    """A random triclinic lattice (rows a, b, c) of the given volume with a well-conditioned shape."""
    while True:
        alpha, beta, gamma = np.radians(rng.uniform(*ANGLE_RANGE, size=3))
        ca, cb, cg = np.cos(alpha), np.cos(beta), np.cos(gamma)
        shape = 1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg
        if shape > 0.45:  # reject near-flat cells
            break
    lengths = rng.uniform(0.75, 1.35, size=3)
    sg = np.sin(gamma)
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([cg, sg, 0.0])
    cx = cb
    cy = (ca - cb * cg) / sg
    c = np.array([cx, cy, math.sqrt(max(1 - cx**2 - cy**2, 1e-12))])
    lattice = np.stack([a, b, c]) * lengths[:, None]
    return lattice * (volume / abs(np.linalg.det(lattice))) ** (1 / 3)


_IMAGES = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=np.float64)


def _place_atoms(rng: np.random.Generator, lattice: np.ndarray, charges: np.ndarray, attempts: int = 512):
    """Random sequential placement with periodic minimum distances; None when the cell is too crowded.

    Unlike charges keep MIN_DISTANCE apart, like charges LIKE_CHARGE_MIN_DISTANCE (as in real ionic solids).
    """
    n = len(charges)
    sign = np.sign(charges)
    frac = rng.random((1, 3))
    images = _IMAGES @ lattice  # (27, 3) Cartesian image offsets
    batch = 8
    while len(frac) < n:
        k = len(frac)
        limit = np.where(sign[:k] == sign[k], LIKE_CHARGE_MIN_DISTANCE, MIN_DISTANCE) ** 2  # (k,)
        for _ in range(attempts // batch):
            candidates = rng.random((batch, 3))
            diff = candidates[:, None, :] - frac[None, :, :]
            diff -= np.round(diff)
            cart = (diff.reshape(-1, 3) @ lattice).reshape(batch, k, 1, 3) + images
            ok = np.flatnonzero((np.einsum("cair,cair->cai", cart, cart).min(axis=2) >= limit).all(axis=1))
            if len(ok):
                frac = np.vstack([frac, candidates[ok[0]]])
                break
        else:
            return None
    return frac


def random_ionic_crystal(seed: int, index: int, max_atoms: int = MAX_ATOMS):
    """The ``index``-th crystal of ``seed`` as (lattice, frac_coords, symbols, oxidation states)."""
    rng = np.random.default_rng([seed, index, GENERATOR_VERSION])
    sites = random_composition(rng, max_atoms)
    order = rng.permutation(len(sites))
    sites = [sites[i] for i in order]
    n = len(sites)
    volume = n * rng.uniform(*VOLUME_PER_ATOM)
    while True:
        lattice = random_lattice(rng, volume)
        if interplanar_spacings(lattice).min() >= LIKE_CHARGE_MIN_DISTANCE:
            frac = _place_atoms(rng, lattice, np.array([q for _, q in sites]))
            if frac is not None and (n == 1 or closest_pair_distance(lattice, frac, MIN_DISTANCE) >= MIN_DISTANCE):
                return lattice, frac, [s for s, _ in sites], [q for _, q in sites]
        volume *= 1.15


def ionic_structure(seed: int, index: int, max_atoms: int = MAX_ATOMS):
    """The ``index``-th crystal of ``seed`` as an oxidation-state-decorated pymatgen Structure, labelled
    ``structure.properties["ewald"]``: pymatgen's Ewald total energy (eV) divided by the atom count."""
    from pymatgen.analysis.ewald import EwaldSummation
    from pymatgen.core import Species, Structure

    lattice, frac, symbols, charges = random_ionic_crystal(seed, index, max_atoms)
    structure = Structure(lattice, [Species(s, q) for s, q in zip(symbols, charges)], frac)
    energy = float(EwaldSummation(structure, acc_factor=EWALD_ACCURACY).total_energy) / len(structure)
    structure.properties["ewald"] = energy
    return structure


def make_crystal(seed: int, index: int, max_atoms: int = MAX_ATOMS) -> CrystalRecord:
    """One labelled crystal as a :class:`CrystalRecord` (id ``ewald-<seed>-<index>``)."""
    s = ionic_structure(seed, index, max_atoms)
    lattice, frac, numbers, energy = s.lattice.matrix, s.frac_coords, s.atomic_numbers, s.properties["ewald"]
    return make_record(f"ewald-{seed}-{index:05d}", lattice, frac, numbers, energy, max_atoms=max_atoms)


def generate_records(n: int, seed: int = 0, num_workers: int = 0, max_atoms: int = MAX_ATOMS) -> list[CrystalRecord]:
    """``n`` labelled random ionic crystals of at most ``max_atoms`` (>= 2) atoms, deterministic in ``seed`` and
    independent of ``num_workers`` (processes forked on Linux, :func:`framer.data.parallel.map_chunks`)."""
    if max_atoms < 2:
        raise ValueError("max_atoms must be at least 2 (a neutral ionic cell has a cation and an anion)")
    make = functools.partial(_make_crystals, seed, max_atoms)
    parts = map_chunks(make, range(n), num_workers, min_chunk=16)  # ~20 ms per crystal: small chunks pay off
    return [record for part in parts for record in part]


def _make_crystals(seed: int, max_atoms: int, indices: range) -> list[CrystalRecord]:
    return [make_crystal(seed, i, max_atoms) for i in indices]


def generate_structures(n: int, seed: int = 0, max_atoms: int = MAX_ATOMS) -> list:
    """The same crystals as :func:`ionic_structure` gives them."""
    return [ionic_structure(seed, i, max_atoms) for i in range(n)]
