"""``MatbenchDataModule``: one fold of a Matbench v0.1 structure-regression task, nested-CV style.

- train/val: the fold's training ids, split by a seeded draw of ``val_fraction`` of them (never test ids);
- test: the fold's test ids in matbench's order, which is the order ``task.record`` needs.

The fold ids come from the matbench package's validation file unless ``validation_file`` is given (the same JSON
layout; used for small fixtures whose ids are not the real task's). The processed cache is keyed on the matminer
file's sha256, the fold's ids, ``val_fraction`` and ``split_seed``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from framer.data.build import BuildResult, assemble
from framer.data.cache import file_sha256, short_hash
from framer.data.datamodules import CrystalDataModule
from framer.data.structures import CrystalRecord, labelled, record_from_structure
from framer.matbench import tasks


class MatbenchDataModule(CrystalDataModule):
    """A fold of a Matbench v0.1 structure-regression task (data from a pre-placed matminer file; no download).

    Args:
        task: Matbench task, e.g. ``matbench_log_kvrh``.
        fold: Fold 0-4.
        val_fraction: Share of the fold's training rows held out for validation (early stopping, model choice).
        split_seed: Seed of that draw.
        data_home: Directory of ``<task>.json.gz``; None means ``$MATMINER_DATA`` (else matminer's package dir).
        validation_file: Fold ids in matbench's ``matbench_v0.1_validation.json`` layout; None: the matbench package's.

    The other arguments are :class:`~framer.data.datamodules.CrystalDataModule`'s.
    """

    def __init__(
        self,
        task: str = "matbench_log_kvrh",
        fold: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        data_home: str | None = None,
        validation_file: str | None = None,
        **kwargs,
    ):
        meta = tasks.task_metadata(task)
        if meta.get("task_type") != "regression" or meta.get("input_type") != "structure":
            raise ValueError(
                f"{task} is a {meta.get('input_type')} {meta.get('task_type')} task; need structure regression"
            )
        if not 0 <= fold < tasks.N_FOLDS:
            raise ValueError(f"fold must be 0..{tasks.N_FOLDS - 1}, got {fold}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        super().__init__(target=str(meta["target"]), **kwargs)
        self.task, self.fold, self.val_fraction, self.split_seed = task, fold, val_fraction, split_seed
        self.data_home, self.validation_file = data_home, validation_file
        self.dataset_name = task
        self.target_units = str(meta.get("unit", ""))

    def fold_ids(self) -> dict[str, list[str]]:
        """The fold's ``train`` and ``test`` ids (before the inner validation draw)."""
        folds = tasks.load_validation(self.task, self.validation_file)
        key = f"fold_{self.fold}"
        if key not in folds:
            raise tasks.MatbenchDataError(f"no {key} for {self.task} in the validation file")
        return folds[key]

    def raw_paths(self) -> list[Path]:
        return [tasks.data_file(self.task, self.data_home)]

    def cache_path(self) -> Path:
        tag = short_hash(self._split_spec())
        return self.data_dir / "processed" / "matbench" / f"{self.task}-fold{self.fold}-{tag}.cache"

    def _split_spec(self) -> dict:
        ids = self.fold_ids()
        digest = hashlib.sha256(("\n".join(ids["train"]) + "|" + "\n".join(ids["test"])).encode()).hexdigest()
        return {"fold": self.fold, "fold_ids": digest, "val_fraction": self.val_fraction, "seed": self.split_seed}

    def cache_settings(self) -> dict:
        return {"dataset": "matbench", "task": self.task, "target": self.target, "split": self._split_spec()}

    def raw_fingerprint(self) -> dict:
        path = self.raw_paths()[0]
        if not path.is_file():
            raise tasks.MatbenchDataError(f"{path} not found: place matminer's {self.task}.json.gz there")
        return {path.name: file_sha256(path)}

    def build(self) -> BuildResult:
        frame = tasks.load_frame(self.task, self.data_home)
        ids = self.fold_ids()
        unknown = [i for i in ids["train"] + ids["test"] if i not in frame.index]
        if unknown:
            raise tasks.MatbenchDataError(
                f"{len(unknown)} fold ids (e.g. {unknown[:3]}) are not rows of {self.raw_paths()[0]}: "
                "the data file and the validation file belong to different versions of the task"
            )
        train, val = tasks.inner_split(ids["train"], self.val_fraction, self.split_seed)
        structures, targets = frame["structure"].to_numpy(), frame["target"].to_numpy()

        def convert(p: int) -> CrystalRecord:
            with labelled(frame.index[p]):
                return record_from_structure(structures[p], frame.index[p], float(targets[p]))

        splits = {
            name: frame.index.get_indexer(part)
            for name, part in (("train", train), ("val", val), ("test", ids["test"]))
        }
        fold = {"task": self.task, "fold": self.fold, "n_fold_train": len(ids["train"]), "n_test": len(ids["test"])}
        meta = dict(dataset=self.task, target=self.target, units=self.target_units, raw_entries=len(frame))
        meta["matbench"] = fold
        return assemble(splits, convert, meta, fingerprint="ids")
