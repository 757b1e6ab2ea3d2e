"""Content-keyed, checksummed, atomically written caches of processed crystals, read back memory-mapped.

A cache file holds plain arrays (no pickled objects)::

    b"FRMRCCH1" | uint64 header length | JSON header | zero padding | arrays, each 64-byte aligned

The header carries the format version, the cache *key* (sha256 over everything the content depends on: raw file
hashes, data set, target, split specification, this format version), free-form metadata, the sha256 of the
payload and the sha256 of the header itself (so a damaged array layout or metadata is caught too).
:func:`load_or_build` uses a file only if its key matches and its payload checksum verifies; a stale or
corrupt file is rebuilt with a warning, never silently used. Records are stored as concatenated columns plus
offsets (:class:`RecordStore`), so DataLoader workers and DDP ranks share pages instead of copying them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from framer.data.structures import CrystalRecord
from framer.io import atomic_file

log = logging.getLogger("framer.data")

FORMAT_VERSION = 3  # 2: the header carries its own checksum; 3: records in their reduced cell, size limits
MAGIC = b"FRMRCCH1"
_ALIGN = 64


class CacheError(RuntimeError):
    """A cache file cannot be used."""


class CacheStaleError(CacheError):
    """The cache was built from other inputs or by another format version."""


class CacheCorruptError(CacheError):
    """The cache file is truncated, garbled or fails its checksum."""


# --------------------------------------------------------------------------------------------- hashing

_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def sha256_rest(handle: BinaryIO) -> str:
    """sha256 of the rest of an open binary file, read in 1 MiB chunks (``hashlib.file_digest`` needs Python 3.11)."""
    digest = hashlib.sha256()
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (memoised per process on path, size and mtime)."""
    path = Path(path)
    stat = path.stat()
    memo = (str(path.absolute()), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_HASHES:
        with path.open("rb") as fh:
            _FILE_HASHES[memo] = sha256_rest(fh)
    return _FILE_HASHES[memo]


def short_hash(spec: object) -> str:
    """First 10 hex digits of the sha256 of ``spec``'s JSON (sorted keys), for cache file names."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def cache_key(**parts: Any) -> str:
    """sha256 of the JSON-serialised parts (sorted keys) plus the cache format version."""
    payload = json.dumps({"format_version": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------- file format


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def write_cache(path: str | os.PathLike, key: str, arrays: dict[str, np.ndarray], meta: dict | None = None) -> None:
    """Write arrays atomically: a temporary file in the same directory, fsync, ``os.replace``, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    layout, offset = {}, 0
    for name, a in arrays.items():
        if a.dtype.hasobject:
            raise TypeError(f"cache array {name!r} has dtype object; only plain arrays can be stored")
        layout[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset}
        offset = _aligned(offset + a.nbytes)
    payload_nbytes = offset

    digest = hashlib.sha256()
    for a in arrays.values():
        digest.update(a.tobytes())
        digest.update(b"\0" * (_aligned(a.nbytes) - a.nbytes))
    header = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "meta": meta or {},
        "arrays": layout,
        "payload_nbytes": payload_nbytes,
        "payload_sha256": digest.hexdigest(),
    }
    header = json.loads(json.dumps(header, sort_keys=True, default=str))  # exactly what a reader will parse
    header["header_sha256"] = _header_digest(header)
    header_bytes = json.dumps(header, sort_keys=True).encode("utf-8")
    prefix = MAGIC + struct.pack("<Q", len(header_bytes)) + header_bytes
    prefix += b"\0" * (_aligned(len(prefix)) - len(prefix))

    with atomic_file(path, "wb") as fh:
        fh.write(prefix)
        for a in arrays.values():
            fh.write(a.tobytes())
            fh.write(b"\0" * (_aligned(a.nbytes) - a.nbytes))


def _header_digest(header: dict) -> str:
    """sha256 of the header's canonical JSON without its own checksum field."""
    rest = {k: v for k, v in header.items() if k != "header_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass
class CacheFile:
    """A validated cache file; arrays are opened memory-mapped and read-only."""

    path: Path
    header: dict
    payload_start: int

    @property
    def key(self) -> str:
        return self.header["key"]

    @property
    def meta(self) -> dict:
        return self.header["meta"]

    def array(self, name: str) -> np.ndarray:
        spec = self.header["arrays"][name]
        dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
        if int(np.prod(shape)) == 0:
            return np.empty(shape, dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=self.payload_start + spec["offset"], shape=shape)


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """Header and payload offset of a cache file; raises CacheCorruptError."""
    path = Path(path)
    with path.open("rb") as fh:
        magic = fh.read(len(MAGIC))
        if magic != MAGIC:
            raise CacheCorruptError(f"{path}: not a framer cache file (bad magic)")
        raw_len = fh.read(8)
        if len(raw_len) != 8:
            raise CacheCorruptError(f"{path}: truncated header")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > 1 << 28:
            raise CacheCorruptError(f"{path}: implausible header length {header_len}")
        header_bytes = fh.read(header_len)
    if len(header_bytes) != header_len:
        raise CacheCorruptError(f"{path}: truncated header")
    try:
        header = json.loads(header_bytes)
        _ = header["key"], header["arrays"], header["payload_nbytes"], header["payload_sha256"]
    except (ValueError, KeyError, TypeError) as err:
        raise CacheCorruptError(f"{path}: unreadable header ({err})") from None
    if header.get("format_version") == FORMAT_VERSION and header.get("header_sha256") != _header_digest(header):
        raise CacheCorruptError(f"{path}: header checksum mismatch (corrupt file)")
    return header, _aligned(len(MAGIC) + 8 + header_len)


def read_cache(path: str | os.PathLike, key: str | None = None, verify: bool = True) -> CacheFile:
    """Open a cache file after checking its format version, key, size and (``verify``) payload checksum."""
    path = Path(path)
    header, payload_start = read_header(path)
    if header.get("format_version") != FORMAT_VERSION:
        raise CacheStaleError(f"{path}: format version {header.get('format_version')} != {FORMAT_VERSION}")
    if key is not None and header["key"] != key:
        raise CacheStaleError(f"{path}: built from other inputs (key {header['key'][:12]} != {key[:12]})")
    expected_size = payload_start + header["payload_nbytes"]
    actual_size = path.stat().st_size
    if actual_size != expected_size:
        raise CacheCorruptError(f"{path}: size {actual_size} bytes, expected {expected_size} (truncated?)")
    if verify:
        with path.open("rb") as fh:
            fh.seek(payload_start)
            payload_sha256 = sha256_rest(fh)
        if payload_sha256 != header["payload_sha256"]:
            raise CacheCorruptError(f"{path}: payload checksum mismatch (corrupt file)")
    return CacheFile(path, header, payload_start)


def load_or_build(
    path: str | os.PathLike,
    key: str,
    build: Callable[[], tuple[dict[str, np.ndarray], dict]],
    rebuild: bool = False,
    description: str = "",
) -> tuple[CacheFile, str]:
    """Use the cache at ``path`` if valid for ``key``, else call ``build() -> (arrays, meta)`` and write it.

    Returns the opened cache and its status: ``"hit"``, ``"miss"`` (absent), ``"stale"``, ``"corrupt"`` or
    ``"rebuild"`` (forced). Hits and misses are logged at INFO, stale and corrupt caches at WARNING.
    """
    path = Path(path)
    name = description or path.name
    status = "miss"
    if rebuild:
        status = "rebuild"
        log.info("cache %s: rebuild requested (%s)", name, path)
    elif path.exists():
        try:
            cache = read_cache(path, key)
            log.info("cache hit: %s (%s)", name, path)
            return cache, "hit"
        except CacheStaleError as err:
            status = "stale"
            log.warning("stale cache for %s, rebuilding: %s", name, err)
        except (CacheCorruptError, OSError) as err:
            status = "corrupt"
            log.warning("corrupt cache for %s, rebuilding: %s", name, err)
    else:
        log.info("cache miss: %s (building %s)", name, path)
    arrays, meta = build()
    write_cache(path, key, arrays, meta)
    return read_cache(path, key, verify=False), status


# --------------------------------------------------------------------------------------------- records


def records_to_arrays(records: Sequence[CrystalRecord]) -> dict[str, np.ndarray]:
    """Columns of a list of records: lattices, concatenated coordinates/numbers with offsets, targets, ids."""
    sizes = np.array([r.num_atoms for r in records], dtype=np.int64)
    offsets = np.zeros(len(records) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    width = max([len(r.id) for r in records], default=1) or 1
    return {  # the leading empty arrays give the shapes when there are no records
        "lattice": np.array([r.lattice for r in records], dtype=np.float64).reshape(-1, 3, 3),
        "frac_coords": np.concatenate([np.zeros((0, 3)), *(r.frac_coords for r in records)]).astype(np.float64),
        "atomic_numbers": np.concatenate([np.zeros(0, np.uint8), *(r.atomic_numbers for r in records)]).astype(
            np.uint8
        ),
        "offsets": offsets,
        "target": np.array([r.target for r in records], dtype=np.float64),
        "ids": np.array([r.id for r in records], dtype=f"<U{width}"),
    }


def concatenate_columns(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """What :func:`records_to_arrays` gives the records of all ``parts`` together (shifted offsets, widest ids)."""
    if len(parts) == 1:
        return parts[0]
    sizes = np.concatenate([np.diff(part["offsets"]) for part in parts])
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    out = {name: np.concatenate([part[name] for part in parts]) for name in parts[0] if name != "offsets"}
    out["offsets"] = offsets
    return {name: out[name] for name in parts[0]}  # the same order of columns (the file layout follows it)


class RecordStore:
    """Read-only, memory-mapped sequence of :class:`CrystalRecord` backed by a cache file; picklable (workers
    re-open the file instead of copying arrays)."""

    _COLUMNS = ("lattice", "frac_coords", "atomic_numbers", "target", "ids")

    def __init__(self, cache: CacheFile):
        self.cache = cache
        self.offsets = np.array(cache.array("offsets"))
        self._columns: dict[str, np.ndarray] | None = None

    def _cols(self) -> dict[str, np.ndarray]:
        if self._columns is None:
            self._columns = {name: self.cache.array(name) for name in self._COLUMNS}
        return self._columns

    def __getstate__(self) -> dict:
        return {"cache": self.cache, "offsets": self.offsets, "_columns": None}

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def targets(self) -> np.ndarray:
        return np.asarray(self._cols()["target"], dtype=np.float64)

    @property
    def ids(self) -> list[str]:
        return [str(i) for i in self._cols()["ids"]]

    def __getitem__(self, i: int) -> CrystalRecord:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = int(i) % len(self)
        cols = self._cols()
        start, stop = self.offsets[i], self.offsets[i + 1]
        return CrystalRecord(
            id=str(cols["ids"][i]),
            lattice=np.array(cols["lattice"][i], dtype=np.float64),
            frac_coords=np.array(cols["frac_coords"][start:stop], dtype=np.float64),
            atomic_numbers=np.array(cols["atomic_numbers"][start:stop], dtype=np.int64),
            target=float(cols["target"][i]),
        )
