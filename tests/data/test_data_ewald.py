"""The embedded Ewald data set: valid ionic crystals, correct labels, determinism, DataModule and cache."""

from __future__ import annotations

import numpy as np
import pytest

from framer.data import EwaldDataModule
from framer.data.ewald import (
    ANIONS,
    CATIONS,
    LIKE_CHARGE_MIN_DISTANCE,
    MIN_DISTANCE,
    generate_records,
    generate_structures,
    random_ionic_crystal,
)
from framer.geometry import interplanar_spacings
from framer.testing import min_periodic_distance
from tests.data.fakes import assert_records_equal


@pytest.fixture(scope="module")
def crystals():
    return [random_ionic_crystal(seed=0, index=i) for i in range(40)]


def test_crystals_are_neutral_ionic_and_well_separated(crystals):
    sizes = []
    for lattice, frac, symbols, charges in crystals:
        sizes.append(len(symbols))
        assert sum(charges) == 0
        assert all((CATIONS.get(s) == q) or (ANIONS.get(s) == q) for s, q in zip(symbols, charges))
        assert min_periodic_distance(lattice, frac) >= MIN_DISTANCE - 1e-9
        assert interplanar_spacings(lattice).min() >= LIKE_CHARGE_MIN_DISTANCE
        volume = abs(np.linalg.det(lattice))
        assert 8.0 <= volume / len(symbols) <= 80.0  # a physically reasonable density
    assert min(sizes) >= 2 and max(sizes) <= 40 and len(set(sizes)) > 10
    angles = np.array([_angles(c[0]) for c in crystals])
    assert angles.std() > 5  # varied, not only cubic cells


def _angles(lattice):
    a, b, c = lattice
    return [np.degrees(np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v))) for u, v in ((b, c), (a, c), (a, b))]


def test_like_charges_keep_the_larger_distance(crystals):
    from pymatgen.core import Lattice

    for lattice, frac, _, charges in crystals[:10]:
        d = Lattice(lattice).get_all_distances(frac, frac)
        same = np.sign(charges)[:, None] == np.sign(charges)[None, :]
        np.fill_diagonal(same, False)
        if same.any():
            assert d[same].min() >= LIKE_CHARGE_MIN_DISTANCE - 1e-6


def test_targets_are_pymatgen_ewald_energy_per_atom():
    from pymatgen.analysis.ewald import EwaldSummation

    structures = generate_structures(4, seed=2)
    records = generate_records(4, seed=2)
    for structure, record in zip(structures, records):
        reference = EwaldSummation(structure).total_energy / len(structure)  # default accuracy
        assert record.target == pytest.approx(reference, abs=1e-6)
        assert record.target == structure.properties["ewald"]
        assert record.target < 0  # neutral ionic cells bind


def test_generation_is_deterministic_and_independent_of_worker_count():
    serial = generate_records(32, seed=5, num_workers=0)
    pooled = generate_records(32, seed=5, num_workers=2)
    for a, b in zip(serial, pooled):
        assert_records_equal(a, b)
    other_seed = generate_records(2, seed=6)
    assert other_seed[0].target != serial[0].target


def test_datamodule_builds_caches_and_splits(data_dir):
    dm = EwaldDataModule(num_crystals=30, batch_size=8, build_workers=0)
    dm.setup()
    assert dm.cache_status == "miss"
    assert dm.split_sizes() == {"train": 24, "val": 3, "test": 3}
    assert dm.target_units == "eV/atom" and dm.dataset_name == "ewald"
    mean, std = dm.target_stats()
    assert mean < 0 and std > 0
    again = EwaldDataModule(num_crystals=30, build_workers=0)
    again.setup()
    assert again.cache_status == "hit" and again.split_fingerprints() == dm.split_fingerprints()
    batch = next(iter(dm.train_dataloader()))
    assert len(batch) == 8 and batch.atomic_numbers.min() >= 3
    bigger = EwaldDataModule(num_crystals=31, build_workers=0)
    assert bigger.cache_path() != dm.cache_path()
    with pytest.raises(ValueError, match="ewald_energy"):
        EwaldDataModule(target="band_gap")
