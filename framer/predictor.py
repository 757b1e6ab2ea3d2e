"""Trained models in Python: ``framer.load(path).predict(structures)``.

    import framer
    predictor = framer.load("runs/mp_e_form/version_0")          # a run directory, or a .ckpt file
    values = predictor.predict([structure, "my.cif", "POSCAR"])  # numpy array in the target's units

``load`` accepts a checkpoint (a local path or an fsspec URL) or a run directory (``version_<n>/``, or the run name's
directory, whose newest version is taken) and uses its ``last.ckpt``, whose SWA average is what the paper reports.
The checkpoint is read with ``weights_only=True`` and the classes it names are checked before anything is imported
(:mod:`framer.checkpoints`), so nothing in it runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from framer.checkpoints import CheckpointError
from framer.data import collate_records
from framer.data.structures import CrystalRecord, InvalidStructureError, record_from_file, record_from_structure
from framer.module import CrystalRegressor
from framer.rundir import resolve

STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar")
STRUCTURE_PREFIXES = ("POSCAR", "CONTCAR")


def is_structure_file(path: Path) -> bool:
    return path.suffix.lower() in STRUCTURE_SUFFIXES or path.name.upper().startswith(STRUCTURE_PREFIXES)


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[str, Path]]:
    """(id, path) of every structure file named or found (recursively) in the given directories, in order.

    The id is the path relative to its input directory, without the extension; ids are made unique (``x#1``).
    FileNotFoundError for an input that does not exist.
    """
    found: list[tuple[str, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and is_structure_file(p)):
                relative = file.relative_to(path)
                name = relative.with_suffix("") if file.suffix.lower() in STRUCTURE_SUFFIXES else relative
                found.append((name.as_posix(), file))
        elif path.is_file():
            found.append((path.stem if path.suffix.lower() in STRUCTURE_SUFFIXES else path.name, path))
        else:
            raise FileNotFoundError(f"input not found: {path}")
    seen: dict[str, int] = {}
    unique = []
    for id_, file in found:  # make ids unique without losing the file they came from
        count = seen.get(id_, 0)
        seen[id_] = count + 1
        unique.append((id_ if count == 0 else f"{id_}#{count}", file))
    return unique


def checkpoint_of(path: str | os.PathLike) -> str | Path:
    """The checkpoint ``path`` names: itself (a file or URL), or ``last.ckpt`` of a run directory."""
    text = os.fspath(path)
    if "://" in text or Path(text).is_file():
        return text
    run = resolve(text) if Path(text).is_dir() else None
    if run is None:
        raise CheckpointError(f"{text} is neither a checkpoint nor a run directory")
    if not run.last_checkpoint.is_file():
        raise CheckpointError(f"run directory {run.path} has no {run.last_checkpoint.name}")
    return run.last_checkpoint


class Predictor:
    """Predicts a trained module's target for crystals, in the target's physical units.

    Args:
        module: The trained :class:`~framer.module.CrystalRegressor` (put in eval mode on ``device``).
        device: ``cpu``, ``cuda``, ``cuda:1``, ... or ``auto`` (CUDA when available).
        weights: ``swa`` (the average, when the module has one) or ``raw``; default: the module's ``eval_weights``.
        batch_size: Crystals per forward pass.
    """

    def __init__(
        self,
        module: CrystalRegressor,
        device: str | torch.device = "cpu",
        weights: Literal["swa", "raw"] | None = None,
        batch_size: int = 16,
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.module = module.to(device).eval()
        self.device = torch.device(device)
        self.weights = weights or module.eval_weights
        self.batch_size = batch_size

    @property
    def target(self) -> dict[str, str]:
        """Dataset name, target and units of the training data (what the checkpoint recorded)."""
        return dict(self.module.target_info)

    def predict(self, structures: Iterable[Any]) -> np.ndarray:
        """Predictions for pymatgen Structures, :class:`~framer.data.CrystalRecord`\\ s or CIF/POSCAR paths, in order.

        An input that is not a usable crystal raises :class:`~framer.data.InvalidStructureError` naming it.
        """
        records = [_record(item, str(i)) for i, item in enumerate(structures)]
        values = [value for chunk in _chunks(records, self.batch_size) for value in self._forward(chunk)]
        return np.asarray(values, dtype=float)

    def predict_files(
        self, files: Iterable[tuple[str, Path]], on_skip: Callable[[str, str], None] | None = None
    ) -> tuple[list[tuple[str, float]], list[tuple[str, str]]]:
        """Predictions ``(id, value)`` for every usable ``(id, path)`` file, and ``(file, reason)`` for each skipped."""
        rows: list[tuple[str, float]] = []
        skipped: list[tuple[str, str]] = []
        pending: list[CrystalRecord] = []
        for id_, path in files:
            try:
                pending.append(record_from_file(path, id=id_))
            except InvalidStructureError as err:
                reason = str(err).removeprefix(f"{path}: ")
                skipped.append((str(path), reason))
                if on_skip is not None:
                    on_skip(str(path), reason)
                continue
            if len(pending) >= self.batch_size:
                rows.extend(zip((r.id for r in pending), self._forward(pending)))
                pending = []
        if pending:
            rows.extend(zip((r.id for r in pending), self._forward(pending)))
        return rows, skipped

    def _forward(self, records: list[CrystalRecord]) -> list[float]:
        batch = collate_records(records).to(self.device)
        with torch.inference_mode():
            return self.module(batch, self.weights).float().cpu().tolist()


def load(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    weights: Literal["swa", "raw"] | None = None,
    batch_size: int = 16,
) -> Predictor:
    """A :class:`Predictor` for a checkpoint or a run directory (see the module docstring)."""
    module = CrystalRegressor.load_from_checkpoint(checkpoint_of(path), map_location="cpu")
    return Predictor(module, device, weights, batch_size)


def _record(item: Any, default_id: str) -> CrystalRecord:
    if isinstance(item, CrystalRecord):
        return item
    if isinstance(item, (str, os.PathLike)):
        return record_from_file(item)
    return record_from_structure(item, id=default_id)


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
