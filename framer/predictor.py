"""Trained models in Python: ``framer.load(path).predict(structures)``.

    import framer
    predictor = framer.load("runs/mp_e_form/version_0")          # a run directory, checkpoint or model folder
    values = predictor.predict([structure, atoms, "my.cif"])     # numpy array in the target's units
    ensemble = framer.load(["m1", "m2", "m3"])                   # several models, or an ensemble folder
    mean, std = ensemble.predict(structures, return_std=True)

``load`` accepts a checkpoint (a local path or an fsspec URL), a run directory (``version_<n>/``, or the run name's
directory, whose newest version is taken; its ``last.ckpt``, whose SWA average is what the paper reports), a model
folder written by ``python -m framer.export`` (``model.json``, ``weights.safetensors``, ``README.md``), an ensemble
folder (``ensemble.json`` listing member model folders inside it) or a list of any of these (an :class:`Ensemble`).

Nothing loaded runs code: checkpoints are read with ``weights_only=True`` and the classes they name are checked
before anything is imported (:mod:`framer.checkpoints`); a model folder is JSON and safetensors, and its model class
must be a framer network (``framer.models``, or a package of ``$FRAMER_ALLOWED_MODULES``), checked through the
allow-list of :mod:`framer.instantiate` before the import and after it. Every problem with a folder is one
:class:`ModelFolderError` naming the file.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from framer.checkpoints import CheckpointError
from framer.data import collate_records
from framer.data.structures import CrystalRecord, InvalidStructureError, record_from_file, record_from_structure
from framer.errors import UserError
from framer.instantiate import BUILTIN_ALLOWED_MODULES, allowed_modules, resolve_class
from framer.module import CrystalRegressor
from framer.rundir import resolve

STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar")
STRUCTURE_PREFIXES = ("POSCAR", "CONTCAR")
#: The files of a model folder and of an ensemble folder (``python -m framer.export``).
MODEL_FILE, WEIGHTS_FILE, CARD_FILE, ENSEMBLE_FILE = "model.json", "weights.safetensors", "README.md", "ensemble.json"
MODEL_FORMAT, ENSEMBLE_FORMAT, FORMAT_VERSION = "framer-model", "framer-ensemble", 1
#: Where a model folder's network class may come from (plus the packages of ``$FRAMER_ALLOWED_MODULES``).
MODEL_PACKAGES = ("framer.models",)


class ModelFolderError(UserError, ValueError):
    """A model or ensemble folder that cannot be used (the message names the file and the problem)."""


def is_structure_file(path: Path) -> bool:
    return path.suffix.lower() in STRUCTURE_SUFFIXES or path.name.upper().startswith(STRUCTURE_PREFIXES)


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[str, Path]]:
    """(id, path) of every structure file named or found (recursively) in the given directories, in order. The id
    is the path relative to its input directory, without the extension, made unique (``x#1``). FileNotFoundError for
    an input that does not exist."""
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
    seen: Counter[str] = Counter()
    unique = []
    for id_, file in found:  # make ids unique without losing the file they came from
        unique.append((f"{id_}#{seen[id_]}" if seen[id_] else id_, file))
        seen[id_] += 1
    return unique


def checkpoint_of(path: str | os.PathLike) -> str | Path:
    """The checkpoint ``path`` names: itself (a file or URL), or ``last.ckpt`` of a run directory."""
    text = os.fspath(path)
    if "://" in text or Path(text).is_file():
        return text
    run = resolve(text) if Path(text).is_dir() else None
    if run is None:
        raise CheckpointError(f"{text} is neither a checkpoint, a run directory nor a model folder")
    if not run.last_checkpoint.is_file():
        raise CheckpointError(f"run directory {run.path} has no {run.last_checkpoint.name}")
    return run.last_checkpoint


class Predictor:
    """Predicts a trained module's target for crystals, in the target's physical units, ``batch_size`` crystals per
    forward pass. ``device``: ``cpu``, ``cuda``, ``cuda:1``, ... or ``auto`` (CUDA when available); ``weights``:
    ``swa`` (the average, when the module has one) or ``raw`` (default: the module's ``eval_weights``)."""

    columns = ("prediction",)

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
        """Predictions for pymatgen Structures, ASE Atoms, :class:`~framer.data.CrystalRecord`\\ s or CIF/POSCAR
        paths, in order. An input that is not a usable crystal raises :class:`~framer.data.InvalidStructureError`."""
        records, n = to_records(structures), self.batch_size
        return np.asarray([v for i in range(0, len(records), n) for v in self._forward(records[i : i + n])], float)

    def predict_files(
        self, files: Iterable[tuple[str, Path]], on_skip: Callable[[str, str], None] | None = None
    ) -> tuple[list[tuple], list[tuple[str, str]]]:
        """Rows ``(id, *columns)`` for every usable ``(id, path)`` file, and ``(file, reason)`` for each skipped."""
        rows: list[tuple] = []
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
                rows.extend(self._rows(pending))
                pending = []
        rows.extend(self._rows(pending))
        return rows, skipped

    def _rows(self, records: list[CrystalRecord]) -> list[tuple]:
        return [(r.id, v) for r, v in zip(records, self._forward(records))] if records else []

    def _forward(self, records: list[CrystalRecord]) -> list[float]:
        batch = collate_records(records).to(self.device)
        with torch.inference_mode():
            return self.module(batch, self.weights).float().cpu().tolist()


class Ensemble(Predictor):
    """Several trained models of one target (one :class:`Predictor` each): the mean of their predictions and the
    spread (population standard deviation over members) as an uncertainty."""

    columns = ("prediction", "std")

    def __init__(self, members: Sequence[Predictor]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.batch_size = members[0].batch_size

    @property
    def target(self) -> dict[str, str]:
        return self.members[0].target

    def predict(self, structures: Iterable[Any], return_std: bool = False) -> np.ndarray | tuple:
        """The members' mean prediction (and, with ``return_std``, their standard deviation) per crystal."""
        records = to_records(structures)
        values = np.stack([m.predict(records) for m in self.members])
        return (values.mean(0), values.std(0)) if return_std else values.mean(0)

    def _rows(self, records: list[CrystalRecord]) -> list[tuple]:
        mean, std = self.predict(records, return_std=True)
        return [(r.id, float(m), float(s)) for r, m, s in zip(records, mean, std)]


def load(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    device: str | torch.device = "cpu",
    weights: Literal["swa", "raw"] | None = None,
    batch_size: int = 16,
) -> Predictor:
    """A :class:`Predictor` (an :class:`Ensemble` for a list or an ensemble folder; see the module docstring).
    ``weights`` applies to checkpoints and run directories (a model folder holds one set of weights)."""
    if not isinstance(path, (str, os.PathLike)):
        return Ensemble([load(p, device, weights, batch_size) for p in path])
    folder = Path(path)
    if (folder / ENSEMBLE_FILE).is_file():
        return Ensemble([load(p, device, None, batch_size) for p in ensemble_members(folder)])
    if (folder / MODEL_FILE).is_file():
        return Predictor(read_model_folder(folder), device, "raw", batch_size)
    module = CrystalRegressor.load_from_checkpoint(checkpoint_of(path), map_location="cpu")
    return Predictor(module, device, weights, batch_size)


def read_json_file(path: Path, fmt: str) -> dict[str, Any]:
    """The JSON of a model or ensemble file, checked for its format and version."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelFolderError(f"{path}: cannot be read as JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ModelFolderError(f"{path}: not a {fmt} file (its 'format' must be {fmt!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelFolderError(
            f"{path}: format version {data.get('format_version')!r} is not supported (this framer reads "
            f"version {FORMAT_VERSION}; a newer framer may read it)"
        )
    return data


def ensemble_members(folder: str | os.PathLike) -> list[Path]:
    """The member folders ``ensemble.json`` lists: relative paths that stay inside the ensemble folder."""
    folder = Path(folder)
    source = folder / ENSEMBLE_FILE
    members = read_json_file(source, ENSEMBLE_FORMAT).get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise ModelFolderError(f"{source}: 'members' must be a non-empty list of folder names")
    paths = []
    for member in members:
        path = (folder / member).resolve()
        if Path(member).is_absolute() or not path.is_relative_to(folder.resolve()):
            raise ModelFolderError(f"{source}: member {member!r} is outside the ensemble folder")
        if not (path / MODEL_FILE).is_file():
            raise ModelFolderError(f"{source}: member {member!r} has no {MODEL_FILE}")
        paths.append(path)
    return paths


def network_class(class_path: Any, source: str) -> type[nn.Module]:
    """The network class a model folder names: refused before the import outside the allow-list, and after it
    unless it is a ``torch.nn.Module`` of ``framer.models`` (or of a package of ``$FRAMER_ALLOWED_MODULES``)."""
    cls = resolve_class(class_path, nn.Module, source, "model.class_path")
    packages = (*MODEL_PACKAGES, *allowed_modules()[len(BUILTIN_ALLOWED_MODULES) :])
    if not any(cls.__module__ == p or cls.__module__.startswith(p + ".") for p in packages):
        raise ModelFolderError(f"{source}: model.class_path {class_path!r} is not a framer network (framer.models)")
    return cls


def read_model_folder(folder: str | os.PathLike) -> CrystalRegressor:
    """The module a model folder describes (its network, weights and target standardisation; no SWA copy)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    source = Path(folder) / MODEL_FILE
    meta = read_json_file(source, MODEL_FORMAT)
    try:
        model, target = meta["model"], meta["target"]
        class_path, init_args = model["class_path"], dict(model.get("init_args") or {})
        mean, std = float(target["mean"]), float(target["std"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFolderError(f"{source}: missing or malformed entry ({type(err).__name__}: {err})") from None
    cls = network_class(class_path, str(source))
    try:
        network = cls(**init_args)
    except (TypeError, ValueError) as err:
        raise ModelFolderError(f"{source}: model.init_args do not fit {class_path} ({err})") from None
    weights = source.with_name(WEIGHTS_FILE)
    try:
        network.load_state_dict(load_file(weights))
    except (OSError, SafetensorError) as err:
        raise ModelFolderError(f"{weights}: cannot be read as safetensors ({err})") from None
    except RuntimeError as err:  # missing, unexpected or differently shaped tensors
        raise ModelFolderError(f"{weights}: does not fit the network of {source} ({err})") from None
    try:
        module = CrystalRegressor(network, swa_epochs=0, eval_weights="raw", target_mean=mean, target_std=std)
    except ValueError as err:
        raise ModelFolderError(f"{source}: {err}") from None
    keys = {"dataset": "dataset_name", "name": "target", "units": "target_units"}
    module.target_info = {new: target[old] for old, new in keys.items() if isinstance(target.get(old), str)}
    return module


def to_records(structures: Iterable[Any]) -> list[CrystalRecord]:
    """Records of pymatgen Structures (id: their index), ASE Atoms, records (kept) and CIF/POSCAR paths."""
    records = []
    for i, item in enumerate(structures):
        if isinstance(item, (str, os.PathLike)):
            item = record_from_file(item)
        elif type(item).__module__.split(".")[0] == "ase":
            from pymatgen.io.ase import AseAtomsAdaptor

            item = AseAtomsAdaptor.get_structure(item)
        records.append(item if isinstance(item, CrystalRecord) else record_from_structure(item, id=str(i)))
    return records
