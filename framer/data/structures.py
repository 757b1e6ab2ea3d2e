"""One tensor record per crystal, built from JARVIS ``atoms`` dicts, pymatgen Structures or CIF/POSCAR files.

Every constructor validates its input and raises :class:`InvalidStructureError` with a one-line reason, so loaders
can skip and count bad records and single-file entry points can report them. A skewed cell is replaced by its
LLL-reduced basis when that needs fewer periodic images (:func:`framer.data.cells.reduce_cell`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from framer.data.cells import closest_pair_distance, reduce_cell, shortest_lattice_vector
from framer.geometry import image_box, interplanar_spacings

MAX_ATOMIC_NUMBER = 98  # one-hot width of the atom embedding (Z = 1..98)
MIN_INTERATOMIC_DISTANCE = 0.1  # Å; closer pairs (or an atom and its own periodic image) are corrupt records
MIN_CELL_VOLUME = 1e-3  # Å^3; smaller is a singular lattice
# Å; closer lattice planes mean atoms overlapping their own periodic images (and an image box of > 70 per axis)
MIN_INTERPLANAR_SPACING = MIN_INTERATOMIC_DISTANCE
# Unphysical cells (their image boxes explode: a 1-atom cell of 0.1 Å edges needs 2.8 M images). The shortest
# distance between two atoms of one element in any real solid is H2's 0.74 Å, and the densest real solids have
# about 5 Å^3 per atom (diamond 5.7); real data (ase's DCDFT set, pymatgen's test and AFLOW prototype structures)
# have at least 0.75 Å and 3.3 Å^3/atom.
MIN_LATTICE_VECTOR = 0.5  # Å; an atom closer to its own periodic image (same element) is unphysical
MIN_VOLUME_PER_ATOM = 1.0  # Å^3
MAX_ABS_FRAC_COORD = 1e4  # larger fractional coordinates are corrupt (and lose all precision in float32)
# |target| above this is refused: the train mean and std, and float32 training, stay far from overflow
MAX_ABS_TARGET = 1e30
# Size limits of what the loaders read (configurable in the DataModules). The reference CUDA kernels stop at
# 320 atoms per cell; pymatgen's CIF parser takes O(atoms^2) time (8,000 atoms in P1: a 0.44 MB file, 9 s).
DEFAULT_MAX_ATOMS = 1000
DEFAULT_MAX_FILE_MB = 1.0
JARVIS_LATTICE_DECIMALS = 5  # jarvis-tools' Lattice(round_off=5), used for Cartesian -> fractional


class InvalidStructureError(ValueError):
    """A crystal that cannot be used (no atoms, NaN coordinate, singular lattice, unknown element, overlap).

    ``reason`` is a short code (e.g. ``"overlapping_atoms"``) that loaders use to count skipped records.
    """

    def __init__(self, message: str, reason: str = "invalid_structure"):
        super().__init__(message)
        self.reason = reason
        self.record_id: str | None = None


@contextlib.contextmanager
def labelled(record_id: str) -> Iterator[None]:
    """Label an :class:`InvalidStructureError` raised inside with the id of the record it concerns."""
    try:
        yield
    except InvalidStructureError as err:
        err.record_id = record_id
        raise


@dataclass(frozen=True, eq=False)
class CrystalRecord:
    """A crystal as arrays: lattice rows are the lattice vectors (Å); coordinates are fractional."""

    id: str
    lattice: np.ndarray  # (3, 3) float64
    frac_coords: np.ndarray  # (N, 3) float64
    atomic_numbers: np.ndarray  # (N,) int64
    target: float = math.nan
    image_box: np.ndarray = field(default=None)  # (3,) int64; computed from the lattice when omitted

    def __post_init__(self) -> None:
        if self.image_box is None:
            object.__setattr__(self, "image_box", image_box(self.lattice))

    @property
    def num_atoms(self) -> int:
        return len(self.atomic_numbers)

    @property
    def cart_coords(self) -> np.ndarray:
        """Cartesian positions (Å), as pymatgen's ``cart_coords`` (no wrapping)."""
        return self.frac_coords @ self.lattice

    def with_target(self, target: float) -> CrystalRecord:
        return CrystalRecord(
            self.id, self.lattice, self.frac_coords, self.atomic_numbers, float(target), self.image_box
        )


def atomic_number(symbol: str) -> int:
    """Atomic number of an element symbol; raises InvalidStructureError for unknown or unsupported symbols."""
    if not isinstance(symbol, str):
        raise InvalidStructureError(f"element {symbol!r} is a {type(symbol).__name__}, not a symbol", "unknown_element")
    return _atomic_number(symbol)


@cache
def _atomic_number(symbol: str) -> int:
    from pymatgen.core.periodic_table import Element

    try:
        z = Element(str(symbol).strip()).Z
    except (ValueError, KeyError, AttributeError) as err:
        raise InvalidStructureError(f"unknown element {symbol!r}", "unknown_element") from err
    if not 1 <= z <= MAX_ATOMIC_NUMBER:
        raise InvalidStructureError(
            f"element {symbol!r} (Z={z}) is outside Z=1..{MAX_ATOMIC_NUMBER}", "unknown_element"
        )
    return z


def make_record(
    id: str,
    lattice,
    frac_coords,
    atomic_numbers,
    target: float = math.nan,
    check_overlap: bool = True,
    max_atoms: int = DEFAULT_MAX_ATOMS,
) -> CrystalRecord:
    """Validate arrays and build a record (in the cheapest basis, see :func:`reduce_cell`).

    Raises InvalidStructureError with the reason: bad arrays, more than ``max_atoms`` atoms, a singular or
    unphysical cell, overlapping atoms (``check_overlap``), a target beyond ``MAX_ABS_TARGET``.
    """
    try:
        target = float(target)
    except (TypeError, ValueError, OverflowError) as err:
        raise InvalidStructureError(f"target {target!r} is not a number", "missing_target") from err
    if abs(target) > MAX_ABS_TARGET:  # NaN (no target) passes
        raise InvalidStructureError(
            f"target {target:g} is larger than {MAX_ABS_TARGET:g} in magnitude (its statistics would overflow)",
            "target_out_of_range",
        )
    try:
        lattice = np.asarray(lattice, dtype=np.float64)
        frac = np.asarray(frac_coords, dtype=np.float64)
        numbers = np.asarray(atomic_numbers, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as err:
        raise InvalidStructureError(f"non-numeric lattice or coordinates ({err})", "bad_arrays") from err
    if lattice.shape != (3, 3):
        raise InvalidStructureError(f"lattice has shape {lattice.shape}, expected (3, 3)", "bad_arrays")
    if not np.isfinite(lattice).all():
        raise InvalidStructureError("lattice has a NaN or infinite entry", "singular_lattice")
    with np.errstate(all="ignore"):
        volume = abs(float(np.linalg.det(lattice)))
    if not volume > MIN_CELL_VOLUME or not math.isfinite(volume):
        raise InvalidStructureError(f"zero-volume or singular lattice (volume {volume:.3g} Å^3)", "singular_lattice")
    if numbers.ndim != 1 or len(numbers) == 0:
        raise InvalidStructureError("structure has no atoms", "no_atoms")
    check_atom_count(len(numbers), max_atoms)
    if frac.shape != (len(numbers), 3):
        raise InvalidStructureError(f"coordinates have shape {frac.shape}, expected ({len(numbers)}, 3)", "bad_arrays")
    if not np.isfinite(frac).all():
        raise InvalidStructureError("a coordinate is NaN or infinite", "nan_coordinate")
    if (numbers < 1).any() or (numbers > MAX_ATOMIC_NUMBER).any():
        raise InvalidStructureError(f"atomic number outside 1..{MAX_ATOMIC_NUMBER}", "unknown_element")
    if volume / len(numbers) < MIN_VOLUME_PER_ATOM:
        raise InvalidStructureError(
            f"unphysical cell: {volume / len(numbers):.3g} Å^3 per atom (less than {MIN_VOLUME_PER_ATOM:g})",
            "unphysical_cell",
        )
    try:
        with np.errstate(all="ignore"):
            spacings = interplanar_spacings(lattice)
        reduced, frac = reduce_cell(lattice, frac, spacings)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError, OverflowError) as err:
        raise InvalidStructureError(f"cannot reduce the lattice ({err})", "singular_lattice") from err
    if reduced is not lattice:
        lattice = reduced
        with np.errstate(all="ignore"):
            spacings = interplanar_spacings(lattice)
    if np.abs(frac).max() > MAX_ABS_FRAC_COORD:  # in the cell used (a huge skew gives huge coordinates)
        raise InvalidStructureError(
            f"a fractional coordinate is larger than {MAX_ABS_FRAC_COORD:g} in magnitude", "nan_coordinate"
        )
    spacing = float(np.min(spacings))
    if not spacing >= MIN_INTERPLANAR_SPACING:
        raise InvalidStructureError(
            f"degenerate lattice: lattice planes {spacing:.3g} Å apart (atoms overlap their periodic images)",
            "singular_lattice",
        )
    shortest = shortest_lattice_vector(lattice, MIN_LATTICE_VECTOR, spacings)
    if shortest < MIN_LATTICE_VECTOR:
        raise InvalidStructureError(
            f"unphysical cell: every atom is {shortest:.3g} Å from its own periodic image "
            f"(less than {MIN_LATTICE_VECTOR:g} Å)",
            "unphysical_cell",
        )
    if check_overlap and len(numbers) > 1:
        closest = closest_pair_distance(lattice, frac, MIN_INTERATOMIC_DISTANCE, spacings)
        if closest < MIN_INTERATOMIC_DISTANCE:
            raise InvalidStructureError(
                f"atoms closer than {MIN_INTERATOMIC_DISTANCE} Å ({closest:.3g} Å)", "overlapping_atoms"
            )
    return CrystalRecord(str(id), lattice, frac, numbers, target)


def check_atom_count(count: int, max_atoms: int) -> None:
    """Raise InvalidStructureError (reason ``too_many_atoms``) if ``count`` exceeds ``max_atoms``."""
    if count > max_atoms:
        raise InvalidStructureError(
            f"{count} atoms, more than max_atoms={max_atoms} (a DataModule setting)", "too_many_atoms"
        )


def record_from_jarvis_atoms(
    atoms: dict, id: str, target: float = math.nan, max_atoms: int = DEFAULT_MAX_ATOMS
) -> CrystalRecord:
    """Record from a JARVIS ``atoms`` dict (``lattice_mat`` rows, ``coords``, ``elements``, ``cartesian``).

    Cartesian coordinates are converted exactly as ``jarvis.core.atoms.Atoms`` does (with the inverse of the
    lattice rounded to 5 decimals, ``jarvis.core.lattice.Lattice``'s ``round_off``), so the arrays equal those of
    the Crystalformer route ``Atoms.from_dict(d).pymatgen_converter()`` bit for bit (unless :func:`make_record`
    swaps a skewed cell for its reduced basis).
    """
    if not isinstance(atoms, dict):
        raise InvalidStructureError(f"'atoms' is a {type(atoms).__name__}, expected a dict", "missing_atoms")
    missing = [k for k in ("lattice_mat", "coords", "elements") if k not in atoms]
    if missing:
        raise InvalidStructureError(f"'atoms' lacks {', '.join(missing)}", "missing_atoms")
    elements = atoms["elements"]
    if not isinstance(elements, (list, tuple)):
        raise InvalidStructureError("'elements' is not a list", "bad_arrays")
    check_atom_count(len(elements), max_atoms)
    numbers = [atomic_number(e) for e in elements]
    try:
        lattice = np.asarray(atoms["lattice_mat"], dtype=np.float64)
        coords = np.asarray(atoms["coords"], dtype=np.float64).reshape(-1, 3) if len(numbers) else np.zeros((0, 3))
    except (TypeError, ValueError, OverflowError) as err:
        raise InvalidStructureError(f"non-numeric lattice or coordinates ({err})", "bad_arrays") from err
    if lattice.shape != (3, 3):
        raise InvalidStructureError(f"lattice has shape {lattice.shape}, expected (3, 3)", "bad_arrays")
    if atoms.get("cartesian", False):
        with np.errstate(all="ignore"):
            rounded = np.around(lattice, decimals=JARVIS_LATTICE_DECIMALS)
            volume = abs(np.linalg.det(rounded)) if np.isfinite(rounded).all() else math.nan
            if not volume > MIN_CELL_VOLUME or not math.isfinite(volume):
                raise InvalidStructureError("zero-volume or singular lattice", "singular_lattice")
            coords = np.dot(coords, np.linalg.inv(rounded))
    return make_record(id, lattice, coords, numbers, target, max_atoms=max_atoms)


def record_from_structure(
    structure, id: str = "", target: float = math.nan, max_atoms: int = DEFAULT_MAX_ATOMS
) -> CrystalRecord:
    """Record from a pymatgen Structure; disordered (partially occupied) sites are rejected."""
    if len(structure) == 0:
        raise InvalidStructureError("structure has no atoms", "no_atoms")
    check_atom_count(len(structure), max_atoms)
    if not structure.is_ordered:
        raise InvalidStructureError(
            "structure has partially occupied sites (disordered structures are not supported)", "disordered"
        )
    numbers = [atomic_number(site.specie.symbol) for site in structure]
    return make_record(id, structure.lattice.matrix, structure.frac_coords, numbers, target, max_atoms=max_atoms)


def read_structure_file(path: str | Path, max_file_mb: float = DEFAULT_MAX_FILE_MB):
    """Read a CIF or POSCAR/VASP file into a pymatgen Structure; raises InvalidStructureError naming the file.

    Files larger than ``max_file_mb`` megabytes (10^6 bytes) are refused before parsing.
    """
    import warnings

    from pymatgen.core import Structure

    path = Path(path)
    try:
        size = os.path.getsize(path)
    except FileNotFoundError as err:
        raise InvalidStructureError(f"{path}: file not found", "file_not_found") from err
    except OSError as err:
        raise InvalidStructureError(f"{path}: cannot read ({err.strerror or err})", "unreadable_file") from err
    if size > max_file_mb * 1e6:
        raise InvalidStructureError(
            f"{path}: {size / 1e6:.3g} MB, larger than max_file_mb={max_file_mb:g} (a DataModule setting); not parsed",
            "file_too_large",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_file(path)
    except MemoryError as err:
        raise InvalidStructureError(f"{path}: out of memory while parsing", "out_of_memory") from err
    except Exception as err:  # pymatgen raises many types for malformed files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InvalidStructureError(f"{path}: cannot parse as CIF/POSCAR ({reason})", "unreadable_file") from err


def record_from_file(
    path: str | Path,
    id: str | None = None,
    target: float = math.nan,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    max_file_mb: float = DEFAULT_MAX_FILE_MB,
) -> CrystalRecord:
    """Record from a CIF or POSCAR file; the id defaults to the file name without extension."""
    path = Path(path)
    structure = read_structure_file(path, max_file_mb)
    try:
        return record_from_structure(structure, id if id is not None else path.stem, target, max_atoms)
    except InvalidStructureError as err:
        raise InvalidStructureError(f"{path}: {err}", err.reason) from err
