"""Matbench v0.1 tasks offline: data from pre-placed matminer files, folds from the matbench package, records via
matbench's own ``MatbenchTask.record``.

- Data: ``matminer.datasets.load_dataset(task, data_home, download_if_missing=False)`` reads
  ``<data_home or $MATMINER_DATA>/<task>.json.gz`` (matminer's pandas ``orient="split"`` JSON with monty-encoded
  pymatgen Structures). Nothing is downloaded: a missing file is an error naming the path.
- Row ids: ``mb-<task without "matbench_", "_" -> "-">-<i+1>``, zero-padded to floor(log10 N)+1 digits, in file
  order, exactly as ``matbench.data_ops.load`` assigns them.
- Folds: ``matbench/matbench_v0.1_validation.json`` shipped in the matbench wheel (5-fold ``KFold(shuffle=True,
  random_state=18012019)``). A ``validation_file`` in the same layout replaces it, e.g. for small fixtures whose
  ids are not the real task's; :func:`make_validation` writes one with matbench's own protocol.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from framer.io import atomic_file

N_FOLDS = 5
FOLD_SEED = 18012019
STRUCTURE_TASKS_REGRESSION = (
    "matbench_dielectric",
    "matbench_jdft2d",
    "matbench_log_gvrh",
    "matbench_log_kvrh",
    "matbench_mp_e_form",
    "matbench_mp_gap",
    "matbench_perovskites",
    "matbench_phonons",
)


class MatbenchDataError(FileNotFoundError):
    """A matbench data or validation file that is missing or does not fit the task."""


def mbids(task: str, n: int) -> list[str]:
    """Matbench's row ids for a task of ``n`` rows (``matbench.data_ops.load``)."""
    digits = math.floor(math.log(n, 10)) + 1
    prefix = task.replace("matbench", "mb").replace("_", "-")
    return [f"{prefix}-{i + 1:0{digits}d}" for i in range(n)]


def task_metadata(task: str) -> dict[str, Any]:
    """Target column, unit, task type and size from matbench's metadata (no data loaded)."""
    path = Path(_matbench_dir()) / "matbench_v0.1_dataset_metadata.json"
    meta = json.loads(path.read_text())
    if task not in meta:
        raise KeyError(f"unknown matbench task {task!r}; structure regression tasks: {STRUCTURE_TASKS_REGRESSION}")
    return dict(meta[task])


def _matbench_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec("matbench")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("matbench is not installed: pip install --no-deps matbench==0.6 (after matminer)")
    return next(iter(spec.submodule_search_locations))


def data_file(task: str, data_home: str | os.PathLike | None = None) -> Path:
    """``<data_home or $MATMINER_DATA or matminer/datasets>/<task>.json.gz``."""
    from matminer.datasets.utils import _get_data_home

    return Path(_get_data_home(str(data_home) if data_home else None)) / f"{task}.json.gz"


def load_frame(task: str, data_home: str | os.PathLike | None = None) -> pd.DataFrame:
    """The task's data indexed by matbench id, columns ``structure`` and ``target`` (never downloads)."""
    from matminer.datasets import load_dataset

    meta = task_metadata(task)
    path = data_file(task, data_home)
    if not path.is_file():
        raise MatbenchDataError(
            f"{path} not found: place matminer's {task}.json.gz there (set MATMINER_DATA or data_home); "
            "framer never downloads it"
        )
    df = load_dataset(task, data_home=str(path.parent), download_if_missing=False)
    missing = [c for c in (meta["input_type"], meta["target"]) if c not in df.columns]
    if missing:
        raise MatbenchDataError(f"{path}: columns {missing} missing (has {list(df.columns)})")
    return pd.DataFrame(
        {"structure": df[meta["input_type"]].to_numpy(), "target": df[meta["target"]].astype(float).to_numpy()},
        index=pd.Index(mbids(task, len(df)), name="mbid"),
    )


def load_validation(task: str, validation_file: str | os.PathLike | None = None) -> dict[str, dict[str, list[str]]]:
    """``{"fold_0": {"train": [ids], "test": [ids]}, ...}`` from matbench's file or ``validation_file``."""
    default = Path(_matbench_dir()) / "matbench_v0.1_validation.json"
    path = (Path(validation_file) if validation_file is not None else default).resolve()
    if not path.is_file():
        raise MatbenchDataError(f"validation file {path} not found")
    folds = _task_folds(task, str(path), path.stat().st_mtime_ns, path.stat().st_size)
    return {k: {"train": list(v["train"]), "test": list(v["test"])} for k, v in folds.items()}


@functools.lru_cache(maxsize=8)
def _task_folds(task: str, path_str: str, mtime_ns: int, size: int) -> dict[str, dict[str, tuple[str, ...]]]:
    """One task's folds of a validation file (parsed once per file version; matbench's is 46 MB)."""
    path = Path(path_str)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        raw = json.load(f)
    splits = raw.get("splits") or {}
    if task not in splits:
        raise MatbenchDataError(f"{path} has no folds for {task!r} (has {sorted(splits)[:20]})")
    return {k: {"train": tuple(v["train"]), "test": tuple(v["test"])} for k, v in splits[task].items()}


def make_validation(
    task: str, n: int, n_splits: int = N_FOLDS, random_state: int = FOLD_SEED
) -> dict[str, dict[str, list[str]]]:
    """Folds by matbench's protocol (``scripts/mvb01_generate_validation.py``) for a task of ``n`` rows."""
    from sklearn.model_selection import KFold

    ids = np.asarray(mbids(task, n))
    folds = KFold(n_splits=n_splits, shuffle=True, random_state=random_state).split(ids)
    return {f"fold_{i}": {"train": ids[tr].tolist(), "test": ids[te].tolist()} for i, (tr, te) in enumerate(folds)}


def write_validation(path: str | os.PathLike, splits: Mapping[str, Mapping[str, dict]]) -> Path:
    """Write ``{task: folds}`` in the layout of ``matbench_v0.1_validation.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "metadata": {"n_splits": N_FOLDS, "random_state": FOLD_SEED, "shuffle": True},
        "splits": {task: dict(folds) for task, folds in splits.items()},
    }
    path.write_text(json.dumps(data))
    return path


def inner_split(train_ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Validation ids drawn (seeded) from the fold's training ids only; returns (train, val) in fold order."""
    n = len(train_ids)
    n_val = max(1, round(val_fraction * n))
    if n_val >= n:
        raise ValueError(f"a fold train set of {n} rows leaves nothing to train on with val_fraction {val_fraction}")
    chosen = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    train = [x for i, x in enumerate(train_ids) if i not in chosen]
    val = [x for i, x in enumerate(train_ids) if i in chosen]
    return train, val


# --------------------------------------------------------------------------------------------------------------------
# recording with matbench's API
def make_benchmark(task: str, frame: pd.DataFrame, validation: Mapping[str, Mapping[str, list[str]]]):
    """A ``MatbenchBenchmark`` holding ``task`` with its data frame (:func:`load_frame`'s) and folds (nothing
    downloaded).

    The folds come from :func:`load_validation`; for the real tasks they equal matbench's own, for fixtures they
    replace them (``task.validation``), which is what lets matbench's ``record``/``validate`` run on small data.
    """
    from matbench.bench import MatbenchBenchmark
    from matbench.util import RecursiveDotDict

    bench = MatbenchBenchmark(autoload=False, subset=[task])
    mb_task = bench.tasks_map[task]
    meta = mb_task.metadata
    mb_task.df = frame.rename(columns={"structure": meta.input_type, "target": meta.target})
    mb_task.validation = RecursiveDotDict({k: dict(v) for k, v in validation.items()})
    mb_task.folds_keys = list(mb_task.validation.keys())
    mb_task.folds_nums = list(range(len(mb_task.folds_keys)))
    mb_task.folds_map = dict(zip(mb_task.folds_nums, mb_task.folds_keys))
    mb_task.folds = mb_task.folds_nums
    return bench


def record_fold(bench, task: str, fold: int, predictions: pd.DataFrame, params: dict | None = None) -> dict:
    """``task.record(fold, predictions in the order of the fold's test ids)``; returns matbench's fold scores.
    ``predictions`` (framer's ``predictions.csv``: ``id``, ``prediction``) must cover every test id."""
    mb_task = bench.tasks_map[task]
    test_ids = list(mb_task.validation[mb_task.folds_map[fold]].test)
    by_id = dict(zip(predictions["id"].astype(str), predictions["prediction"].astype(float)))
    missing = [i for i in test_ids if i not in by_id]
    if missing:
        raise ValueError(f"fold {fold}: {len(missing)} test ids have no prediction, e.g. {missing[:3]}")
    mb_task.record(fold, [float(by_id[i]) for i in test_ids], params=params)
    return dict(mb_task.results[mb_task.folds_map[fold]]["scores"])


def write_results(bench, path: str | os.PathLike) -> Path:
    """``results.json.gz`` = ``bench.as_dict()`` (matbench's layout and hash), gzip-compressed, written atomically."""
    with atomic_file(path) as handle, gzip.open(handle, "wt") as f:
        json.dump(bench.as_dict(), f)
    return Path(path)


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """The raw dict of a ``results.json.gz`` (hash checked with matbench's ``hash_dictionary``)."""
    from matbench.util import hash_dictionary

    with gzip.open(path, "rt") as f:
        data = json.load(f)
    body = {k: v for k, v in data.items() if k != "hash"}
    if hash_dictionary(body) != data.get("hash"):
        raise ValueError(f"{path}: hash mismatch (file modified after matbench wrote it?)")
    return data
