"""Fixtures of the data tests: a private data root and raw files in the exact published formats."""

from __future__ import annotations

import math

import pytest

from tests.data.fakes import (
    corrupt_entry,
    fake_dft3d_entries,
    fake_megnet_entries,
    write_jarvis_zip,
    write_moduli_pickles,
)

# Entries of the megnet fixture that the builders must drop, by index into the raw list.
MEGNET_MISSING = {3: ("e_form", "na"), 11: ("gap pbe", None), 19: ("gap pbe", math.nan)}
MEGNET_MALFORMED = {
    5: "missing_atoms",
    8: "nan_coordinate",
    13: "singular_lattice",
    21: "unknown_element",
    27: "overlapping_atoms",
    33: "no_atoms",
}
MEGNET_SIZE = 53  # 50 entries with both targets -> an exact 40/5/5 split, no unused position


def megnet_entries() -> list[dict]:
    entries = fake_megnet_entries(MEGNET_SIZE, seed=7)
    for i, (field, value) in MEGNET_MISSING.items():
        entries[i][field] = value
    for i, reason in MEGNET_MALFORMED.items():
        corrupt_entry(entries[i], reason)
    return entries


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty data root, also exported as $FRAMER_DATA_DIR."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("FRAMER_DATA_DIR", str(root))
    return root


@pytest.fixture
def megnet_raw(data_dir):
    """``raw/megnet.json.zip`` with 53 entries: 3 with a missing target, 6 with a malformed structure."""
    return write_jarvis_zip(data_dir / "raw", "megnet", megnet_entries())


@pytest.fixture
def dft3d_raw(data_dir):
    """``raw/jdft_3d-8-18-2021.json.zip``: 60 entries, mbj often "na", ehull sometimes, one bad OPT gap."""
    entries = fake_dft3d_entries(60, seed=3)
    entries[4]["optb88vdw_bandgap"] = "na"  # must drop the entry from all three targets of the joint group
    return write_jarvis_zip(data_dir / "raw", "dft_3d_2021", entries)


@pytest.fixture
def bulk_raw(data_dir):
    return write_moduli_pickles(data_dir / "raw", "bulk", sizes=(12, 4, 4), seed=1)


@pytest.fixture
def small_mp_kwargs():
    """MPDataModule arguments for fixtures smaller than the published file (80/10/10 instead of 60000/...)."""
    return {"n_train": None, "n_val": None, "n_test": None, "batch_size": 4}


@pytest.fixture
def megnet_layout():
    """Which entries of the ``megnet_raw`` fixture have missing targets or malformed structures."""
    return {"size": MEGNET_SIZE, "missing": MEGNET_MISSING, "malformed": MEGNET_MALFORMED}
