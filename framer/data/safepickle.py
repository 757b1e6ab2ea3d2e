"""A restricted unpickler for the published moduli pickles: plain containers and numpy scalars/arrays only.

``pickle.load`` on a file from the web can run arbitrary code. :func:`safe_load` resolves only the handful of
globals that numpy scalars and arrays need (both the numpy<2 ``numpy.core`` and numpy>=2 ``numpy._core`` paths)
and refuses everything else with :class:`UnsafePickleError`, before anything is called.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

# (module, name) pairs a pickle of lists/dicts/str/float/int plus numpy scalars and arrays may reference.
_ALLOWED = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # protocol <= 2 stores bytes as codecs.encode(str, "latin1")
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global outside the allow-list (it could run code)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        canonical = "numpy._core" + module[len("numpy.core") :] if module.startswith("numpy.core") else module
        if (canonical, name) not in _ALLOWED:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: only numpy scalars/arrays and plain containers are allowed"
            )
        return getattr(importlib.import_module(canonical), name)


def safe_loads(data: bytes) -> Any:
    """Unpickle bytes with the allow-list; raises UnsafePickleError for any other global.

    Any other failure of malformed input (truncation, bad opcodes, absurd lengths, deep nesting, bad arguments to
    the allowed numpy constructors) is a :class:`pickle.UnpicklingError` ("truncated or corrupt pickle").
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # malformed input can make the unpickler raise almost anything
        detail = str(err) if isinstance(err, pickle.UnpicklingError) else f"{type(err).__name__}: {err}"
        raise pickle.UnpicklingError(f"truncated or corrupt pickle ({detail})") from err


def safe_load(path: str | Path) -> Any:
    """Unpickle a file with the allow-list; UnsafePickleError and UnpicklingError messages name the file.

    The file is read whole first, so a corrupt length field cannot make the unpickler allocate or read past its end.
    """
    path = Path(path)
    try:
        return safe_loads(path.read_bytes())
    except pickle.UnpicklingError as err:  # UnsafePickleError included
        raise type(err)(f"{path}: {err}") from err
