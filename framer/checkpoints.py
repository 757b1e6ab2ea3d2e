"""Checkpoint files: reading and checking them safely, and writing them atomically.

Nothing a user receives may run code when it is loaded. Two rules keep checkpoints plain data:

- every checkpoint is read with ``torch.load(weights_only=True)`` (tensors and plain containers only), whatever the
  spelling of its path (local, ``file://``, any fsspec URL), also when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set:
  :func:`read_checkpoint`, and :class:`AtomicCheckpointIO` for the checkpoints a trainer resumes from;
- the hyperparameters a module is rebuilt from may name classes only from allowed packages, each a subclass of what
  its place expects (:func:`check_module_hparams`).

Refusals are :class:`~framer.instantiate.RefusedClassPath` and :class:`CheckpointError`, each one message naming
the file.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from framer.errors import UserError, causes
from framer.instantiate import RefusedClassPath, check_config_class_paths, resolve_class
from framer.io import atomic_file

#: The instantiator Lightning and framer write into checkpoints (``hyper_parameters["_instantiator"]``).
ALLOWED_INSTANTIATORS = ("lightning.pytorch.cli.instantiate_module",)
#: What each place of a CrystalRegressor's hyperparameters must hold (a subclass of the given class).
HPARAM_BASES: dict[str, type] = {
    "model": torch.nn.Module,
    "optimizer": torch.optim.Optimizer,
    "lr_scheduler": torch.optim.lr_scheduler.LRScheduler,
}


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used: missing, truncated or corrupt, or carrying pickled code."""


class CheckpointWriteError(UserError, OSError):
    """Writing a checkpoint failed (e.g. a full disk); the previous checkpoint file is intact."""


# ---- hyperparameters
def check_module_hparams(hparams: Any, module_class: type, source: str) -> None:
    """Check the hyperparameters a LightningModule would be rebuilt from (:class:`RefusedClassPath` if unsafe):
    ``_instantiator`` must be Lightning's own, ``_class_path`` a subclass of ``module_class``, the places of
    :data:`HPARAM_BASES` subclasses of their base, every other ``class_path`` in an allowed package."""
    if hparams is None:
        return
    if not isinstance(hparams, Mapping):
        raise RefusedClassPath(f"{source}: hyper_parameters are not a mapping ({type(hparams).__name__})")
    instantiator = hparams.get("_instantiator")
    if instantiator is not None and instantiator not in ALLOWED_INSTANTIATORS:
        raise RefusedClassPath(f"{source}: _instantiator {instantiator!r} was refused and not imported")
    check_config_class_paths(hparams, source)  # every class path in an allowed package, before any import
    if hparams.get("_class_path") is not None:
        resolve_class(hparams["_class_path"], module_class, source, "_class_path")
    for key, base in HPARAM_BASES.items():
        value = hparams.get(key)
        if value is None or isinstance(value, torch.nn.Module):
            continue
        if isinstance(value, Mapping) and "class_path" in value:
            resolve_class(value["class_path"], base, source, f"{key}.class_path")
        elif isinstance(value, str):
            resolve_class(value, base, source, key)
        else:
            raise RefusedClassPath(f"{source}: {key} must be a class path or a class_path/init_args mapping")


# ---- reading checkpoints
def _local_path(path: str | os.PathLike) -> Path | None:
    """The local file of a plain path or ``file://`` URL; None for other URLs."""
    text = os.fspath(path)
    if "://" not in text:
        return Path(text)
    from fsspec.core import url_to_fs
    from fsspec.implementations.local import LocalFileSystem

    try:
        fs, stripped = url_to_fs(text)
    except (ImportError, ValueError):  # an unknown protocol: reported when the file is read
        return None
    return Path(stripped) if isinstance(fs, LocalFileSystem) else None


def _read_bytes(url: str) -> bytes:
    import fsspec

    try:
        with fsspec.open(url, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {url}") from None
    except (ImportError, ValueError, OSError) as err:
        raise CheckpointError(f"checkpoint {url} cannot be read ({type(err).__name__}: {err})") from None


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (local paths memory-mapped); a missing, truncated or corrupt one,
    or one carrying pickled Python objects, is a :class:`CheckpointError` naming the file."""
    local = _local_path(path)
    shown = os.fspath(path)
    if local is not None and not local.is_file():
        raise CheckpointError(f"checkpoint not found: {shown}")
    source: Any = local if local is not None else io.BytesIO(_read_bytes(shown))
    try:
        try:
            checkpoint = torch.load(source, map_location="cpu", weights_only=True, mmap=local is not None)
        except RuntimeError as err:
            if local is None or "mmap" not in str(err):
                raise
            checkpoint = torch.load(local, map_location="cpu", weights_only=True)  # the old (non-zip) format
    except Exception as err:
        if isinstance(source, io.BytesIO):
            source.seek(0)
        try:  # the classes and functions it would import when unpickled (torch's own scan of a zip checkpoint)
            unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(source))
        except Exception:  # not a zip checkpoint (the old format): torch's error says what it refused
            unsafe = []
        text = " ".join(str(err).split())
        refused = isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text  # old format
        if unsafe or refused:
            named = f" ({', '.join(unsafe)})" if unsafe else ""
            raise CheckpointError(
                f"checkpoint {shown} was not loaded: it holds Python objects{named} beyond tensors "
                "and plain data, and unpickling them could run code"
            ) from None
        what = f"{type(err).__name__}: {text[:200]}"
        raise CheckpointError(f"checkpoint {shown} is truncated or corrupt ({what})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {shown} is not a Lightning checkpoint (a {type(checkpoint).__name__})")
    return checkpoint


def check_checkpoint(path: str | os.PathLike, module_class: type, overridden: Iterable[str] = ()) -> dict[str, Any]:
    """Read a checkpoint safely and check the hyperparameters ``module_class`` would be rebuilt from, except the
    ``overridden`` ones the caller replaces (``load_from_checkpoint(path, model=net)``); return it."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, Mapping):
        hparams = {key: value for key, value in hparams.items() if key not in set(overridden)}
    check_module_hparams(hparams, module_class, f"checkpoint {os.fspath(path)}")
    return checkpoint


# ---- the trainer's checkpoint files
class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that always loads with ``weights_only=True`` and saves local files with
    :func:`framer.io.atomic_file` (Lightning stages them under ``/tmp``, on a cluster usually another file system, so
    its "move" is a copy a kill can cut short); a failed write keeps the previous file (:class:`CheckpointWriteError`).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            with atomic_file(path, "wb") as handle:
                torch.save(checkpoint, handle)
        except (OSError, RuntimeError) as err:
            # torch's zip writer reports a failed write as a RuntimeError raised from the OSError
            cause = next((e for e in causes(err) if isinstance(e, OSError)), None)
            if cause is None:
                raise
            reason = cause.strerror or str(cause)
            raise CheckpointWriteError(
                f"could not write checkpoint {path}: {reason}; the previous checkpoint file is intact "
                "(fix the cause, then resume with --ckpt_path last)"
            ) from err

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        location = {} if map_location is None else {"map_location": map_location}  # None: Lightning's default
        return super().load_checkpoint(path, weights_only=True, **location)
