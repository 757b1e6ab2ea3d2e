"""Crystals for the model tests: small hand-made cells, real structures shipped with pymatgen and ase (read from
the installed packages, no network), and random cells with symmetries that make frame choices ties."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from framer.data.structures import CrystalRecord
from framer.testing import random_rotation

# pymatgen's test structures (pymatgen/util/structures/*.json): 1-28 atoms, orthogonal, cubic, hexagonal, triclinic
PYMATGEN_NAMES = ["CsCl", "He_BCC", "Si", "Li2O", "SrTiO3", "VO2", "K2O2", "Graphite", "Pb2TiZrO6", "La2CoO4F"]
DCDFT_SYMBOLS = ["Po", "Fe", "Mg", "In", "Bi", "Se"]  # ase's Delta-codes elemental crystals (1-3 atoms)


def _cubic(id: str, a: float, frac, numbers) -> CrystalRecord:
    return CrystalRecord(id, np.eye(3) * a, np.asarray(frac, dtype=float), np.asarray(numbers, dtype=np.int64))


def rock_salt() -> CrystalRecord:
    """Conventional cubic NaCl (8 atoms)."""
    fcc = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    frac = fcc + [[x + 0.5 if x < 0.5 else x - 0.5 for x in f[:1]] + f[1:] for f in fcc]
    return _cubic("NaCl", 5.64, frac, [11] * 4 + [17] * 4)


def bcc_iron() -> CrystalRecord:
    return _cubic("Fe-bcc", 2.87, [[0, 0, 0], [0.5, 0.5, 0.5]], [26, 26])


def fcc_copper_primitive() -> CrystalRecord:
    a = 3.61
    lattice = 0.5 * a * np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    return CrystalRecord("Cu-fcc", lattice, np.zeros((1, 3)), np.array([29]))


def simple_cubic() -> CrystalRecord:
    """A one-atom cell (alpha-Po)."""
    return _cubic("Po-sc", 3.35, [[0, 0, 0]], [84])


def symmetric_crystals() -> list[CrystalRecord]:
    return [rock_salt(), bcc_iron(), fcc_copper_primitive(), simple_cubic()]


def pymatgen_structure(name: str):
    """A pymatgen test structure, read from the installed package."""
    import pymatgen.core
    from pymatgen.core import Structure

    path = Path(pymatgen.core.__file__).parents[1] / "util" / "structures" / f"{name}.json"
    return Structure.from_dict(json.loads(path.read_text()))


def record_of(structure, id: str) -> CrystalRecord:
    """A record with the structure's lattice and coordinates exactly as given (no reduction, no wrapping)."""
    numbers = np.array([site.specie.Z for site in structure], dtype=np.int64)
    return CrystalRecord(id, structure.lattice.matrix.copy(), structure.frac_coords.copy(), numbers)


def pymatgen_crystals(names=PYMATGEN_NAMES) -> list[CrystalRecord]:
    return [record_of(pymatgen_structure(name), name) for name in names]


def dcdft_crystals(symbols=DCDFT_SYMBOLS) -> list[CrystalRecord]:
    """Elemental crystals of ase's Delta-codes DFT collection (shipped with ase)."""
    from ase.collections import dcdft

    records = []
    for symbol in symbols:
        atoms = dcdft[symbol]
        records.append(
            CrystalRecord(
                f"dcdft-{symbol}", np.array(atoms.cell[:]), atoms.get_scaled_positions(), atoms.numbers.astype(np.int64)
            )
        )
    return records


def strained(record: CrystalRecord, strain=(0.01, -0.02, 0.015)) -> CrystalRecord:
    """The crystal stretched along its lattice vectors (right angles stay right angles)."""
    lattice = record.lattice * (1.0 + np.asarray(strain))[:, None]
    return CrystalRecord(record.id + "-strained", lattice, record.frac_coords, record.atomic_numbers)


def perturbed(record: CrystalRecord, scale: float = 0.02, seed: int = 0) -> CrystalRecord:
    """Atoms displaced by up to ``scale`` Å (most symmetry broken; one-atom cells keep theirs)."""
    rng = np.random.default_rng(seed)
    shift = rng.uniform(-scale, scale, size=record.frac_coords.shape) @ np.linalg.inv(record.lattice)
    return CrystalRecord(record.id + "-perturbed", record.lattice, record.frac_coords + shift, record.atomic_numbers)


def random_orthogonal(num_atoms: int, seed: int, cubic: bool = False) -> CrystalRecord:
    """Random atoms in a random orthorhombic (or cubic) cell, arbitrarily oriented: lattice frames tie in sign."""
    rng = np.random.default_rng(seed)
    lengths = np.full(3, rng.uniform(3.0, 5.0)) if cubic else rng.uniform(3.0, 6.0, size=3)
    lattice = np.diag(lengths) @ random_rotation(rng).T
    numbers = rng.integers(1, 60, size=num_atoms).astype(np.int64)
    return CrystalRecord(f"orthogonal-{num_atoms}", lattice, rng.random((num_atoms, 3)), numbers)


def random_centrosymmetric(pairs: int, seed: int) -> CrystalRecord:
    """A random triclinic crystal with an atom on an inversion centre and ``pairs`` pairs at +-f: its environment
    is centrosymmetric and has no other symmetry, so every third moment of it vanishes."""
    rng = np.random.default_rng(seed)
    lattice = (np.eye(3) + 0.2 * rng.normal(size=(3, 3))) * 4.0
    half = rng.uniform(-0.45, 0.45, size=(pairs, 3))
    frac = np.concatenate([np.zeros((1, 3)), half, -half]) % 1.0
    species = rng.integers(3, 40, size=pairs)
    numbers = np.concatenate([[26], species, species]).astype(np.int64)
    return CrystalRecord(f"centrosymmetric-{2 * pairs + 1}", lattice, frac, numbers)


def standard_cells(name: str) -> tuple[CrystalRecord, CrystalRecord]:
    """(primitive, conventional) standard cells of a pymatgen test structure, from one symmetry refinement."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analyzer = SpacegroupAnalyzer(pymatgen_structure(name), symprec=1e-3)
        primitive = analyzer.get_primitive_standard_structure()
        conventional = analyzer.get_conventional_standard_structure()
    return record_of(primitive, f"{name}-primitive"), record_of(conventional, f"{name}-conventional")


def niggli(record: CrystalRecord) -> CrystalRecord:
    """The same crystal in its Niggli-reduced cell."""
    from pymatgen.core import Lattice, Structure

    structure = Structure(Lattice(record.lattice), record.atomic_numbers.tolist(), record.frac_coords)
    return record_of(structure.get_reduced_structure("niggli"), record.id + "-niggli")
