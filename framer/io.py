"""Files: atomic writes, JSON and CSV, and file locks. Every result, checkpoint and cache file of framer is written
through :func:`atomic_file`: a process killed at any moment leaves the previous file or none, never a truncated one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from filelock import FileLock


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: some file systems refuse to fsync directories)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_path(path: Path) -> Path:
    """A fresh hidden temporary name next to ``path``: ``.<name>.<pid>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file (mode "wb" or "w") that replaces ``path`` when the block ends without an exception:
    :func:`temp_path` (same file system), fsynced, renamed over ``path`` with ``os.replace``, and the directory
    fsynced; a failed write removes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode.replace("w", "x"), **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically; returns the path."""
    with atomic_file(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    return Path(path)


# ---- JSON
def to_plain(value: Any, strict: bool = False) -> Any:
    """``value`` as JSON/YAML-safe plain data (dicts with string keys, lists, str, int, float, bool, None): numpy and
    torch scalars become numbers, anything else its ``str``; ``strict``: TypeError for anything not plain already."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (not strict and isinstance(value, set)):
        return [to_plain(v, strict) for v in value]
    if strict:
        raise TypeError(f"{type(value).__name__} is not plain data")
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` (made plain, see :func:`to_plain`) as indented JSON with sorted keys, atomically; returns the path."""
    return atomic_write_text(path, json.dumps(to_plain(data), indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when the file is missing, unreadable or holds no object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---- CSV
def write_csv_rows(path: str | os.PathLike, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> Path:
    """A CSV with ``header`` and ``rows`` (floats at full precision, ``repr``), atomically; returns the path."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(header))
    for row in rows:
        writer.writerow([repr(v) if isinstance(v, float) else v for v in row])
    return atomic_write_text(path, buffer.getvalue())


# ---- locks
def file_lock(path: str | os.PathLike) -> FileLock:
    """An exclusive OS lock on ``path`` to hold with ``with`` (waits for other holders); it ends with its process,
    also on SIGKILL. Do not nest two locks on one path in one process: the inner one would wait forever."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path)
