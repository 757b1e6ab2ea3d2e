"""Atomic writes moved to :mod:`framer.io`; these names stay importable for the data and benchmark code until they
import from there."""

from framer.io import atomic_file, atomic_write_text, fsync_dir, temp_path

__all__ = ["atomic_file", "atomic_write_text", "fsync_dir", "temp_path"]
