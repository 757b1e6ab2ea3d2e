"""The crystals the benchmark runs on, as pymatgen Structures (so any version of the model can batch them).

The crystals themselves come from :mod:`bench.gpu_check.crystals`, the bench tools' one owner of synthetic crystals:

- :func:`reference_structures`: the fixed reference batch (16 crystals, 268 atoms, 5,480 atom pairs) on which the
  reference Crystalformer's CPU timings were taken (docs/model.md "Performance").
- :func:`mp_like_structures`: synthetic crystals whose atoms per cell follow the MEGNet-MP-like stand-in.
- :func:`sweep_structure`: one cell of a given size at fixed density (the scaling sweep).

Structures travel to the measuring subprocesses as JSON (:func:`dump_structures` / :func:`load_structures`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

from bench.gpu_check import crystals
from framer.data.structures import CrystalRecord

REFERENCE_CRYSTALS = crystals.REFERENCE_CRYSTALS


def structure(record: CrystalRecord) -> Structure:
    """The pymatgen Structure of a record (same lattice rows, fractional coordinates and elements)."""
    return Structure(Lattice(record.lattice), [int(z) for z in record.atomic_numbers], record.frac_coords)


def reference_structures(num_crystals: int = REFERENCE_CRYSTALS) -> list[Structure]:
    """The first ``num_crystals`` crystals of the reference batch."""
    return [structure(r) for r in crystals.reference_records(num_crystals)]


def mp_like_sizes(count: int, seed: int = 0) -> list[int]:
    """``count`` atoms-per-cell values from the MEGNet-MP-like stand-in (deterministic in ``seed``)."""
    return [int(n) for n in crystals.SIZE_DISTRIBUTIONS["mp"].draw(count, np.random.default_rng(seed))]


def mp_like_structures(count: int, seed: int = 0) -> list[Structure]:
    """``count`` synthetic crystals with MP-like sizes (deterministic in ``seed``)."""
    rng = np.random.default_rng([seed, 1])
    return [structure(crystals.synthetic_record(n, rng)) for n in mp_like_sizes(count, seed)]


def sweep_structure(num_atoms: int, seed: int = 0) -> Structure:
    """The scaling-sweep crystal with ``num_atoms`` atoms (fixed density, so images per pair fall as cells grow)."""
    return structure(crystals.sweep_record(num_atoms, seed))


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
