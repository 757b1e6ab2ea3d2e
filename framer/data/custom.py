"""User data: a folder of CIF/POSCAR files plus ``id_prop.csv`` (ALIGNN's layout).

``id_prop.csv`` has rows ``filename_or_id,target`` and no header (a first row whose target is not a number is taken
as a header and skipped). A name may omit the extension: ``mp-1`` finds ``mp-1``, ``mp-1.cif``, ``mp-1.vasp``,
``mp-1.poscar`` or ``POSCAR-mp-1``. The crystal id is the name without a structure extension.

Targets are plain decimal numbers (``-1.5``, ``2e-3``; ``na``/``nan``/empty for a missing value): Python's ``float``
also takes ``1_000`` or non-ASCII digits, which are refused here. Names are resolved inside the folder: an absolute
path, a ``..`` component or a symbolic link to a file outside it is an error naming the row, unless the
DataModule's ``allow_outside_root`` is set (a shared folder must not make framer read other files).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from framer.data.build import BuildResult, PhaseTimer, SkipReport, assemble
from framer.data.cache import file_sha256
from framer.data.sources import DataError, DataNotFoundError
from framer.data.splits import SPLIT_NAMES, random_split, read_split_file
from framer.data.structures import (
    DEFAULT_MAX_ATOMS,
    DEFAULT_MAX_FILE_MB,
    CrystalRecord,
    InvalidStructureError,
    labelled,
    record_from_file,
)

log = logging.getLogger("framer.data")

STRUCTURE_EXTENSIONS = (".cif", ".vasp", ".poscar", ".CIF", ".VASP", ".POSCAR")
PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|infinity)", re.IGNORECASE)
MISSING_VALUES = ("", "na", "nan", "+nan", "-nan", "none", "null")


def strip_extension(name: str) -> str:
    """Crystal id of a file name (known structure extensions removed)."""
    for ext in STRUCTURE_EXTENSIONS:
        if name.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


@dataclass(frozen=True)
class IdPropRow:
    line: int
    name: str
    id: str
    value: float


def locate_structure_file(root: Path, id_prop: Path, row: IdPropRow, allow_outside_root: bool = False) -> Path | None:
    """The structure file of a row, with or without extension (None if absent); raises DataError if it is an
    absolute name, has a ``..`` component or resolves (through symbolic links) outside ``root``, unless
    ``allow_outside_root``."""
    if not allow_outside_root and (PurePath(row.name).is_absolute() or ".." in PurePath(row.name).parts):
        raise _outside_root_error(root, id_prop, row)
    names = [row.name] + [row.name + ext for ext in STRUCTURE_EXTENSIONS] + [f"POSCAR-{row.name}"]
    path = next((root / name for name in names if (root / name).is_file()), None)
    if path is not None and not allow_outside_root and not path.resolve().is_relative_to(root.resolve()):
        raise _outside_root_error(root, id_prop, row, f" (it resolves to {path.resolve()})")
    return path


def _outside_root_error(root: Path, id_prop: Path, row: IdPropRow, detail: str = "") -> DataError:
    return DataError(
        f"{id_prop}:{row.line}: {row.name!r} is outside the data folder {root}{detail}; "
        "set allow_outside_root=True on CustomDataModule to read it anyway"
    )


def read_id_prop(path: Path) -> list[IdPropRow]:
    """Rows of an id_prop.csv; raises DataError (naming file and line) for unusable content."""
    if not path.is_file():
        raise DataNotFoundError(f"{path} not found; a custom data folder needs an id_prop.csv with rows 'file,target'")
    try:
        return _parse_id_prop(path, path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file ({err})") from None
    except csv.Error as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from None


def _parse_id_prop(path: Path, text: str) -> list[IdPropRow]:
    rows: list[IdPropRow] = []
    seen: dict[str, int] = {}
    for line, fields in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
        fields = [f.strip() for f in fields]
        if not fields or not any(fields):
            continue
        if len(fields) < 2 or not fields[0]:
            raise DataError(f"{path}:{line}: expected 'filename_or_id,target', got {','.join(fields)!r}")
        value = parse_target(fields[1])
        if value is None:
            if not rows and line == 1 and not _python_number(fields[1]):
                log.info("%s: treating the first row %r as a header", path, fields)
                continue
            raise DataError(
                f"{path}:{line}: target {fields[1]!r} is not a number (write it in plain decimal notation, "
                "e.g. 1000, -1.5 or 2e-3)"
            )
        id = strip_extension(fields[0])
        if id in seen:
            raise DataError(f"{path}:{line}: id {id!r} already appears on line {seen[id]}")
        seen[id] = line
        rows.append(IdPropRow(line, fields[0], id, value))
    if not rows:
        raise DataError(f"{path} has no rows")
    return rows


def parse_target(text: str) -> float | None:
    """A target value: a plain decimal number, NaN for a missing value, None if the text is neither."""
    if text.lower() in MISSING_VALUES:
        return math.nan
    return float(text) if PLAIN_NUMBER.fullmatch(text) else None


def _python_number(text: str) -> bool:
    """Whether Python's ``float`` reads the text (e.g. ``1_000``: a mistyped number, not a header)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def folder_fingerprint(root: Path, rows: list[IdPropRow], id_prop: Path, allow_outside_root: bool = False) -> str:
    """sha256 over id_prop.csv and every referenced structure file (name and content)."""
    digest = hashlib.sha256(file_sha256(id_prop).encode())
    for row in rows:
        path = locate_structure_file(root, id_prop, row, allow_outside_root)
        digest.update(f"\n{row.name}\t{path.name if path else '-'}\t".encode())
        if path is not None:
            digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def build_custom(
    root: str | os.PathLike,
    id_prop_file: str = "id_prop.csv",
    split_file: str | os.PathLike | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    split_seed: int = 123,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    max_file_mb: float = DEFAULT_MAX_FILE_MB,
    allow_outside_root: bool = False,
    workers: int = 0,
) -> BuildResult:
    """Records of a custom folder, split at random (seeded) or by a JSON split file of ids (the arguments are
    :class:`~framer.data.datamodules.CustomDataModule`'s); ``workers`` > 1 parses in that many processes."""
    root = Path(root)
    id_prop = root / id_prop_file
    timer = PhaseTimer()
    with timer("read"):
        rows = read_id_prop(id_prop)
    missing = SkipReport()
    valid = []
    for row in rows:
        if math.isfinite(row.value):
            valid.append(row)
        else:
            missing.add("missing_target", row.id, f"line {row.line}")
    if not valid:
        raise DataError(f"{id_prop}: no row has a finite target")
    try:
        if split_file is None:
            splits = random_split(len(valid), fractions, split_seed)
        else:
            splits = _splits_from_file(Path(split_file), rows, valid, missing)
    except ValueError as err:
        raise DataError(f"{root}: {err}") from None

    def convert(p: int) -> CrystalRecord:
        row = valid[p]
        path = locate_structure_file(root, id_prop, row, allow_outside_root)
        with labelled(row.id):
            if path is None:
                raise InvalidStructureError(f"no structure file for {row.name!r} in {root}", "file_not_found")
            return record_from_file(path, row.id, row.value, max_atoms, max_file_mb)

    meta = dict(
        dataset="custom",
        root=str(root),
        raw_entries=len(rows),
        filtered_entries=len(valid),
        missing_target=missing.to_dict(),
        split_source=str(split_file) if split_file else f"random {tuple(fractions)} seed {split_seed}",
    )
    result = assemble(splits, convert, meta, workers=workers, timer=timer)  # the DataModule logs what it skipped
    if len(result.arrays["ids"]) == 0:
        raise DataError(f"{root}: none of the structures could be read ({dict(result.report.counts)})")
    return result


def _splits_from_file(path: Path, rows: list[IdPropRow], valid: list[IdPropRow], missing: SkipReport):
    given = read_split_file(path)
    position = {row.id: p for p, row in enumerate(valid)}
    all_ids = {row.id for row in rows}
    splits = {}
    for name in SPLIT_NAMES:
        ids = [strip_extension(i) for i in given[name]]
        unknown = [i for i in ids if i not in all_ids]
        if unknown:
            raise DataError(f"split file {path}: {len(unknown)} {name} id(s) not in id_prop.csv, e.g. {unknown[:3]}")
        splits[name] = np.array([position[i] for i in ids if i in position], dtype=np.int64)
    unused = len(valid) - sum(len(v) for v in splits.values())
    if unused:
        log.info("split file %s leaves %d of %d crystals unused", path, unused, len(valid))
    return splits
