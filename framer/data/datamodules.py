"""LightningDataModules: MEGNet MP, JARVIS dft_3d_2021, custom CIF/POSCAR folders and the embedded Ewald set.

All share :class:`CrystalDataModule`: ``prepare_data`` (rank 0) builds or validates the content-keyed cache,
``setup`` opens it memory-mapped, loaders yield :class:`~framer.data.batch.CrystalBatch` (train: shuffled by seed
and epoch, resumable mid-epoch, :mod:`framer.data.resumable`; val/test/predict: in split order). Targets stay in
physical units.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Literal

import lightning.pytorch as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from framer.data import ewald as ewald_mod
from framer.data.batch import CrystalBatch, collate_records
from framer.data.build import (
    SPLIT_CODES,
    BuildResult,
    PhaseTimer,
    assemble,
    build_jarvis_target,
    build_moduli_target,
)
from framer.data.cache import (
    CacheError,
    RecordStore,
    cache_key,
    file_sha256,
    load_or_build,
    read_cache,
    short_hash,
)
from framer.data.custom import build_custom, folder_fingerprint, read_id_prop
from framer.data.parallel import resolve_workers
from framer.data.resumable import EpochShuffleSampler, ResumableDataLoader, shuffle_seed
from framer.data.sources import (
    DataError,
    DataNotFoundError,
    TargetSpec,
    data_root,
    raw_files,
    require_files,
    target_spec,
)
from framer.data.splits import PAPER_SPLIT_SEED, PAPER_SPLITS, SPLIT_NAMES, random_split
from framer.data.structures import DEFAULT_MAX_ATOMS, DEFAULT_MAX_FILE_MB, CrystalRecord
from framer.io import write_json

log = logging.getLogger("framer.data")

PREDICT_SPLITS = ("train", "val", "test", "all")


class CrystalDataset(Dataset):
    """The records of one split: a view of a :class:`RecordStore` through an index array."""

    def __init__(self, store: RecordStore, indices: np.ndarray):
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> CrystalRecord:
        return self.store[int(self.indices[i])]

    @property
    def targets(self) -> np.ndarray:
        return self.store.targets[self.indices]

    @property
    def ids(self) -> list[str]:
        ids = self.store.ids
        return [ids[j] for j in self.indices]


class CrystalDataModule(L.LightningDataModule):
    """Shared machinery; subclasses define cache_path, cache_settings, raw_fingerprint and build.

    The arguments below are declared and documented here only: subclasses take them as ``**kwargs`` (LightningCLI
    and ``--data.help`` read them from this signature and docstring) and redeclare one only to change its default.
    Every argument of the subclass chain is recorded in ``hparams``.

    Args:
        target: Property to predict.
        batch_size: Crystals per training (and validation) batch, per device.
        test_batch_size: Crystals per test/predict batch (the papers test with 1).
        num_workers: DataLoader worker processes (kept alive across epochs when > 0).
        data_dir: Data root (raw files in ``<data_dir>/raw``, caches in ``<data_dir>/processed``); None means
            ``$FRAMER_DATA_DIR`` or ``./data``.
        rebuild_cache: Rebuild the processed cache even if it is valid.
        predict_split: Split served by ``predict_dataloader``: train, val, test or all.
        build_workers: Processes that build the cache (null: min(8, available CPUs); 0 or 1: this process). The
            cache's content and key do not depend on it.
        pin_memory: Collate batches in page-locked memory for faster, non-blocking copies to a GPU (null: when CUDA
            is available).
    """

    dataset_name: str = "crystals"

    def __init__(
        self,
        target: str,
        batch_size: int = 128,
        test_batch_size: int = 1,
        num_workers: int = 0,
        data_dir: str | None = None,
        rebuild_cache: bool = False,
        predict_split: Literal["train", "val", "test", "all"] = "test",
        build_workers: int | None = None,
        pin_memory: bool | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()  # the arguments of every __init__ on the way here (subclasses included)
        if batch_size < 1 or test_batch_size < 1:
            raise ValueError(
                f"batch sizes must be positive (batch_size={batch_size}, test_batch_size={test_batch_size})"
            )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if predict_split not in PREDICT_SPLITS:
            raise ValueError(f"predict_split must be one of {PREDICT_SPLITS}, got {predict_split!r}")
        resolve_workers(build_workers)  # validates
        self.target = target
        self.batch_size = batch_size
        self.test_batch_size = test_batch_size
        self.num_workers = num_workers
        self.data_dir = data_root(data_dir)
        self.rebuild_cache = rebuild_cache
        self.predict_split = predict_split
        self.build_workers = build_workers
        self.pin_memory = pin_memory
        #: wall and CPU seconds (this process) of the last cache build's phases ("total": all but "key"); empty
        #: when the cache was valid
        self.build_timings: dict[str, dict[str, float]] = {}
        self.cache_status: str | None = None
        self._store: RecordStore | None = None
        self._meta: dict = {}
        self._split_indices: dict[str, np.ndarray] = {}
        self._prepared = False

    # ----------------------------------------------------------------------------------------- subclass API

    target_units: str = ""

    def cache_path(self) -> Path:
        """Where the processed cache lives."""
        raise NotImplementedError

    def cache_settings(self) -> dict:
        """Everything the cache content depends on except the raw data (target, split spec...)."""
        raise NotImplementedError

    def raw_fingerprint(self) -> object:
        """Content hashes of the raw inputs (raises DataNotFoundError when they are missing); None if none."""
        return {p.name: file_sha256(p) for p in require_files(self.raw_paths())} or None

    def build(self) -> BuildResult:
        """Read raw data and produce cache arrays, metadata and a skip report."""
        raise NotImplementedError

    def raw_paths(self) -> list[Path]:
        """Raw files the cache is built from (checked before the key is computed)."""
        return []

    @property
    def build_processes(self) -> int:
        """Processes a cache build uses (``build_workers`` resolved; 0 or 1: this process)."""
        return resolve_workers(self.build_workers)

    # ----------------------------------------------------------------------------------------- cache life cycle

    @property
    def report_path(self) -> Path:
        return self.cache_path().with_suffix(".report.json")

    def _cache_parts(self, with_raw: bool = True) -> dict:
        """Settings (plus raw hashes), normalised through JSON so they compare equal to the stored copy."""
        parts = {"datamodule": type(self).__name__, **self.cache_settings()}
        if with_raw:
            parts["raw"] = self.raw_fingerprint()
        return json.loads(json.dumps(parts, sort_keys=True, default=str))

    def _load(self, rebuild: bool) -> None:
        path = self.cache_path()
        description = f"{self.dataset_name}/{self.target}"
        missing = [p for p in self.raw_paths() if not p.is_file()]
        if missing and not rebuild and path.exists():
            cache = self._cache_without_raw(path, missing[0])
            status = "hit-without-raw"
        else:
            timer = PhaseTimer()
            with timer("key"):
                parts = self._cache_parts()
                key = cache_key(**parts)

            def build():
                result = self.build()
                for name, phase in result.timings.items():
                    timer.add(name, phase["wall_s"], phase["cpu_s"])
                extra = ("missing_target", "raw_entries", "filtered_entries")
                write_json(self.report_path, {
                    "dataset": self.dataset_name, "target": self.target, "cache": str(path),
                    "kept": len(result.arrays["ids"]), "skipped": result.report.to_dict(),
                    **{k: result.meta[k] for k in extra if k in result.meta},
                })  # fmt: skip
                if result.report.total:
                    log.warning(f"{description}: skipped {result.report.total} malformed record(s) "
                                f"{dict(result.report.counts)}; details in {self.report_path}")  # fmt: skip
                return result.arrays, {**result.meta, "key_parts": parts}

            with timer("total"):  # building (the phases above) and writing
                cache, status = load_or_build(path, key, build, rebuild=rebuild, description=description)
            if status != "hit":
                self.build_timings = timer.phases
                self._log_build(description, len(cache.array("ids")))
        self.cache_status = status
        self._store = RecordStore(cache)
        self._meta = cache.meta
        split = np.asarray(cache.array("split"))
        self._split_indices = {name: np.flatnonzero(split == code) for name, code in SPLIT_CODES.items()}
        if len(self._split_indices["train"]) == 0:
            raise DataError(f"{description}: the train split is empty (sizes {self.split_sizes()})")

    def _log_build(self, description: str, records: int) -> None:
        phases = {name: phase["wall_s"] for name, phase in self.build_timings.items()}
        total, processes = phases.pop("total") + phases.pop("key"), max(self.build_processes, 1)
        details = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items())
        log.info(f"built the cache of {description}: {records} records in {total:.1f} s with {processes} "
                 f"process{'es' if processes > 1 else ''} ({details})")  # fmt: skip

    def _cache_without_raw(self, path: Path, missing: Path):
        """Use a valid cache whose raw file was removed, if every non-raw setting still matches."""
        try:
            cache = read_cache(path)
        except CacheError as err:
            raise DataNotFoundError(f"{missing} not found and the cache {path} is unusable ({err})") from None
        stored = dict(cache.meta.get("key_parts", {}))
        stored.pop("raw", None)
        if stored != self._cache_parts(with_raw=False):
            raise DataNotFoundError(f"{missing} not found and the cache {path} was built with other settings")
        log.warning("%s not found; using the cache built from it earlier (%s)", missing, path)
        return cache

    def prepare_data(self) -> None:
        """Build (or validate) the cache once per node, before ``setup`` runs on every rank; ``rebuild_cache``
        applies once per instance (a later ``trainer.test`` does not rebuild again)."""
        force = self.rebuild_cache and not self._prepared
        if self._store is None or force:
            self._load(rebuild=force)
        self._prepared = True

    def setup(self, stage: str | None = None) -> None:
        """Open the cache (building it when ``prepare_data`` was not called, e.g. outside a Trainer)."""
        if self._store is not None:
            return
        force = self.rebuild_cache and not self._prepared and self.trainer is None
        self._load(rebuild=force)

    # ----------------------------------------------------------------------------------------- datasets/loaders

    def dataset(self, split: str) -> CrystalDataset:
        """Records of ``train``, ``val``, ``test`` or ``all`` (in split order)."""
        self.setup()
        if split == "all":
            return CrystalDataset(self._store, np.arange(len(self._store)))
        if split not in self._split_indices:
            raise ValueError(f"unknown split {split!r}; choose one of {(*SPLIT_NAMES, 'all')}")
        return CrystalDataset(self._store, self._split_indices[split])

    @property
    def train_dataset(self) -> CrystalDataset:
        return self.dataset("train")

    @property
    def val_dataset(self) -> CrystalDataset:
        return self.dataset("val")

    @property
    def test_dataset(self) -> CrystalDataset:
        return self.dataset("test")

    @property
    def pins_memory(self) -> bool:
        """Whether loaders collate into page-locked memory (``pin_memory``, or CUDA availability when null)."""
        return torch.cuda.is_available() if self.pin_memory is None else bool(self.pin_memory)

    def _loader(self, dataset: CrystalDataset, batch_size: int, drop_last: bool, **kwargs) -> DataLoader:
        """A loader of ``dataset`` (in split order unless ``kwargs`` give ``shuffle`` or a ``sampler``); workers live
        as long as it. Torch's default prefetch of two batches per worker is kept: a crystal takes tens of
        microseconds to read and collate (``bench/cache_build.py``), so more would only hold more memory."""
        return ResumableDataLoader(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            collate_fn=collate_records,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pins_memory,
            **kwargs,
        )

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Move a :class:`CrystalBatch` to ``device``; to a GPU without blocking (the copy waits for nothing but the
        stream it runs on; from pinned memory it overlaps with the model's work)."""
        if isinstance(batch, CrystalBatch):
            return batch.to(device, non_blocking=torch.device(device).type == "cuda")
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset
        drop_last = len(dataset) >= self.batch_size
        if not drop_last:
            log.warning(
                "train split (%d) is smaller than batch_size %d: using one partial batch", len(dataset), self.batch_size
            )
        if self.trainer is not None and self.trainer.world_size > 1:
            # Lightning replaces the random sampler with a DistributedSampler (seeded by epoch)
            return self._loader(dataset, self.batch_size, drop_last, shuffle=True)
        # one device: an order fixed by (seed, epoch) that resumes mid-epoch (framer.data.resumable)
        seed = shuffle_seed()
        sampler = EpochShuffleSampler(len(dataset), seed)
        # the generator seeds the workers without touching the global generator
        return self._loader(
            dataset, self.batch_size, drop_last, sampler=sampler, generator=torch.Generator().manual_seed(seed)
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, self.batch_size, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, self.test_batch_size, drop_last=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.dataset(self.predict_split), self.test_batch_size, drop_last=False)

    # ----------------------------------------------------------------------------------------- what runs record

    def target_stats(self) -> tuple[float, float]:
        """Mean and population standard deviation of the train targets (physical units)."""
        targets = self.train_dataset.targets
        return float(np.mean(targets)), float(np.std(targets))

    def split_fingerprints(self, raw: bool = False) -> dict[str, str]:
        """sha256 per split of the kept records' positions in the filtered list (of their ids for pre-split pickles).

        With ``raw=True``: of their indices in the unfiltered raw file (CrystalFramer's shipped index files).
        """
        self.setup()
        return dict(self._meta["raw_split_fingerprints" if raw else "split_fingerprints"])

    def split_sizes(self) -> dict[str, int]:
        self.setup()
        return {name: len(idx) for name, idx in self._split_indices.items()}

    def split_ids(self) -> dict[str, list[str]]:
        """Crystal ids per split, in split order."""
        return {name: self.dataset(name).ids for name in SPLIT_NAMES}

    def summary(self) -> dict:
        """Data set, target, units, split sizes/fingerprints, cache path/status and skipped counts, for run logs."""
        self.setup()
        return {
            "dataset": self.dataset_name,
            "target": self.target,
            "units": self.target_units,
            "sizes": self.split_sizes(),
            "split_fingerprints": self.split_fingerprints(),
            "matches_paper_split": self._meta.get("matches_paper_split"),
            "cache": str(self.cache_path()),
            "cache_status": self.cache_status,
            "skipped": self._meta.get("skipped", {}).get("counts", {}),
        }


def _positive(name: str, value: float) -> float:
    """``value`` if it is a positive number; ValueError naming the setting otherwise."""
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------- paper data sets


class _PaperDataModule(CrystalDataModule):
    """MEGNet MP / JARVIS dft_3d_2021 targets with the ALIGNN/Matformer/Crystalformer split.

    Args:
        split_seed: Seed of the paper split's shuffle.
        max_atoms: Crystals with more atoms are skipped and counted in the skip report.
    """

    def __init__(
        self,
        target: str,
        *,
        n_train: int | None,
        n_val: int | None,
        n_test: int | None,
        split_seed: int = PAPER_SPLIT_SEED,
        max_atoms: int = DEFAULT_MAX_ATOMS,
        **kwargs,
    ):
        self.spec: TargetSpec = target_spec(self.dataset_name, target)
        super().__init__(target, **kwargs)
        self.target_units = self.spec.units
        self.counts, self.split_seed = (n_train, n_val, n_test), split_seed
        self.max_atoms = _positive("max_atoms", max_atoms)

    def _split_spec(self) -> dict:
        if self.spec.pickled:
            return {"kind": "pickled"}
        return {"kind": "paper", "counts": list(self.counts), "seed": self.split_seed}

    def cache_path(self) -> Path:
        name = self.target
        paper = PAPER_SPLITS.get(self.spec.split_key)  # None for the pre-split moduli
        if paper is not None and (self.counts, self.split_seed) != (paper.counts, PAPER_SPLIT_SEED):
            name += f"-split-{short_hash(self._split_spec())}"
        return self.data_dir / "processed" / self.dataset_name / f"{name}.cache"

    def raw_paths(self) -> list[Path]:
        return raw_files(self.spec, self.data_dir)

    def cache_settings(self) -> dict:
        return {
            "dataset": self.dataset_name,
            "target": self.target,
            "field": self.spec.field,
            "group": list(self.spec.group),
            "split": self._split_spec(),
            "max_atoms": self.max_atoms,
        }

    def build(self) -> BuildResult:
        if self.spec.pickled:
            return build_moduli_target(self.spec, self.data_dir, self.max_atoms, workers=self.build_processes)
        return build_jarvis_target(
            self.spec, self.data_dir, self.counts, self.split_seed, self.max_atoms, self.build_processes
        )


class MPDataModule(_PaperDataModule):
    """MEGNet Materials Project snapshot (mp.2018.6.1, 69,239 crystals) via jarvis-tools' ``megnet`` file.

    Targets: ``e_form`` (eV/atom), ``gap`` (PBE band gap, eV) with the 60000/5000/4239 paper split, and
    ``bulk_modulus`` / ``shear_modulus`` (log10 GPa) from Matformer's pre-split pickles. The other arguments are
    :class:`CrystalDataModule`'s and ``split_seed``/``max_atoms``.

    Args:
        target: e_form, gap, bulk_modulus or shear_modulus.
        n_train: Train size of the paper split (null: 80% of the filtered entries).
        n_val: Validation size (null: 10%).
        n_test: Test size (null: 10%).
    """

    dataset_name = "megnet"

    def __init__(
        self,
        target: Literal["e_form", "gap", "bulk_modulus", "shear_modulus"] = "e_form",
        *,
        n_train: int | None = 60000,
        n_val: int | None = 5000,
        n_test: int | None = 4239,
        **kwargs,
    ):
        super().__init__(target, n_train=n_train, n_val=n_val, n_test=n_test, **kwargs)


class JarvisDataModule(_PaperDataModule):
    """JARVIS-DFT 3D, 2021 release (55,723 crystals; jarvis-tools key ``dft_3d_2021``), 80/10/10 paper split.

    Targets: ``formation_energy`` (eV/atom), ``total_energy`` (eV/atom), ``opt_bandgap`` (eV) share one split;
    ``mbj_bandgap`` (eV, 18,172 crystals) and ``ehull`` (eV/atom, 55,371) have their own. The other arguments are
    :class:`CrystalDataModule`'s and ``split_seed``/``max_atoms``.

    Args:
        target: formation_energy, total_energy, opt_bandgap, mbj_bandgap or ehull.
        n_train: Train size (null: 80% of the filtered entries, as in the papers).
        n_val: Validation size (null: 10%).
        n_test: Test size (null: 10%).
    """

    dataset_name = "dft_3d_2021"

    def __init__(
        self,
        target: Literal["formation_energy", "total_energy", "opt_bandgap", "mbj_bandgap", "ehull"] = "formation_energy",
        *,
        n_train: int | None = None,
        n_val: int | None = None,
        n_test: int | None = None,
        **kwargs,
    ):
        super().__init__(target, n_train=n_train, n_val=n_val, n_test=n_test, **kwargs)


# --------------------------------------------------------------------------------------------- custom folders


class CustomDataModule(CrystalDataModule):
    """A folder of CIF/POSCAR files with ``id_prop.csv`` rows ``filename_or_id,target`` (ALIGNN's layout).

    The other arguments are :class:`CrystalDataModule`'s (``batch_size`` defaults to 64 here).

    Args:
        root: Folder holding the structure files and ``id_prop.csv``.
        target: Name of the property (used for logs and the cache file name).
        id_prop_file: Name of the CSV inside ``root``.
        split_file: JSON ``{"train": [ids], "val": [ids], "test": [ids]}``; null means a seeded random split.
        train_fraction: Random split: share of train.
        val_fraction: Random split: share of validation.
        test_fraction: Random split: share of test.
        split_seed: Random split seed.
        target_units: Units of the target, for logs and reports.
        max_atoms: Structures with more atoms are skipped and counted in the skip report.
        max_file_mb: Structure files larger than this (megabytes) are skipped, unparsed, and counted.
        allow_outside_root: Read names in ``id_prop.csv`` that lie outside ``root`` (absolute paths, ``..``,
            symbolic links out of the folder); by default they are an error.
    """

    dataset_name = "custom"

    def __init__(
        self,
        root: str,
        target: str = "target",
        *,
        batch_size: int = 64,
        id_prop_file: str = "id_prop.csv",
        split_file: str | None = None,
        train_fraction: float = 0.8,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 123,
        target_units: str = "",
        max_atoms: int = DEFAULT_MAX_ATOMS,
        max_file_mb: float = DEFAULT_MAX_FILE_MB,
        allow_outside_root: bool = False,
        **kwargs,
    ):
        super().__init__(target, batch_size=batch_size, **kwargs)
        self.root = Path(root).expanduser().absolute()
        if not self.root.is_dir():
            raise DataNotFoundError(f"custom data folder {self.root} not found")
        self.id_prop_file = id_prop_file
        self.split_file = str(Path(split_file).expanduser().absolute()) if split_file else None
        self.fractions = (train_fraction, val_fraction, test_fraction)
        self.split_seed = split_seed
        self.target_units = target_units
        self.max_atoms = _positive("max_atoms", max_atoms)
        self.max_file_mb = _positive("max_file_mb", max_file_mb)
        self.allow_outside_root = allow_outside_root

    def cache_path(self) -> Path:
        tag = hashlib.sha256(str(self.root).encode()).hexdigest()[:8]
        return self.data_dir / "processed" / "custom" / f"{self.root.name}-{tag}" / f"{self.target}.cache"

    def raw_paths(self) -> list[Path]:
        return [self.root / self.id_prop_file]

    def cache_settings(self) -> dict:
        split = {"file": self.split_file} if self.split_file else {"fractions": self.fractions, "seed": self.split_seed}
        return {
            "dataset": "custom",
            "root": str(self.root),
            "target": self.target,
            "split": split,
            "max_atoms": self.max_atoms,
            "max_file_mb": self.max_file_mb,
        }

    def raw_fingerprint(self) -> dict:
        id_prop = self.root / self.id_prop_file
        raw = {"folder": folder_fingerprint(self.root, read_id_prop(id_prop), id_prop, self.allow_outside_root)}
        if self.split_file:
            if not Path(self.split_file).is_file():
                raise DataNotFoundError(f"split file {self.split_file} not found")
            raw["split_file"] = file_sha256(self.split_file)
        return raw

    def build(self) -> BuildResult:
        return build_custom(
            self.root,
            self.id_prop_file,
            self.split_file,
            self.fractions,
            self.split_seed,
            self.max_atoms,
            self.max_file_mb,
            self.allow_outside_root,
            workers=self.build_processes,
        )


# --------------------------------------------------------------------------------------------- embedded data set


class EwaldDataModule(CrystalDataModule):
    """Embedded default data set: random ionic crystals labelled with their Ewald energy per atom (eV/atom).

    Generated deterministically from ``seed`` on first use (3000 crystals take about a minute on two cores) and
    cached under ``<data_dir>/processed/ewald``; split 80/10/10 at random with ``split_seed``. The other arguments
    are :class:`CrystalDataModule`'s (``batch_size`` defaults to 32 here; ``build_workers`` generate the crystals).

    Args:
        target: Only ``ewald_energy``.
        num_crystals: Number of crystals to generate.
        seed: Generator seed (crystal i depends only on seed and i).
        max_atoms: Largest cell (atoms).
        split_seed: Seed of the 80/10/10 split.
    """

    dataset_name = "ewald"

    def __init__(
        self,
        target: str = ewald_mod.TARGET_NAME,
        *,
        batch_size: int = 32,
        num_crystals: int = 3000,
        seed: int = 0,
        max_atoms: int = ewald_mod.MAX_ATOMS,
        split_seed: int = 123,
        **kwargs,
    ):
        if target != ewald_mod.TARGET_NAME:
            raise ValueError(f"EwaldDataModule has one target, {ewald_mod.TARGET_NAME!r}; got {target!r}")
        if num_crystals < 3:
            raise ValueError(f"num_crystals must be at least 3 (one per split), got {num_crystals}")
        super().__init__(target, batch_size=batch_size, **kwargs)
        self.num_crystals, self.seed, self.max_atoms = num_crystals, seed, max_atoms
        self.split_seed = split_seed
        self.target_units = ewald_mod.TARGET_UNITS

    def cache_path(self) -> Path:
        name = f"{self.target}-n{self.num_crystals}-seed{self.seed}-max{self.max_atoms}-split{self.split_seed}.cache"
        return self.data_dir / "processed" / "ewald" / name

    def cache_settings(self) -> dict:
        return {
            "dataset": "ewald",
            "generator_version": ewald_mod.GENERATOR_VERSION,
            "ewald_accuracy": ewald_mod.EWALD_ACCURACY,
            "num_crystals": self.num_crystals,
            "seed": self.seed,
            "max_atoms": self.max_atoms,
            "split_seed": self.split_seed,
        }

    def build(self) -> BuildResult:
        timer = PhaseTimer()
        with timer("generate"):
            records = ewald_mod.generate_records(self.num_crystals, self.seed, self.build_processes, self.max_atoms)
        splits = random_split(len(records), (0.8, 0.1, 0.1), self.split_seed)
        meta = dict(dataset="ewald", target=self.target, units=self.target_units, raw_entries=len(records))
        return assemble(splits, lambda p: records[p], meta, timer=timer)
