"""Fuzzing the loaders: random and malformed JARVIS records, JARVIS zips, CIF and POSCAR text never crash with an
unhandled exception. Each input is either loaded (and then every kept crystal is valid) or rejected with a
DataError / InvalidStructureError carrying a message; malformed records inside a good file are skipped and counted.

Everything goes through the public DataModules (``MPDataModule`` on a ``megnet.json.zip``, ``CustomDataModule`` on
a folder with ``id_prop.csv``), as a user would run them. Example counts are modest so each test takes seconds.
"""

from __future__ import annotations

import json
import math
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from framer.data import CustomDataModule, MPDataModule
from framer.data.cache import read_cache
from framer.data.sources import DataError
from framer.data.structures import (
    MAX_ABS_TARGET,
    MIN_INTERATOMIC_DISTANCE,
    MIN_LATTICE_VECTOR,
    MIN_VOLUME_PER_ATOM,
    InvalidStructureError,
)
from framer.geometry import image_box
from framer.testing import min_periodic_distance
from tests.data.fakes import fake_megnet_entries, random_atoms, write_jarvis_zip

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REJECTED = (DataError, InvalidStructureError)

# ------------------------------------------------------------------------------------------------------ strategies
numbers = st.one_of(
    st.floats(-10, 10),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**80), 2**80),
    st.sampled_from([0, 0.0, -0.0, 1e-300, 1e308, 2**64]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=6))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)
vectors = st.lists(numbers, min_size=0, max_size=4)
symbols = st.one_of(st.sampled_from(["Na", "Cl", "O", "Fe", "Og", "X", "", "na", "D", "Xx"]), st.text(max_size=3))

ATOMS_KEYS = ["lattice_mat", "coords", "elements", "cartesian", "abc", "angles", "props"]
ATOMS_VALUES = {
    "lattice_mat": st.one_of(st.lists(vectors, max_size=4), json_values),
    "coords": st.one_of(st.lists(vectors, max_size=5), json_values),
    "elements": st.one_of(st.lists(symbols | json_values, max_size=5), json_values),
    "cartesian": json_values,
}


@st.composite
def mutated_entry(draw, i: int) -> object:
    """A realistic megnet record, then a few random mutations (or a value that is not a record at all)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    atoms = random_atoms(np.random.default_rng(draw(st.integers(0, 2**32 - 1))), cartesian=draw(st.booleans()))
    entry: dict = {"id": f"mp-{i}", "atoms": atoms, "e_form": -1.0 + i * 0.01, "gap pbe": 0.5}
    for _ in range(draw(st.integers(0, 3))):
        what = draw(
            st.sampled_from(["atoms-key", "drop-key", "coordinate", "element", "target", "atoms", "lattice", "cell"])
        )
        if what == "atoms-key":
            key = draw(st.sampled_from(list(ATOMS_VALUES)))
            atoms[key] = draw(ATOMS_VALUES[key])
        elif what == "drop-key":
            atoms.pop(draw(st.sampled_from(ATOMS_KEYS)), None)
        elif what == "coordinate" and isinstance(atoms.get("coords"), list) and atoms["coords"]:
            row = atoms["coords"][draw(st.integers(0, len(atoms["coords"]) - 1))]
            if isinstance(row, list) and row:
                row[draw(st.integers(0, len(row) - 1))] = draw(numbers | json_values)
        elif what == "element" and isinstance(atoms.get("elements"), list) and atoms["elements"]:
            atoms["elements"][draw(st.integers(0, len(atoms["elements"]) - 1))] = draw(symbols)
        elif what == "lattice" and isinstance(atoms.get("lattice_mat"), list) and atoms["lattice_mat"]:
            row = atoms["lattice_mat"][draw(st.integers(0, len(atoms["lattice_mat"]) - 1))]
            if isinstance(row, list) and row:
                row[draw(st.integers(0, len(row) - 1))] = draw(numbers)
        elif what == "cell" and not atoms.get("cartesian") and _is_matrix(atoms.get("lattice_mat")):
            # the same crystal in a skewed cell (c' = c + k a + m b), or the cell shrunk to unphysical sizes
            lattice = np.array(atoms["lattice_mat"], dtype=float)
            if draw(st.booleans()):
                k, m = draw(st.integers(-60, 60)), draw(st.integers(-60, 60))
                skew = np.array([[1, 0, 0], [0, 1, 0], [k, m, 1]], dtype=float)
                atoms["lattice_mat"] = (skew @ lattice).tolist()
                if _is_matrix(atoms.get("coords"), rows=None):
                    atoms["coords"] = (np.array(atoms["coords"], dtype=float) @ np.linalg.inv(skew)).tolist()
            else:
                atoms["lattice_mat"] = (lattice * draw(st.sampled_from([0.02, 0.1, 0.2, 0.4]))).tolist()
        elif what == "target":
            entry[draw(st.sampled_from(["e_form", "gap pbe", "id"]))] = draw(json_values)
        elif what == "atoms":
            entry["atoms"] = draw(json_values)
    return entry


def _is_matrix(value: object, rows: int | None = 3) -> bool:
    """A list of rows of three finite numbers (``rows`` of them, if given)."""
    try:
        array = np.array(value, dtype=float)
    except (TypeError, ValueError, OverflowError):
        return False
    return array.ndim == 2 and array.shape[1] == 3 and (rows is None or len(array) == rows) and np.isfinite(array).all()


@st.composite
def megnet_files(draw) -> list:
    n = draw(st.integers(6, 16))  # fewer than 10 valid records cannot be split 80/10/10
    return [draw(mutated_entry(i)) for i in range(n)]


# ----------------------------------------------------------------------------------------------------------- checks
def assert_valid_crystals(dm) -> None:
    """Every crystal a DataModule kept is usable: finite arrays, known elements, a physical cell with an image box
    no larger than its cheapest basis needs, atoms apart, a target whose statistics cannot overflow."""
    data = dm.dataset("all")
    assert len(data) > 0
    event("loaded")
    for i in range(len(data)):
        record = data[i]
        volume = abs(np.linalg.det(record.lattice))
        assert np.isfinite(record.lattice).all() and volume >= MIN_VOLUME_PER_ATOM * record.num_atoms
        assert record.num_atoms > 0 and np.isfinite(record.frac_coords).all()
        assert ((record.atomic_numbers >= 1) & (record.atomic_numbers <= 118)).all()
        assert math.isfinite(record.target) and abs(record.target) <= MAX_ABS_TARGET
        assert min(np.linalg.norm(record.lattice, axis=1)) >= MIN_LATTICE_VECTOR
        assert min_periodic_distance(record.lattice, record.frac_coords) >= MIN_INTERATOMIC_DISTANCE
        np.testing.assert_array_equal(record.image_box, image_box(record.lattice))
        assert np.prod(2 * record.image_box + 1) <= 15**3, record.image_box  # these cells are 3.5-6 Å when reduced


def assert_rejected_with_a_message(err: BaseException) -> None:
    assert isinstance(err, REJECTED), f"unhandled {type(err).__name__}: {err}"
    assert str(err).strip(), f"{type(err).__name__} without a message"
    event(f"rejected: {type(err).__name__}: {str(err)[-60:]}")


def load_megnet(root: Path):
    dm = MPDataModule(target="e_form", n_train=None, n_val=None, n_test=None, batch_size=2, data_dir=str(root))
    dm.prepare_data()
    return dm


# ------------------------------------------------------------------------------------------------------------ tests
@FUZZ
@given(entries=megnet_files())
def test_fuzzed_jarvis_records_are_loaded_skipped_or_rejected(entries):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jarvis_zip(root / "raw", "megnet", entries)
        try:
            dm = load_megnet(root)
        except Exception as err:
            assert_rejected_with_a_message(err)
            return
        assert_valid_crystals(dm)
        report = json.loads(dm.report_path.read_text())
        skipped = sum(report["skipped"]["counts"].values()) + sum(report["missing_target"]["counts"].values())
        unused = read_cache(dm.cache_path()).meta["unused_positions"]  # rounding of the 80/10/10 split
        assert report["kept"] + skipped + unused == len(entries)  # every record is accounted for


@FUZZ
@given(data=st.data())
def test_damaged_jarvis_zip_is_rejected_with_a_message(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = write_jarvis_zip(root / "raw", "megnet", fake_megnet_entries(10, seed=1))
        raw = bytearray(path.read_bytes())
        how = data.draw(st.sampled_from(["truncate", "flip", "member", "json", "random"]))
        if how == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        elif how == "flip":
            for _ in range(data.draw(st.integers(1, 4))):
                raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        elif how == "random":
            raw = bytearray(data.draw(st.binary(max_size=200)))
        else:
            member = "megnet.json" if how == "json" else data.draw(st.text("abcxyz._-/", min_size=1, max_size=8))
            with zipfile.ZipFile(path, "w") as zf:
                zf.writestr(member, data.draw(st.binary(max_size=100)) if how == "json" else b"[]")
            raw = bytearray(path.read_bytes())
        path.write_bytes(bytes(raw))
        try:
            dm = load_megnet(root)
        except Exception as err:
            assert_rejected_with_a_message(err)
            return
        assert_valid_crystals(dm)  # a flip that left the content readable


# --------------------------------------------------------------------------------------------------------- CIF/POSCAR
def _seed_texts() -> dict[str, str]:
    from pymatgen.core import Lattice, Structure

    lattice = Lattice.from_parameters(4.1, 4.3, 5.2, 88, 95, 91)
    structure = Structure(lattice, ["Na", "Cl", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.2, 0.7, 0]])
    return {".cif": structure.to(fmt="cif"), ".vasp": structure.to(fmt="poscar")}


SEEDS = _seed_texts()
TOKENS = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "1e400", "0", "-0", "99999999999999999999", "?", ".", "_", "Xx", "'", '"']),
    st.sampled_from(["loop_", "_atom_site_fract_x", "Direct", "Cartesian", "Selective dynamics", "1.0", "-1", ""]),
    st.text(max_size=8),
)


@st.composite
def structure_text(draw) -> tuple[str, str]:
    """(extension, text): a valid CIF or POSCAR with random edits (token swaps, lines dropped or repeated, cuts)."""
    ext = draw(st.sampled_from(sorted(SEEDS)))
    lines = SEEDS[ext].splitlines()
    for _ in range(draw(st.integers(1, 5))):
        what = draw(st.sampled_from(["token", "drop", "repeat", "insert", "cut"]))
        i = draw(st.integers(0, len(lines) - 1)) if lines else 0
        if what == "token" and lines:
            words = lines[i].split() or [""]
            words[draw(st.integers(0, len(words) - 1))] = draw(TOKENS)
            lines[i] = " ".join(words)
        elif what == "drop" and lines:
            del lines[i]
        elif what == "repeat" and lines:
            lines.insert(i, lines[i])
        elif what == "insert":
            lines.insert(i, draw(st.text(max_size=30)))
        elif what == "cut":
            lines = lines[:i]
    return ext, "\n".join(lines) + "\n"


@FUZZ
@given(files=st.lists(structure_text(), min_size=1, max_size=3))
def test_fuzzed_cif_and_poscar_files_are_loaded_skipped_or_rejected(files):
    with tempfile.TemporaryDirectory() as tmp:
        folder, data_dir = Path(tmp) / "crystals", Path(tmp) / "data"
        folder.mkdir()
        good = [sorted(SEEDS.items())[i % 2] for i in range(9)]  # so that the folder can be split 80/10/10
        rows = []
        for i, (ext, text) in enumerate(files + good):
            (folder / f"s{i}{ext}").write_text(text, encoding="utf-8")
            rows.append(f"s{i},{0.1 * i}")
        (folder / "id_prop.csv").write_text("\n".join(rows) + "\n")
        dm = CustomDataModule(root=str(folder), data_dir=str(data_dir), batch_size=1)
        try:
            dm.prepare_data()
        except Exception as err:
            assert_rejected_with_a_message(err)
            return
        assert_valid_crystals(dm)


# ----------------------------------------------------------------------------------------------------- id_prop.csv
NAMES = st.sampled_from(["s0", "s1.cif", "s2", "../outside", "../outside.vasp", "sub/../s3", "./s4", "/etc/hostname"])
BAD_TARGETS = ["1_000", "1e308", "-1e308", "1e31", "nan", "inf", "１２", "٣", "0x1", "", "1e", "--1"]
TARGETS = st.one_of(
    st.floats(-10, 10).map(repr),  # fine
    st.sampled_from(["1e29", "+3.", ".5e-1", "-0", "7E+2"]),  # fine too
    st.sampled_from(BAD_TARGETS),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=5),
)


@FUZZ
@given(
    rows=st.lists(st.tuples(NAMES, TARGETS), min_size=1, max_size=4, unique_by=lambda r: r[0].split(".")[0]),
    link_out=st.booleans(),
)
def test_fuzzed_id_prop_rows_are_loaded_skipped_or_rejected(rows, link_out):
    with tempfile.TemporaryDirectory() as tmp:
        folder, data_dir = Path(tmp) / "crystals", Path(tmp) / "data"
        folder.mkdir()
        for name in ("outside.vasp", *(f"s{i}.vasp" for i in range(5))):
            (folder.parent if name.startswith("outside") else folder).joinpath(name).write_text(SEEDS[".vasp"])
        if link_out:  # a name inside the folder that points outside it
            (folder / "s2.vasp").unlink()
            (folder / "s2.vasp").symlink_to(folder.parent / "outside.vasp")
        good = [f"g{i},{0.1 * i}" for i in range(9)]
        for i in range(9):
            (folder / f"g{i}.vasp").write_text(SEEDS[".vasp"])
        text = "\n".join(f"{name},{value}" for name, value in rows) + "\n" + "\n".join(good) + "\n"
        (folder / "id_prop.csv").write_text(text, encoding="utf-8")
        dm = CustomDataModule(root=str(folder), data_dir=str(data_dir), batch_size=1)
        try:
            dm.prepare_data()
        except Exception as err:
            assert_rejected_with_a_message(err)
            assert len(str(err).splitlines()) == 1
            return
        assert_valid_crystals(dm)
        kept = set(dm.dataset("all").ids)
        assert not kept & {"../outside", "/etc/hostname"}  # nothing outside the folder was read
        assert not (link_out and "s2" in kept)
