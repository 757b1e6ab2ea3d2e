"""The bench tools' crystals: the reference batch (numpy) against the reference's own pymatgen recipe, the counts
docs/model.md states, MP-like sizes, synthetic cells, and the speed benchmark's Structures and their transport."""

from __future__ import annotations

import random

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from bench.gpu_check import crystals
from bench.speed import batches
from framer.data.batch import collate_structures


def reference_structures_with_pymatgen(num_crystals: int = 16, seed: int = 0) -> list[Structure]:
    """The reference batch as the reference's script builds it, with pymatgen: per crystal, from one
    ``random.Random(seed)``, the atom count, three lengths, three angles, the species, then the fractional
    coordinates atom by atom."""
    draw = random.Random(seed)
    structures = []
    for _ in range(num_crystals):
        num_atoms = draw.randint(4, 30)
        lengths = [draw.uniform(4.0, 9.0) for _axis in range(3)]
        angles = [draw.uniform(75.0, 105.0) for _axis in range(3)]
        species = draw.choices(("Li", "O", "Fe", "Si", "Mg", "S"), k=num_atoms)
        frac = [[draw.random(), draw.random(), draw.random()] for _atom in range(num_atoms)]
        structures.append(Structure(Lattice.from_parameters(*lengths, *angles), species, frac))
    return structures


def test_reference_batch_without_pymatgen_is_the_references() -> None:
    """The numpy builder (the one owner, also used on the GPU image) gives the pymatgen recipe's batch bit for bit."""
    ours, theirs = crystals.reference_batch(), collate_structures(reference_structures_with_pymatgen())
    for field in ("pos", "lattice", "atomic_numbers", "sizes", "image_box"):
        assert torch.equal(getattr(ours, field), getattr(theirs, field)), field


def test_speed_benchmark_structures_are_the_reference_batch() -> None:
    """docs/model.md "Performance": 16 crystals, 268 atoms, 5,480 atom pairs; the Structures the speed benchmark
    sends to its workers are the pymatgen recipe's, exactly."""
    structures = batches.reference_structures()
    assert batches.describe(structures) == {"crystals": 16, "atoms": 268, "atom_pairs": 5480, "max_atoms": 29}
    for ours, theirs in zip(structures, reference_structures_with_pymatgen(), strict=True):
        assert np.array_equal(ours.lattice.matrix, theirs.lattice.matrix)
        assert np.array_equal(ours.frac_coords, theirs.frac_coords)
        assert ours.species == theirs.species


def test_reference_prefix_is_the_same_draws() -> None:
    first = batches.reference_structures(3)
    assert [s == t for s, t in zip(first, batches.reference_structures()[:3])] == [True] * 3


def test_mp_like_sizes_are_skewed_and_bounded() -> None:
    sizes = np.array(batches.mp_like_sizes(20000, seed=1))
    assert sizes.min() >= 1 and sizes.max() <= crystals.SIZE_DISTRIBUTIONS["mp"].max_atoms
    assert 8 <= np.median(sizes) <= 10
    assert sizes.mean() > np.median(sizes)  # right tail
    assert batches.mp_like_sizes(50, seed=3) == batches.mp_like_sizes(50, seed=3)


def test_synthetic_crystals_have_the_requested_size_and_no_overlaps() -> None:
    for atoms in (1, 7, 64):
        crystal = batches.sweep_structure(atoms)
        assert len(crystal) == atoms
        assert abs(crystal.volume - atoms * crystals.SWEEP_VOLUME_PER_ATOM) < 1e-6 * crystal.volume
        if atoms > 1:
            distances = crystal.distance_matrix + np.eye(atoms) * 1e9
            assert distances.min() > 0.8
    assert batches.sweep_structure(16) == batches.sweep_structure(16)
    mp = batches.mp_like_structures(12, seed=2)
    assert [len(s) for s in mp] == batches.mp_like_sizes(12, seed=2)


def test_structures_round_trip_through_json(tmp_path) -> None:
    structures = batches.reference_structures(2)
    loaded = batches.load_structures(batches.dump_structures(structures, tmp_path / "s.json"))
    assert loaded == structures
