"""Raw files are read through jarvis-tools' own loader offline; bad files give one clear error; pickles are safe."""

from __future__ import annotations

import json
import math
import os
import pickle
import zipfile

import numpy as np
import pytest

from framer.data.safepickle import UnsafePickleError, safe_load, safe_loads
from framer.data.sources import (
    DataCorruptError,
    DataNotFoundError,
    data_root,
    is_valid_number,
    load_jarvis_dataset,
    load_moduli_pickles,
    target_spec,
)
from framer.data.structures import InvalidStructureError, record_from_jarvis_atoms, record_from_structure
from tests.data.fakes import fake_dft3d_entries, fake_megnet_entries, write_jarvis_zip, write_moduli_pickles


def test_data_root_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("FRAMER_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert data_root() == tmp_path / "data"
    monkeypatch.setenv("FRAMER_DATA_DIR", str(tmp_path / "elsewhere"))
    assert data_root() == tmp_path / "elsewhere"
    assert data_root(str(tmp_path / "explicit")) == tmp_path / "explicit"


def test_zip_is_read_through_jarvis_loader_with_store_dir(data_dir, monkeypatch):
    import jarvis.db.figshare as figshare

    entries = fake_megnet_entries(5, seed=0)
    write_jarvis_zip(data_dir / "raw", "megnet", entries)
    calls = []
    real = figshare.data

    def spy(name, store_dir=None):
        calls.append((name, store_dir))
        return real(name, store_dir=store_dir)

    monkeypatch.setattr(figshare, "data", spy)
    loaded = load_jarvis_dataset("megnet")
    assert calls == [("megnet", str(data_dir / "raw"))]
    assert [e["id"] for e in loaded] == [e["id"] for e in entries]
    assert loaded[0]["atoms"]["lattice_mat"] == entries[0]["atoms"]["lattice_mat"]


def test_dft3d_zip_uses_the_2021_key_and_member(data_dir):
    path = write_jarvis_zip(data_dir / "raw", "dft_3d_2021", fake_dft3d_entries(4))
    assert path.name == "jdft_3d-8-18-2021.json.zip"
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["jdft_3d-8-18-2021.json"]
    loaded = load_jarvis_dataset("dft_3d_2021")
    assert loaded[1]["mbj_bandgap"] == "na" and loaded[0]["jid"] == "JVASP-10"


def test_missing_file_names_file_place_and_origin_without_network(data_dir, monkeypatch):
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(requests, "get", no_network)
    with pytest.raises(DataNotFoundError) as info:
        load_jarvis_dataset("megnet")
    message = str(info.value)
    assert "\n" not in message
    assert str(data_dir / "raw" / "megnet.json.zip") in message
    assert "'megnet'" in message and "python -m framer.data download" in message
    with pytest.raises(DataNotFoundError, match=r"bulk_megnet_train\.pkl"):
        load_moduli_pickles("bulk")


def test_truncated_zip_is_a_clear_error(data_dir):
    path = write_jarvis_zip(data_dir / "raw", "megnet", fake_megnet_entries(20))
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(DataCorruptError, match=r"megnet\.json\.zip.*not a valid zip"):
        load_jarvis_dataset("megnet")


def test_corrupt_member_and_bad_json_and_wrong_member_are_clear_errors(data_dir):
    path = write_jarvis_zip(data_dir / "raw", "megnet", fake_megnet_entries(30))
    content = bytearray(path.read_bytes())
    start = 60  # inside the compressed member data, after the local header
    content[start : start + 200] = bytes(200)
    path.write_bytes(bytes(content))
    with pytest.raises(DataCorruptError, match=r"megnet\.json\.zip"):
        load_jarvis_dataset("megnet")

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("megnet.json", "[{not json")
    with pytest.raises(DataCorruptError, match="not valid JSON"):
        load_jarvis_dataset("megnet")

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("other.json", "[]")
    with pytest.raises(DataCorruptError, match=r"without the member 'megnet\.json'"):
        load_jarvis_dataset("megnet")


def test_missing_value_filter_follows_crystalformer():
    assert is_valid_number(1) and is_valid_number(-0.5)
    for bad in ("na", None, math.nan, math.inf, -math.inf, "1.0", [1.0], True):
        assert not is_valid_number(bad), bad
    assert target_spec("dft_3d_2021", "formation_energy").group == (
        "formation_energy_peratom",
        "optb88vdw_total_energy",
        "optb88vdw_bandgap",
    )
    assert target_spec("megnet", "gap").field == "gap pbe"
    with pytest.raises(ValueError, match="e_form, gap, bulk_modulus, shear_modulus"):
        target_spec("megnet", "bandgap_typo")


# --------------------------------------------------------------------------------------------- pickles


def test_moduli_pickles_with_numpy_scalars_load(data_dir):
    write_moduli_pickles(data_dir / "raw", "shear", sizes=(5, 2, 3))
    lists = load_moduli_pickles("shear")
    assert [len(lists[s]) for s in ("train", "val", "test")] == [5, 2, 3]
    value = lists["val"][0]["shear modulus"]
    assert isinstance(value, np.float64) and 0.8 <= float(value) <= 2.6


def test_numpy1_pickle_paths_and_old_protocols_load():
    items = [{"id": "mp-1", "bulk modulus": np.float64(1.25), "v": np.arange(3), "f": np.float32(0.5)}]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert safe_loads(pickle.dumps(items, protocol=protocol))[0]["bulk modulus"] == 1.25
    old = pickle.dumps(items, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in old
    loaded = safe_loads(old)
    assert float(loaded[0]["bulk modulus"]) == 1.25 and loaded[0]["v"].tolist() == [0, 1, 2]


class _RunsCode:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_is_rejected_before_running_anything(tmp_path, data_dir):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([{"id": "mp-1", "atoms": {}, "bulk modulus": _RunsCode(f"touch {marker}")}])
    with pytest.raises(UnsafePickleError, match="system"):
        safe_loads(payload)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_RunsCode(f"touch {marker}"), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl"):
        safe_load(evil)
    assert not marker.exists()
    # Through the data-set loader, the same pickle is a one-line DataCorruptError.
    write_moduli_pickles(data_dir / "raw", "bulk", sizes=(2, 1, 1))
    (data_dir / "raw" / "bulk_megnet_val.pkl").write_bytes(payload)
    with pytest.raises(DataCorruptError, match=r"bulk_megnet_val\.pkl.*could run code"):
        load_moduli_pickles("bulk")
    assert not marker.exists()
    for name in ("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load"):
        crafted = f"c{name[0]}\n{name[1]}\n(S'1'\ntR.".encode()
        with pytest.raises(UnsafePickleError):
            safe_loads(crafted)


def test_truncated_pickle_is_a_clear_error(data_dir):
    paths = write_moduli_pickles(data_dir / "raw", "bulk", sizes=(3, 1, 1))
    paths["train"].write_bytes(paths["train"].read_bytes()[:50])
    with pytest.raises(DataCorruptError, match=r"bulk_megnet_train\.pkl.*truncated or corrupt"):
        load_moduli_pickles("bulk")


# --------------------------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("cartesian", [False, True])
def test_jarvis_dict_and_pymatgen_give_identical_arrays(cartesian):
    from jarvis.core.atoms import Atoms

    from tests.data.fakes import random_atoms

    rng = np.random.default_rng(11)
    for _ in range(5):
        atoms = random_atoms(rng, cartesian=cartesian)
        ours = record_from_jarvis_atoms(json.loads(json.dumps(atoms)), "x", 1.0)
        structure = Atoms.from_dict(atoms).pymatgen_converter()  # Crystalformer's route
        theirs = record_from_structure(structure, "x", 1.0)
        np.testing.assert_array_equal(ours.lattice, theirs.lattice)
        np.testing.assert_array_equal(ours.frac_coords, theirs.frac_coords)
        np.testing.assert_array_equal(ours.atomic_numbers, theirs.atomic_numbers)
        np.testing.assert_array_equal(ours.image_box, theirs.image_box)
        assert ours.num_atoms == len(structure)


def test_structure_errors_carry_reason_codes():
    from tests.data.fakes import jarvis_atoms_dict

    lattice = np.eye(3) * 4
    cases = {
        "overlapping_atoms": jarvis_atoms_dict(lattice, [[0, 0, 0], [0.001, 0, 0]], ["Na", "Cl"]),
        "unknown_element": jarvis_atoms_dict(lattice, [[0, 0, 0]], ["Qq"]),
        "singular_lattice": jarvis_atoms_dict([[1, 0, 0], [1, 0, 0], [0, 0, 1]], [[0, 0, 0]], ["Na"]),
        "nan_coordinate": jarvis_atoms_dict(lattice, [[0, math.nan, 0]], ["Na"]),
        "no_atoms": jarvis_atoms_dict(lattice, [], []),
    }
    for reason, atoms in cases.items():
        with pytest.raises(InvalidStructureError) as info:
            record_from_jarvis_atoms(atoms, "bad")
        assert info.value.reason == reason
