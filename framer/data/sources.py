"""Where raw data live, which targets exist, and how raw files are read (offline, through jarvis-tools' loader).

Layout under the data root (``$FRAMER_DATA_DIR``, default ``./data``)::

    raw/megnet.json.zip                  jarvis-tools key "megnet" (member megnet.json)
    raw/jdft_3d-8-18-2021.json.zip       jarvis-tools key "dft_3d_2021" (member jdft_3d-8-18-2021.json)
    raw/{bulk,shear}_megnet_{train,val,test}.pkl   Matformer's pre-split moduli pickles (log10 GPa)
    processed/<dataset>/<target>.cache   content-keyed caches (framer.data.cache) + <target>.report.json

The JSON zips are read by ``jarvis.db.figshare.data(key, store_dir=raw_dir)``, which loads a pre-placed
``<store_dir>/<js_tag>.zip`` without network access; this module checks the file first, so a missing file is a
:class:`DataNotFoundError` and never a download.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import shutil
import socket
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from framer.data.safepickle import UnsafePickleError, safe_load, safe_loads
from framer.io import atomic_file

DATA_DIR_ENV = "FRAMER_DATA_DIR"


class DataError(RuntimeError):
    """A data problem the user must fix; the message is one self-contained line."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A raw file is missing (this machine cannot download it)."""


class DataCorruptError(DataError):
    """A raw file exists but cannot be read (truncated zip, bad JSON, unsafe pickle...)."""


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root: ``data_dir``, else ``$FRAMER_DATA_DIR``, else ``./data`` (absolute)."""
    root = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or "data"
    return Path(root).expanduser().absolute()


def raw_dir(data_dir: str | os.PathLike | None = None) -> Path:
    return data_root(data_dir) / "raw"


# --------------------------------------------------------------------------------------------- raw sources


@dataclass(frozen=True)
class JarvisSource:
    """A JSON-zip dataset served by ``jarvis.db.figshare.data(key)``."""

    key: str  # jarvis-tools dataset key
    js_tag: str  # member of <js_tag>.zip
    url: str
    entries: int  # published number of entries
    id_field: str

    @property
    def filename(self) -> str:
        return self.js_tag + ".zip"


JARVIS_SOURCES = {
    "megnet": JarvisSource("megnet", "megnet.json", "https://ndownloader.figshare.com/files/26724977", 69239, "id"),
    "dft_3d_2021": JarvisSource(
        "dft_3d_2021", "jdft_3d-8-18-2021.json", "https://ndownloader.figshare.com/files/29204826", 55723, "jid"
    ),
}

MODULI_URL = "https://figshare.com/ndownloader/files/"
MODULI_FILES = {  # Matformer/GATGNN pickles: (property, split) -> figshare file number
    ("bulk", "train"): 40258705,
    ("bulk", "val"): 40258675,
    ("bulk", "test"): 40258666,
    ("shear", "train"): 40258681,
    ("shear", "val"): 40258684,
    ("shear", "test"): 40258678,
}


def moduli_filename(prop: str, split: str) -> str:
    return f"{prop}_megnet_{split}.pkl"


@dataclass(frozen=True)
class TargetSpec:
    """One regression target: where its values come from and how entries with missing values are filtered."""

    name: str  # framer's name (DataModule ``target``)
    dataset: str  # "megnet" or "dft_3d_2021"
    field: str  # key in the raw records
    group: tuple[str, ...]  # fields that must all be valid numbers (Crystalformer's joint filter)
    units: str
    split_key: str  # key into splits.PAPER_SPLITS (or the moduli pickles)
    pickled: bool = False  # values and split come from the moduli pickles

    @property
    def moduli_prop(self) -> str:
        return self.name.split("_")[0]


_MEGNET_GROUP = ("e_form", "gap pbe")
_DFT3D_GROUP = ("formation_energy_peratom", "optb88vdw_total_energy", "optb88vdw_bandgap")

_TARGET_TABLE = [  # name, dataset, field, group, units, split key, pickled (see TargetSpec)
    ("e_form", "megnet", "e_form", _MEGNET_GROUP, "eV/atom", "megnet", False),
    ("gap", "megnet", "gap pbe", _MEGNET_GROUP, "eV", "megnet", False),
    ("bulk_modulus", "megnet", "bulk modulus", ("bulk modulus",), "log10(GPa)", "bulk_modulus", True),
    ("shear_modulus", "megnet", "shear modulus", ("shear modulus",), "log10(GPa)", "shear_modulus", True),
    ("formation_energy", "dft_3d_2021", "formation_energy_peratom", _DFT3D_GROUP, "eV/atom", "dft_3d_2021", False),
    ("total_energy", "dft_3d_2021", "optb88vdw_total_energy", _DFT3D_GROUP, "eV/atom", "dft_3d_2021", False),
    ("opt_bandgap", "dft_3d_2021", "optb88vdw_bandgap", _DFT3D_GROUP, "eV", "dft_3d_2021", False),
    ("mbj_bandgap", "dft_3d_2021", "mbj_bandgap", ("mbj_bandgap",), "eV", "dft_3d_2021-mbj_bandgap", False),
    ("ehull", "dft_3d_2021", "ehull", ("ehull",), "eV/atom", "dft_3d_2021-ehull", False),
]
TARGETS: dict[str, dict[str, TargetSpec]] = {}
for _row in _TARGET_TABLE:
    TARGETS.setdefault(_row[1], {})[_row[0]] = TargetSpec(*_row)


def target_spec(dataset: str, target: str) -> TargetSpec:
    """Look up a target; raises ValueError listing the valid names."""
    try:
        return TARGETS[dataset][target]
    except KeyError:
        valid = ", ".join(TARGETS.get(dataset, {})) or ", ".join(TARGETS)
        raise ValueError(f"unknown target {target!r} for data set {dataset!r}; choose one of: {valid}") from None


def is_valid_number(value: object) -> bool:
    """Crystalformer's filter: an ``int`` or a finite ``float`` ("na", None, NaN, inf and huge ints are missing)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        try:
            return math.isfinite(float(value))
        except OverflowError:  # an integer beyond the float range (JSON allows any size)
            return False
    return isinstance(value, float) and math.isfinite(value)


# --------------------------------------------------------------------------------------------- loading


def require_files(paths: list[Path]) -> list[Path]:
    """``paths``; for the first missing one, a one-line DataNotFoundError: where it goes and where it comes from."""
    origins = {
        source.filename: (f"jarvis-tools figshare key {source.key!r} ({source.url})", dataset)
        for dataset, source in JARVIS_SOURCES.items()
    }
    for (prop, split), number in MODULI_FILES.items():
        origins[moduli_filename(prop, split)] = (f"Matformer's figshare file {MODULI_URL}{number}", "moduli")
    for path in paths:
        if path.is_file():
            continue
        if path.name not in origins:
            raise DataNotFoundError(f"{path} not found")
        origin, dataset = origins[path.name]
        raise DataNotFoundError(
            f"{path} not found; put it there (data root: ${DATA_DIR_ENV} or ./data) — it comes from {origin}; on a "
            f"machine with internet run `python -m framer.data download --dataset {dataset}`"
        )
    return paths


def jarvis_zip_path(dataset: str, data_dir: str | os.PathLike | None = None) -> Path:
    return raw_dir(data_dir) / JARVIS_SOURCES[dataset].filename


def check_jarvis_zip(path: Path, js_tag: str) -> None:
    """Cheap structural check of a JSON zip: readable central directory and the expected member."""
    try:
        with zipfile.ZipFile(path) as zf:
            if js_tag not in zf.namelist():
                raise DataCorruptError(f"{path} is a zip without the member {js_tag!r} (found {zf.namelist()[:3]})")
    except zipfile.BadZipFile as err:
        raise DataCorruptError(f"{path} is not a valid zip file (truncated or corrupt download?): {err}") from None


def load_jarvis_dataset(dataset: str, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """Entries of ``megnet`` or ``dft_3d_2021`` in file order, read by jarvis-tools' own loader (offline); raises
    DataNotFoundError if the zip is not in ``<data root>/raw``, DataCorruptError if it or its JSON is unreadable."""
    source = JARVIS_SOURCES[dataset]
    path = jarvis_zip_path(dataset, data_dir)
    require_files([path])
    check_jarvis_zip(path, source.js_tag)
    from jarvis.db.figshare import data as jarvis_data

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # jarvis prints progress messages
            entries = jarvis_data(source.key, store_dir=str(path.parent))
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as err:
        raise DataCorruptError(
            f"{path} cannot be read (truncated or corrupt zip?): {type(err).__name__}: {err}"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataCorruptError(f"{path}: member {source.js_tag} is not valid JSON ({err})") from None
    if not isinstance(entries, list):
        raise DataCorruptError(f"{path}: expected a JSON list of records, got {type(entries).__name__}")
    return entries


def moduli_paths(prop: str, data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    return {split: raw_dir(data_dir) / moduli_filename(prop, split) for split in ("train", "val", "test")}


def load_moduli_pickles(prop: str, data_dir: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """The published ``{bulk,shear}_megnet_{train,val,test}.pkl`` lists, read with the restricted unpickler."""
    paths = moduli_paths(prop, data_dir)
    require_files(list(paths.values()))
    out = {}
    for split, path in paths.items():
        try:
            content = safe_load(path)
        except UnsafePickleError as err:
            raise DataCorruptError(f"{err} (not loaded: it could run code)") from None
        except (pickle.UnpicklingError, OSError) as err:
            raise DataCorruptError(str(err)) from None
        if not isinstance(content, list):
            raise DataCorruptError(f"{path}: expected a pickled list of records, got {type(content).__name__}")
        out[split] = content
    return out


def raw_files(spec: TargetSpec, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The raw files a target is built from."""
    if spec.pickled:
        return list(moduli_paths(spec.moduli_prop, data_dir).values())
    return [jarvis_zip_path(spec.dataset, data_dir)]


# --------------------------------------------------------------------------------------------- downloads


def download_jarvis(dataset: str, data_dir: str | os.PathLike | None = None, timeout: float = 120.0) -> Path:
    """Fetch ``<js_tag>.zip`` with jarvis-tools' loader into a scratch dir, verify it, then move it into raw/."""
    source = JARVIS_SOURCES[dataset]
    target = jarvis_zip_path(dataset, data_dir)
    if target.is_file():
        check_jarvis_zip(target, source.js_tag)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".download-{dataset}-{os.getpid()}"
    scratch.mkdir(exist_ok=True)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # jarvis calls requests.get without a timeout
    try:
        from jarvis.db.figshare import data as jarvis_data

        try:
            entries = jarvis_data(source.key, store_dir=str(scratch))
        except Exception as err:
            raise DataError(f"download of {source.url} (jarvis key {source.key!r}) failed: {err}") from None
        if not isinstance(entries, list):
            raise DataCorruptError(f"downloaded {source.filename} does not hold a list of records")
        os.replace(scratch / source.filename, target)
    finally:
        socket.setdefaulttimeout(old_timeout)
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def download_moduli(data_dir: str | os.PathLike | None = None, timeout: float = 120.0) -> list[Path]:
    """Fetch Matformer's six moduli pickles (checked with the restricted unpickler before they are kept)."""
    import requests

    written = []
    for (prop, split), number in MODULI_FILES.items():
        target = raw_dir(data_dir) / moduli_filename(prop, split)
        if not target.is_file():
            url = f"{MODULI_URL}{number}"
            try:
                response = requests.get(url, timeout=timeout)
                response.raise_for_status()
            except requests.RequestException as err:
                raise DataError(f"download of {url} failed: {err}") from None
            try:
                safe_loads(response.content)
            except Exception as err:
                raise DataCorruptError(f"downloaded {url} is not a safe, readable pickle: {err}") from None
            with atomic_file(target) as fh:
                fh.write(response.content)
        written.append(target)
    return written
