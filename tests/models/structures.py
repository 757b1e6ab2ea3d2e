"""Small hand-made crystals for the model tests."""

from __future__ import annotations

import numpy as np

from framer.data.structures import CrystalRecord


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
