"""The benchmark's crystals: the reference batch's stated counts, MP-like sizes, synthetic cells, transport."""

from __future__ import annotations

import numpy as np

from framer.bench import batches


def test_reference_batch_has_the_stated_counts() -> None:
    """model-spec §12: 16 crystals, 268 atoms, 5,480 atom pairs."""
    structures = batches.reference_structures()
    assert batches.describe(structures) == {"crystals": 16, "atoms": 268, "atom_pairs": 5480, "max_atoms": 29}
    assert {str(e) for s in structures for e in s.species} <= set(batches.REFERENCE_ELEMENTS)


def test_reference_prefix_is_the_same_draws() -> None:
    first = batches.reference_structures(3)
    assert [s == t for s, t in zip(first, batches.reference_structures()[:3])] == [True] * 3


def test_mp_like_sizes_are_skewed_and_bounded() -> None:
    sizes = np.array(batches.mp_like_sizes(20000, seed=1))
    assert sizes.min() >= 1 and sizes.max() <= batches.MP_MAX_ATOMS
    assert 8 <= np.median(sizes) <= 10
    assert sizes.mean() > np.median(sizes)  # right tail
    assert batches.mp_like_sizes(50, seed=3) == batches.mp_like_sizes(50, seed=3)


def test_synthetic_crystals_have_the_requested_size_and_no_overlaps() -> None:
    for atoms in (1, 7, 64):
        crystal = batches.sweep_structure(atoms)
        assert len(crystal) == atoms
        assert abs(crystal.volume - atoms * batches.SWEEP_VOLUME_PER_ATOM) < 1e-6 * crystal.volume
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
